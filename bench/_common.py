"""
Helpers shared by the bench runner and its workers (no reactor here).

The workers speak to the runner in lines ``BENCH {json}`` on their stdout;
anything else they print (or log) is ignored by the runner.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import resource
import sys
from typing import Any, Iterable, Sequence

LINE_PREFIX = "BENCH "
LOOPBACK = "127.0.0.1"  # the network rule: benchmarks talk to loopback only

BULK_SIZE = 64 * 1024
RATE_SIZE = 100
# The QUIC settings the aioquic baseline runs with: those of crust's Service
# (crust.transport.quic.driver.QuicOptions defaults; the runner checks them against what
# the crust server reports and says so if they differ).  "crust-bbr" is
# crust's congestion controller: importing crust.transport.quic.congestion (below)
# registers it with aioquic, so the baseline runs it too (with aioquic's own
# pacer: crust's driver also installs crust's, see doc/quic.md).
QUIC_BASELINE = {
    "max_datagram_size": 1200,
    "max_data": 1 << 20,
    "max_stream_data": 1 << 20,
    "congestion_control": "crust-bbr",
    "high_water": 1 << 20,  # the sender's backpressure, as crust's lanes
    "low_water": 256 * 1024,
}

try:
    import crust.transport.quic.congestion  # noqa: F401  (registers "crust-bbr" with aioquic; no reactor)
except ImportError:  # pragma: no cover - crust not on the path: the baseline then fails to start, loudly
    pass

END_MARKER = b"E"  # a 1-byte message (no data message is 1 byte long) ends a stream test
ACK = b"A"


def emit(**fields: Any) -> None:
    """Send one event line to the runner."""
    sys.stdout.write(LINE_PREFIX + json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_line(line: str) -> dict[str, Any] | None:
    if not line.startswith(LINE_PREFIX):
        return None
    try:
        event = json.loads(line[len(LINE_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def minor_faults() -> int:
    """Minor page faults of this process so far (memory churn shows here)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median(values: Sequence[float]) -> float:
    values = sorted(values)
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), nearest-rank method."""
    values = sorted(values)
    if not values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def make_tls_identity(directory: str, name: str) -> None:
    """
    Write C{name}.key / C{name}.crt: an Ed25519 key and a self-signed
    certificate for it (the same key type and trust model as crust uses, so
    the baseline's handshake does the same cryptography).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"crust-bench-{name}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)
    )
    with open(os.path.join(directory, f"{name}.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(os.path.join(directory, f"{name}.crt"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def load_tls_options(directory: str, ours: str, theirs: str):
    """
    Twisted L{CertificateOptions} for the baseline: TLS 1.3 only, our
    certificate, the peer's certificate required and trusted (mutual auth,
    like crust), no session tickets or resumption.
    """
    from OpenSSL import crypto
    from twisted.internet import ssl

    with open(os.path.join(directory, f"{ours}.key"), "rb") as f:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
    with open(os.path.join(directory, f"{ours}.crt"), "rb") as f:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    with open(os.path.join(directory, f"{theirs}.crt"), "rb") as f:
        peer = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=cert,
        verify=True,
        caCerts=[peer],
        requireCertificate=True,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
        enableSessions=False,
        enableSessionTickets=False,
    )


def machine_description() -> dict[str, Any]:
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("twisted", "OpenSSL", "cryptography", "aioquic"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - informational only
            versions[mod] = "?"
    try:
        from OpenSSL import SSL

        versions["openssl"] = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:  # pragma: no cover
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    if not b or a is None or b is None or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def join(items: Iterable[str]) -> str:
    return ",".join(items)
