"""
The node's JSON config file (C{config.json} in its data directory).

L{load_config} reads and validates the file into a L{crust.config.Config},
creating it with the defaults (pretty-printed) when it is missing.  An invalid
file raises L{ConfigFileError}, whose message names the field as a dotted path
(C{hard_coded_contacts[2].address}) and the offending value; the file is never
rewritten.  JSON has no comments: doc/config.md documents every field, and
top-level keys starting with C{"_"} are ignored so they can serve as comments.

L{ConfigWatcher} reloads the file when it changes (polling) or when asked
(the node calls L{ConfigWatcher.reload} on SIGHUP).  L{ip_allowed} applies a
whitelist.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import ipaddress
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from crust._util.jsonread import JsonRefused, read_json_object
from crust._util.reactor import maybe_global_reactor
from crust.address import Address
from crust.config import BootstrapCacheConfig, Config, HardCodedContact, RelayLimits, TurnServer
from crust.errors import ConfigError
from crust.identity import PeerId
from crust.roles import Role

CONFIG_FILE_NAME = "config.json"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DURATION = 7 * 24 * 3600.0
MAX_LIST = 4096

log = Logger()

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ConfigFileError(ConfigError):
    """
    The config file is invalid.

    @ivar source: the file (or C{"<config>"}).
    @ivar field: the dotted path of the bad field, or C{None} for a problem
        with the file as a whole (unreadable, not JSON).
    @ivar value: the offending value as it appeared in the file.
    """

    def __init__(self, source: str, field: Optional[str], problem: str, value: Any = None,
                 show_value: bool = True) -> None:
        self.source = source
        self.field = field
        self.value = value
        self.problem = problem
        where = f"{source}: {field}: " if field else f"{source}: "
        text = where + problem
        if show_value:
            text += f" (value: {_show(value)})"
        super().__init__(text)


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# -- field validators ---------------------------------------------------------
#
# Each takes (value, path, source) and returns the converted value or raises
# ConfigFileError.  JSON null is only accepted where wrapped by _optional.

_Validator = Callable[[Any, str, str], Any]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _optional(inner: _Validator) -> _Validator:
    def check(value: Any, path: str, source: str) -> Any:
        return None if value is None else inner(value, path, source)
    return check


def _boolean(value: Any, path: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigFileError(source, path, f"must be true or false, not {_type_name(value)}", value)
    return value


def _integer(lo: int, hi: int, hint: str = "") -> _Validator:
    def check(value: Any, path: str, source: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFileError(source, path, f"must be an integer, not {_type_name(value)}", value)
        if not lo <= value <= hi:
            raise ConfigFileError(source, path, f"must be between {lo} and {hi}{hint}", value)
        return value
    return check


def _duration(value: Any, path: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigFileError(source, path, f"must be a number of seconds, not {_type_name(value)}", value)
    if not math.isfinite(value) or not 0 < value <= MAX_DURATION:
        raise ConfigFileError(source, path, f"must be more than 0 and at most {MAX_DURATION:g} seconds", value)
    return float(value)


def _delay(value: Any, path: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigFileError(source, path, f"must be a number of seconds, not {_type_name(value)}", value)
    if not math.isfinite(value) or not 0 <= value <= MAX_DURATION:
        raise ConfigFileError(source, path, f"must be at least 0 and at most {MAX_DURATION:g} seconds", value)
    return float(value)


def _batch_window(value: Any, path: str, source: str) -> float:
    seconds = _duration(value, path, source)
    if seconds > 1.0:
        raise ConfigFileError(source, path, "must be more than 0 and at most 1 second", value)
    return seconds


_listen_port = _integer(1, 65535, "; use null for a random port")


def _text(max_len: int = 255) -> _Validator:
    def check(value: Any, path: str, source: str) -> str:
        if not isinstance(value, str):
            raise ConfigFileError(source, path, f"must be a string, not {_type_name(value)}", value)
        if not value or len(value) > max_len:
            raise ConfigFileError(source, path, f"must be 1 to {max_len} characters long", value)
        return value
    return check


def _ip(value: Any, path: str, source: str) -> str:
    if not isinstance(value, str):
        raise ConfigFileError(source, path, f"must be an IP address string, not {_type_name(value)}", value)
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigFileError(source, path, "is not an IP address (host names are not resolved)", value) from None


def _address(value: Any, path: str, source: str) -> Address:
    if not isinstance(value, str):
        raise ConfigFileError(source, path, f"must be an address string like \"tcp:203.0.113.5:5483\", "
                                            f"not {_type_name(value)}", value)
    try:
        return Address.parse(value)
    except ValueError as e:
        text = str(e)
        raise ConfigFileError(source, path, text if text.startswith("bad address") else f"bad address: {text}",
                              value) from None


def _peer_id(value: Any, path: str, source: str) -> PeerId:
    if not isinstance(value, str):
        raise ConfigFileError(source, path, f"must be a peer id string, not {_type_name(value)}", value)
    try:
        return PeerId.from_text(value)
    except ValueError as e:
        raise ConfigFileError(source, path, f"bad peer id: {e}", value) from None


def _network_entry(value: Any, path: str, source: str) -> str:
    if not isinstance(value, str):
        raise ConfigFileError(source, path, f"must be an IP address or CIDR network string, "
                                            f"not {_type_name(value)}", value)
    text = value.strip()
    try:
        if "/" in text:
            try:
                return str(_canonical_network(ipaddress.ip_network(text, strict=True)))
            except ValueError as e:
                if "host bits set" in str(e):
                    suggestion = ipaddress.ip_network(text, strict=False)
                    raise ConfigFileError(source, path, f"network has host bits set; did you mean "
                                                        f"{suggestion}?", value) from None
                raise
        ip = ipaddress.ip_address(text)
        return str(_unmap(ip))
    except ValueError:
        raise ConfigFileError(source, path, "is not an IP address or CIDR network "
                                            "(e.g. \"192.168.1.7\", \"10.0.0.0/8\")", value) from None


def _list_of(item: _Validator, max_items: int = MAX_LIST) -> _Validator:
    def check(value: Any, path: str, source: str) -> tuple:
        if not isinstance(value, list):
            raise ConfigFileError(source, path, f"must be a list, not {_type_name(value)}", value)
        if len(value) > max_items:
            raise ConfigFileError(source, path, f"has {len(value)} entries, at most {max_items} are allowed",
                                  value, show_value=False)
        return tuple(item(v, f"{path}[{i}]", source) for i, v in enumerate(value))
    return check


def _object(fields: Mapping[str, tuple[_Validator, Any]], path: str, value: Any, source: str,
            required: Iterable[str] = ()) -> dict[str, Any]:
    """Validate a JSON object against C{fields}: name -> (validator, default)."""
    if not isinstance(value, dict):
        raise ConfigFileError(source, path, f"must be an object, not {_type_name(value)}", value)
    for key in value:
        if key not in fields:
            raise ConfigFileError(source, f"{path}.{key}", "unknown field" + _suggest(key, fields),
                                  value[key])
    out = {}
    for name, (check, default) in fields.items():
        if name in value:
            out[name] = check(value[name], f"{path}.{name}", source)
        elif name in required:
            raise ConfigFileError(source, f"{path}.{name}", "is required", None, show_value=False)
        else:
            out[name] = default
    return out


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _contact(value: Any, path: str, source: str) -> HardCodedContact:
    fields = {"peer_id": (_peer_id, None), "address": (_address, None)}
    parsed = _object(fields, path, value, source, required=("peer_id", "address"))
    return HardCodedContact(parsed["peer_id"], parsed["address"])


_CACHE_DEFAULTS = BootstrapCacheConfig()


def _bootstrap_cache(value: Any, path: str, source: str) -> BootstrapCacheConfig:
    fields = {
        "file": (_optional(_text(4096)), _CACHE_DEFAULTS.file),
        "max_size": (_integer(0, 100_000, " (0 disables the cache)"), _CACHE_DEFAULTS.max_size),
        "timeout": (_duration, _CACHE_DEFAULTS.timeout),
    }
    return BootstrapCacheConfig(**_object(fields, path, value, source))


_RELAY_DEFAULTS = RelayLimits()


def _relay_limits(value: Any, path: str, source: str) -> RelayLimits:
    fields = {
        "bytes_per_circuit": (_integer(1, 1 << 50), _RELAY_DEFAULTS.bytes_per_circuit),
        "seconds_per_circuit": (_duration, _RELAY_DEFAULTS.seconds_per_circuit),
        "rate_per_circuit": (_optional(_integer(1, 1 << 40, "; null means unlimited")),
                             _RELAY_DEFAULTS.rate_per_circuit),
        "circuits_per_peer": (_integer(0, 1 << 16), _RELAY_DEFAULTS.circuits_per_peer),
        "circuits_total": (_integer(0, 1 << 20), _RELAY_DEFAULTS.circuits_total),
        "window": (_integer(64 * 1024, 16 * 1024 * 1024), _RELAY_DEFAULTS.window),
    }
    return RelayLimits(**_object(fields, path, value, source))


def _turn_server(value: Any, path: str, source: str) -> TurnServer:
    fields = {"address": (_address, None), "username": (_text(513), None), "password": (_text(513), None)}
    parsed = _object(fields, path, value, source, required=("address", "username", "password"))
    if parsed["address"].transport != "udp":
        raise ConfigFileError(source, f"{path}.address", "a TURN server is a udp: address", str(parsed["address"]))
    return TurnServer(parsed["address"], parsed["username"], parsed["password"])


# JSON field -> validator, in the order the default file lists them.  Every
# field of Config appears here (a test checks it); the JSON names are the
# Config attribute names.
_FIELDS: dict[str, _Validator] = {
    "network_name": _optional(_text(255)),
    "hard_coded_contacts": _list_of(_contact),
    "listen_host": _ip,
    "listen_port": _optional(_listen_port),
    "udp_listen_port": _optional(_listen_port),
    "enable_tcp": _boolean,
    "enable_udp": _boolean,
    "force_acceptor_port_in_ext_ep": _boolean,
    "enable_service_discovery": _boolean,
    "service_discovery_port": _integer(1, 65535),
    "service_discovery_listener_port": _optional(_integer(1, 65535, "; null means the same as "
                                                                     "service_discovery_port")),
    "bootstrap_cache": _bootstrap_cache,
    "whitelisted_node_ips": _optional(_list_of(_network_entry)),
    "whitelisted_client_ips": _optional(_list_of(_network_entry)),
    "accept_bootstrap": _boolean,
    "serve_rendezvous": _boolean,
    "external_reachability_test": _boolean,
    "bootstrap_timeout": _duration,
    "bootstrap_concurrency": _integer(1, 1024),
    "bootstrap_retry_max": _delay,
    "max_message_size": _integer(1, 1 << 30),
    "max_queued_bytes": _integer(1, 1 << 34),
    "drop_after": _duration,
    "signed_batch_window": _batch_window,
    "signed_batch_max": _integer(1, 256),
    "heartbeat_interval": _duration,
    "inactivity_timeout": _duration,
    "connect_timeout": _duration,
    "handshake_timeout": _duration,
    "quic_dial_delay": _delay,
    "stun_servers": _list_of(_address, 64),
    "enable_port_mapping": _boolean,
    "serve_relay": _boolean,
    "relay_delay": _delay,
    "relay_limits": _relay_limits,
    "accept_relayed": _boolean,
    "relay_splice": _boolean,
    "upgrade_interval": _duration,
    "upgrade_interval_max": _duration,
    "turn_servers": _list_of(_turn_server, 8),
}


# -- parsing ------------------------------------------------------------------

#: How deep the config file's JSON may nest (the top object is depth 1).
MAX_CONFIG_DEPTH = 16
#: How many arrays and objects the config file's JSON may hold.
MAX_CONFIG_CONTAINERS = 4 * MAX_LIST


def parse_config(text: Union[str, bytes], source: str = "<config>", defaults: Optional[Config] = None) -> Config:
    """
    Validate config file text into a L{Config}; missing fields take their
    values from C{defaults} (L{Config}'s own when None).

    @raise ConfigFileError: naming the field (dotted path) and the value.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigFileError(source, None, f"is not UTF-8 text (bad byte at offset {e.start})",
                                  show_value=False) from None
    elif text.startswith("\ufeff"):
        text = text[1:]
    try:
        body = read_json_object(text, max_size=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH,
                                max_containers=MAX_CONFIG_CONTAINERS)
    except JsonRefused as e:
        if e.key is not None:
            where = f" (line {e.line}, column {e.column})" if e.line is not None else ""
            raise ConfigFileError(source, e.key, f"appears twice in one object{where}", show_value=False) from None
        raise ConfigFileError(source, None, e.reason, show_value=False) from None
    return config_from_dict(body, source, defaults)


def config_from_dict(body: Any, source: str = "<config>", defaults: Optional[Config] = None) -> Config:
    """Validate a decoded JSON document into a L{Config} (see L{parse_config})."""
    if not isinstance(body, dict):
        raise ConfigFileError(source, None, f"the top level must be a JSON object, not {_type_name(body)}",
                              body)
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key.startswith("_"):
            continue  # a comment
        check = _FIELDS.get(key)
        if check is None:
            raise ConfigFileError(source, key, "unknown field" + _suggest(key, _FIELDS), value)
        values[key] = check(value, key, source)

    if defaults is None:
        defaults = Config()
    merged = {f.name: values.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(Config)}
    if "service_discovery_listener_port" in values and values["service_discovery_listener_port"] is None:
        merged["service_discovery_listener_port"] = merged["service_discovery_port"]
    if merged["max_queued_bytes"] < merged["max_message_size"]:
        raise ConfigFileError(source, "max_queued_bytes",
                              f"must be at least max_message_size ({merged['max_message_size']})",
                              merged["max_queued_bytes"])
    if merged["inactivity_timeout"] <= merged["heartbeat_interval"]:
        raise ConfigFileError(source, "inactivity_timeout",
                              f"must be longer than heartbeat_interval ({merged['heartbeat_interval']:g} s)",
                              body.get("inactivity_timeout", merged["inactivity_timeout"]))
    if merged["upgrade_interval_max"] < merged["upgrade_interval"]:
        raise ConfigFileError(source, "upgrade_interval_max",
                              f"must be at least upgrade_interval ({merged['upgrade_interval']:g} s)",
                              body.get("upgrade_interval_max", merged["upgrade_interval_max"]))
    try:
        return Config(**merged)
    except (TypeError, ValueError) as e:  # a rule of Config this module does not know yet
        raise ConfigFileError(source, None, f"invalid configuration: {e}", show_value=False) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """The JSON document for C{config}, fields in the documented order."""
    def plain(value: Any) -> Any:
        if isinstance(value, (PeerId, Address)):
            return str(value)
        if isinstance(value, HardCodedContact):
            return {"peer_id": str(value.peer_id), "address": str(value.address)}
        if isinstance(value, BootstrapCacheConfig):
            return {"file": value.file, "max_size": value.max_size, "timeout": value.timeout}
        if isinstance(value, RelayLimits):
            return dataclasses.asdict(value)
        if isinstance(value, TurnServer):
            return {"address": str(value.address), "username": value.username, "password": value.password}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return {name: plain(getattr(config, name)) for name in _FIELDS}


def config_to_json(config: Config) -> str:
    """Pretty-printed JSON text for C{config} (what a new config file holds)."""
    return json.dumps(config_to_dict(config), indent=2) + "\n"


# -- the file -----------------------------------------------------------------

def config_path(data_dir: Union[str, os.PathLike[str]]) -> Path:
    """Where the config file of the node with data directory C{data_dir} lives."""
    return Path(data_dir) / CONFIG_FILE_NAME


def read_config_bytes(path: Union[str, os.PathLike[str]]) -> bytes:
    """
    Read the raw config file (size-capped).

    @raise FileNotFoundError: it does not exist.
    @raise ConfigFileError: it cannot be read or is too large.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigFileError(str(p), None, f"cannot read the config file: {e.strerror}",
                              show_value=False) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigFileError(str(p), None, f"the config file is over {MAX_CONFIG_BYTES} bytes",
                              show_value=False)
    return data


def write_default_config(path: Union[str, os.PathLike[str]], config: Optional[Config] = None) -> bool:
    """
    Create C{path} holding C{config} (default: the defaults), atomically and
    only if it does not exist.

    @return: True if created, False if a file was already there (untouched).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = config_to_json(config if config is not None else Config()).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        try:
            os.write(fd, text)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, p)  # atomic, and never replaces an existing file
        except FileExistsError:
            return False
        _fsync_dir(p.parent)
        return True
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_config(path: Union[str, os.PathLike[str]], create: bool = True,
                defaults: Optional[Config] = None) -> Config:
    """
    Load and validate the config file at C{path}.

    A missing file is created with C{defaults} (L{Config}'s own when None;
    the ready node passes its own) when C{create}, and those are returned.
    Fields an existing file leaves out take their values from C{defaults}
    too.  An existing file is never written.

    @raise ConfigFileError: the file is unreadable or invalid; the message
        names the file, the field and the value.
    """
    p = Path(path)
    try:
        data = read_config_bytes(p)
    except FileNotFoundError:
        if not create:
            raise ConfigFileError(str(p), None, "the config file does not exist", show_value=False) from None
        try:
            created = write_default_config(p, defaults)
        except OSError as e:
            raise ConfigFileError(str(p), None, f"cannot create the config file: {e.strerror}",
                                  show_value=False) from None
        if created:
            log.info("created config file {path} with the defaults (see doc/config.md)", path=str(p))
            return defaults if defaults is not None else Config()
        data = read_config_bytes(p)  # someone else created it meanwhile
    return parse_config(data, str(p), defaults)


def load_or_create_config(data_dir: Union[str, os.PathLike[str]]) -> Config:
    """L{load_config} on C{config.json} in C{data_dir}."""
    return load_config(config_path(data_dir))


# -- reloading ----------------------------------------------------------------

class ConfigWatcher(service.Service):
    """
    Reloads the config file when it changes, or when L{reload} is called
    (on SIGHUP).

    Every C{interval} seconds the file's mtime, size and inode are compared
    with the last seen ones; if they differ its content is hashed, and new
    content is parsed.  A valid config that differs from the current one is
    passed to C{callback}; invalid content is logged once (with the field
    and value) and the current config is kept.

    @ivar current: the config in force.
    @ivar defaults: what fields the file leaves out take (L{Config}'s own when None).
    """

    def __init__(self, path: Union[str, os.PathLike[str]], callback: Callable[[Config], Any],
                 current: Optional[Config] = None, interval: float = 2.0, clock: Any = None,
                 defaults: Optional[Config] = None) -> None:
        clock = maybe_global_reactor(clock)
        self.defaults = defaults
        self.path = Path(path)
        self.callback = callback
        self.current = current
        self.interval = interval
        self._clock = clock
        self._loop: Optional[LoopingCall] = None
        self._signature: Optional[tuple[int, int, int]] = None
        self._digest: Optional[bytes] = None
        self._rejected: Optional[bytes] = None  # digest of content last logged as invalid
        self._missing_logged = False

    def startService(self) -> None:
        super().startService()
        self._check(forced=False, initial=self.current is None)
        self._loop = LoopingCall(self._poll)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def reload(self) -> Optional[Config]:
        """Re-read the file now, whatever its mtime says; return the config in force."""
        log.info("reloading config file {path}", path=str(self.path))
        self._check(forced=True)
        return self.current

    def _poll(self) -> None:
        try:
            self._check(forced=False)
        except Exception:
            log.failure("checking config file {path} failed", path=str(self.path))

    def _check(self, forced: bool, initial: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._missing_logged or forced:
                log.warn("config file {path} is missing; keeping the current configuration",
                         path=str(self.path))
                self._missing_logged = True
            self._signature = None
            return
        except OSError as e:
            log.error("cannot stat config file {path}: {error}; keeping the current configuration",
                      path=str(self.path), error=e.strerror)
            return
        self._missing_logged = False
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature and not forced:
            return
        try:
            data = read_config_bytes(self.path)
        except (OSError, ConfigError) as e:
            log.error("cannot reload config file {path}: {error}; keeping the current configuration",
                      path=str(self.path), error=str(e))
            return
        self._signature = signature
        digest = hashlib.sha256(data).digest()
        if digest == self._digest and not forced:
            return
        try:
            config = parse_config(data, str(self.path), self.defaults)
        except ConfigFileError as e:
            if forced or digest != self._rejected:
                log.error("invalid config file, keeping the current configuration: {error}",
                          error=str(e), path=str(self.path), field=e.field)
            self._rejected = digest
            return
        self._digest = digest
        self._rejected = None
        if initial:
            self.current = config
            return
        if config == self.current:
            log.debug("config file {path} changed but the configuration is the same", path=str(self.path))
            return
        self.current = config
        log.info("config file {path} changed; applying the new configuration", path=str(self.path))
        try:
            self.callback(config)
        except Exception:
            log.failure("applying the new configuration from {path} failed", path=str(self.path))


# -- whitelists -----------------------------------------------------------------

def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _canonical_network(net: IPNetwork) -> IPNetwork:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}")
    return net


@functools.lru_cache(maxsize=1024)
def _network(entry: str) -> Optional[IPNetwork]:
    try:
        return _canonical_network(ipaddress.ip_network(entry.strip(), strict=False))
    except ValueError:
        return None


def _as_ip(ip: Any) -> Optional[IPAddress]:
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        parsed = ip
    elif isinstance(ip, str):
        text = ip.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        text = text.split("%", 1)[0]  # a scope id does not change who the peer is
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            return None
    else:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id:
        parsed = ipaddress.IPv6Address(parsed.exploded.split("%", 1)[0])
    return _unmap(parsed)


def ip_allowed(ip: Any, whitelist: Optional[Iterable[Any]]) -> bool:
    """
    Is C{ip} allowed by C{whitelist}?

    @param ip: text (C{"10.0.0.7"}, C{"::ffff:10.0.0.7"}, C{"fe80::1%eth0"})
        or an C{ipaddress} object.  IPv4-mapped IPv6 addresses match IPv4
        entries.  Anything that is not an IP address is refused.
    @param whitelist: C{None} allows everyone; otherwise IP addresses and
        CIDR networks (text or C{ipaddress} objects).  An empty list allows
        nobody.
    """
    if whitelist is None:
        return True
    addr = _as_ip(ip)
    if addr is None:
        return False
    for entry in whitelist:
        if isinstance(entry, str):
            net = _network(entry)
        elif isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            net = _canonical_network(entry)
        elif isinstance(entry, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            net = ipaddress.ip_network(_unmap(entry))
        else:
            net = None
        if net is not None and net.version == addr.version and addr in net:
            return True
    return False


def peer_ip_allowed(config: Config, role: Role, ip: Any) -> bool:
    """L{ip_allowed} against the whitelist of C{role} in C{config}."""
    whitelist = config.whitelisted_node_ips if role is Role.NODE else config.whitelisted_client_ips
    return ip_allowed(ip, whitelist)
