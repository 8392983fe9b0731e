"""
L{Node}: a ready-to-run crust peer, as C{twistd -n crust node} runs it.

A node is a C{MultiService} that owns a data directory (L{crust.node.datadir}):
its identity key, its config file, a lock (one node per directory), its
state file, and the local control socket (L{crust.node.control}) through which
the C{crust} command drives it.  Inside it runs a L{crust.service.Service}.

L{Node.prepare} does everything that can fail for a reason a person must
fix (the directory, the lock, a corrupt key, an invalid config, a port in
use, a live control socket) synchronously, raising L{StartupError} with a
clear message; C{twistd} calls it from C{makeService}, before logging and
the reactor start, so a bad start is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Optional, Union

from twisted.application.service import MultiService
from twisted.application.service import Service as TwistedService
from twisted.python.components import Componentized
from twisted.internet.defer import Deferred, succeed
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from crust.bootstrap.keeper import BootstrapKeeper
from crust.nat.reflexive import describe as describe_nat
from crust._util.reactor import maybe_global_reactor
from crust._version import __version__
from crust.config import Config
from crust.connection_info import PrivConnectionInfo, PubConnectionInfo
from crust.node.control import ControlServer, ControlTimeout, EventHub, node_commands
from crust.node.datadir import DataDir, DataDirError, DataDirLock
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.service import Service

DEFAULT_CONTROL = "default"  # the control socket in the data directory

# Where the ready node differs from the library's defaults (written into a new config file).
NODE_DEFAULTS = Config(accept_bootstrap=True, serve_rendezvous=True, serve_relay=True)
MIN_MAX_REQUEST = 1024 * 1024


class StartupError(CrustError):
    """The node cannot start; the message says why and what to do."""


def max_request_for(config: Config) -> int:
    """A control request must hold the largest message, base64-encoded, and then some."""
    return max(MIN_MAX_REQUEST, 4 * ((config.max_message_size + 2) // 3) + 64 * 1024)


def load_node_config(path: Path, create: bool) -> Config:
    """
    The config in the file at C{path} (created with the defaults when
    C{create} and missing), through L{crust.node.config_file.load_config}; plain
    defaults if that module is not available.

    @raise StartupError: the file is invalid (the message names the field).
    """
    try:
        from crust.node.config_file import load_config
    except ImportError:  # pragma: no cover - the module ships with crust
        Node.log.warn("crust.node.config_file is not available: using the default configuration")
        return NODE_DEFAULTS
    try:
        return load_config(path, create=create, defaults=NODE_DEFAULTS)
    except CrustError as e:
        raise StartupError(f"invalid configuration: {e}") from None
    except OSError as e:
        raise StartupError(f"cannot read the config file {path}: {e.strerror or e}") from None


class Node(MultiService):
    """
    A crust peer node with a data directory and a control socket.

    @param data_dir: the data directory (created, mode 0700, if missing).
    @param config_file: the JSON config file; default C{config.json} in the
        data directory, created with the defaults if missing.  A file named
        explicitly must exist.
    @param config: use this L{Config} instead of reading a file.
    @param overrides: L{Config} fields that beat the file (from the command line).
    @param control: C{"default"} (C{control.sock} in the data directory), a
        path, or C{None} for no control interface.
    @param metrics: a server endpoint description (C{tcp:9464:interface=127.0.0.1})
        to serve the service's Prometheus metrics on, at C{/metrics}
        (doc/metrics.md); C{None} (the default) serves none.
    @param reactor: the reactor; the global one by default.
    """

    log = Logger()

    def __init__(self, data_dir: Union[str, os.PathLike], *, config_file: Optional[Union[str, os.PathLike]] = None,
                 config: Optional[Config] = None, overrides: Optional[dict[str, Any]] = None,
                 control: Optional[str] = DEFAULT_CONTROL, reactor: Any = None, role: str = "node",
                 metrics: Optional[str] = None) -> None:
        MultiService.__init__(self)
        reactor = maybe_global_reactor(reactor)
        self.reactor = reactor
        self.data_dir = DataDir(data_dir)
        self.config_file = Path(config_file).absolute() if config_file is not None else None
        self._given_config = config
        self.overrides = dict(overrides or {})
        self.control_path: Optional[str] = (
            str(self.data_dir.control_path) if control == DEFAULT_CONTROL else control
        )
        self.role = role
        self.metrics_endpoint = metrics
        self.metrics_port: Any = None  # where the metrics are served, once listening
        self.events = EventHub(reactor)
        self.identity: Optional[Identity] = None
        self.config: Optional[Config] = None
        self.service: Optional[Service] = None
        self.control: Optional[ControlServer] = None
        self.prepared = False
        self.started_at: Optional[float] = None
        self._lock: Optional[DataDirLock] = None
        self._watcher: Any = None
        self._file_config: Optional[Config] = None
        self._start_bootstrap: Any = None
        self.keeper: Optional[BootstrapKeeper] = None  # bootstraps again while the node has no peer
        self._previous_sighup: Any = None
        self._our_info: Optional[PrivConnectionInfo] = None
        self.closed: Deferred = succeed(None)  # after a failed prepare(): fires once its ports are closed
        self.log_observer: Any = None  # given to the application twistd makes (ILogObserver), if set

    def setServiceParent(self, parent: Any) -> Any:
        """(Under twistd: the application takes our log observer, if we have one.)"""
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return MultiService.setServiceParent(self, parent)

    @property
    def peer_id(self) -> Optional[PeerId]:
        return self.identity.peer_id if self.identity is not None else None

    # -- starting ------------------------------------------------------------------

    def prepare(self) -> None:
        """
        Set the node up, synchronously: directory, lock, identity, config,
        the crust service and its listener, the control socket.  Idempotent.

        @raise StartupError: naming the problem; nothing is left held.
        """
        if self.prepared:
            return
        try:
            self._prepare()
        except BaseException:
            self.closed = self._stop_unstarted()
            self._release()
            raise
        self.prepared = True

    def _prepare(self) -> None:
        try:
            for warning in self.data_dir.ensure():
                self.log.warn("{warning}", warning=warning)
            self._lock = self.data_dir.lock()
        except DataDirError as e:
            raise StartupError(str(e)) from None

        try:
            self.identity = Identity.load_or_create(self.data_dir.identity_path)
        except CrustError as e:
            raise StartupError(f"cannot use the identity key: {e}") from None
        except OSError as e:
            raise StartupError(f"cannot create the identity key {self.data_dir.identity_path}: "
                               f"{e.strerror or e}") from None

        if self._given_config is not None:
            config = self._given_config
        elif self.config_file is not None:
            config = load_node_config(self.config_file, create=False)
        else:
            config = load_node_config(self.data_dir.config_path, create=True)
        self._file_config = config
        if self.overrides:
            try:
                config = config.replace(**self.overrides)
            except (TypeError, ValueError) as e:
                raise StartupError(f"invalid setting: {e}") from None
        self.config = config

        svc = Service(self.identity, config, reactor=self.reactor, role=self.role,
                      data_dir=str(self.data_dir.path))
        svc.add_observer(self.events)
        svc.setServiceParent(self)
        self.service = svc

        # listen now, so a port in use is reported before the reactor runs
        listening = svc.start_listening()
        failures: list[Failure] = []
        listening.addErrback(failures.append)
        if failures:
            reason = failures[0].getErrorMessage()
            raise StartupError(reason if reason.startswith("cannot listen") else
                               f"cannot listen on tcp {config.listen_host}:{config.listen_port or 0}: {reason}")

        if self.metrics_endpoint is not None:
            self._serve_metrics(svc)

        if self.control_path is not None:
            control = ControlServer(self, self.control_path, self.reactor, node_commands(),
                                    max_request_for(config))
            try:
                control.listen()
            except CrustError as e:
                raise StartupError(str(e)) from None
            control.setServiceParent(self)  # after the service: stopped before it
            self.control = control

    def _serve_metrics(self, svc: Service) -> None:
        """Listen on the metrics endpoint, with the process's figures beside the service's."""
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        from crust.metrics import listen_metrics

        description = self.metrics_endpoint
        assert description is not None
        registry = svc.metrics.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        try:
            listening = listen_metrics(self.reactor, description, registry)
        except ValueError as e:
            raise StartupError(f"invalid metrics endpoint {description!r}: {e}") from None
        failures: list[Failure] = []
        listening.addCallbacks(self._metrics_listening, failures.append)
        if failures:
            raise StartupError(f"cannot serve metrics on {description}: {failures[0].getErrorMessage()}")
        listening.addErrback(lambda f: self.log.error("cannot serve metrics on {endpoint}: {reason}",
                                                      endpoint=description, reason=f.getErrorMessage()))

    def _metrics_listening(self, port: Any) -> None:
        self.metrics_port = port
        _Listening(port).setServiceParent(self)  # closed when the node stops

    @property
    def metrics_url(self) -> Optional[str]:
        """Where the metrics are served (C{http://127.0.0.1:9464/metrics}), once listening."""
        if self.metrics_port is None:
            return None
        address = self.metrics_port.getHost()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if host is None or port is None:
            return str(address)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    def startService(self) -> None:
        self.prepare()
        if self._lock is not None:
            self._lock.update_pid()  # twistd may have forked since prepare()
        self.started_at = self.reactor.seconds()
        self._watch_config()
        MultiService.startService(self)
        self._write_state()
        self.connection_info().addCallbacks(self._announce, self._announce_failed)
        svc, config = self.service, self.config
        assert svc is not None and config is not None
        if config.enable_service_discovery:
            svc.start_service_discovery(listen=True)
        self.keeper = BootstrapKeeper(self._bootstrap_attempt, lambda: len(svc.connected_peers()), self.reactor,
                                      max_delay=config.bootstrap_retry_max)
        svc.add_observer(self.keeper)
        self._start_bootstrap = self.reactor.callLater(0, self.keeper.start)

    # -- bootstrap and config ---------------------------------------------------------

    def _bootstrap_attempt(self) -> Optional[Deferred]:
        """
        One bootstrap for the keeper (at start, and again while the node has
        no peer); None when there is nothing to bootstrap from.
        """
        svc, config = self.service, self.config
        if svc is None or not svc.running_for_peers:
            return None
        assert config is not None  # prepared with the service
        if config.hard_coded_contacts or svc.bootstrap_cached_peers():
            return self.bootstrap()
        if config.enable_service_discovery and not ipaddress.ip_address(config.listen_host).is_loopback:
            # no contacts: bootstrap off the LAN if anyone answers there
            d = svc.has_peers_on_lan()
            d.addCallback(lambda found: self.bootstrap() if found else None)
            return d
        return None

    def bootstrap(self, blacklist: Any = (), role: Optional[str] = None) -> Deferred:
        """
        Bootstrap the node's service; fires with the peer id.  Without a
        C{role}, a node that no peer can reach back joins as a client.
        """
        assert self.service is not None
        if role is None and self.role != "node":
            role = self.role
        return self.service.bootstrap(blacklist, role)

    def _watch_config(self) -> None:
        """Re-read the config file when it changes, and on SIGHUP."""
        if self._given_config is not None or self._watcher is not None:
            return
        from crust.node.config_file import ConfigWatcher

        path = self.config_file or self.data_dir.config_path
        self._watcher = ConfigWatcher(path, self._config_changed, current=self._file_config, clock=self.reactor,
                                      defaults=NODE_DEFAULTS)
        self._watcher.setServiceParent(self)
        try:
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.reload_config))
        except ValueError:  # not the main thread (tests): the file watcher still works
            self._previous_sighup = None

    def reload_config(self) -> None:
        """Re-read the config file now (SIGHUP does this)."""
        if self._watcher is not None:
            self.log.info("reloading the config file")
            self._watcher.reload()

    def _config_changed(self, config: Config) -> None:
        if self.overrides:
            config = config.replace(**self.overrides)
        self.log.info("config file changed: applying it")
        self.config = config
        if self.service is not None:
            self.service.apply_config(config)
        if self.keeper is not None:
            self.keeper.max_delay = config.bootstrap_retry_max

    def _announce(self, info: PubConnectionInfo) -> None:
        svc = self.service
        assert svc is not None and self.config is not None
        addresses = " ".join(str(a) for a in svc.listen_addresses) or "(not listening)"
        self.log.info("crust node ready: peer id {peer_id}", peer_id=str(self.peer_id),
                      data_dir=str(self.data_dir.path), version=__version__, node_event="ready")
        self.log.info("listening on {addresses}", addresses=addresses,
                      listen_addresses=[str(a) for a in svc.listen_addresses])
        if self.metrics_url:
            self.log.info("metrics at {metrics_url}", metrics_url=self.metrics_url)
        if self.control_path:
            self.log.info("control socket {control} (try: crust{data_dir_option} info)",
                          control=self.control_path, data_dir_option=self._data_dir_option())
        else:
            self.log.info("no control socket (--control none)")
        self.log.info("connection info (give it to a peer; they run crust connect '<info>'): {connection_info}",
                      connection_info=info.to_json())
        self._write_state()

    def _announce_failed(self, failure: Failure) -> None:
        self.log.error("crust node {peer_id} started, but is not listening: {reason}",
                       peer_id=str(self.peer_id), reason=failure.getErrorMessage())

    def _data_dir_option(self) -> str:
        from crust.node.datadir import default_data_dir

        if self.data_dir.path == default_data_dir():
            return ""
        return f" --data-dir {self.data_dir.path}"

    def stopService(self) -> Deferred:
        if self._start_bootstrap is not None and self._start_bootstrap.active():
            self._start_bootstrap.cancel()
        self._start_bootstrap = None
        if self.keeper is not None:
            self.keeper.stop()
        d = succeed(None)
        if self.running:
            d = MultiService.stopService(self)
        elif self.service is not None or self.control is not None:
            # prepared but never started: close what prepare() opened
            d = self._stop_unstarted()
        return d.addBoth(self._stopped)

    def _stop_unstarted(self) -> Deferred:
        """Close what a prepare() that never led to startService opened."""
        from twisted.internet.defer import gatherResults, maybeDeferred

        ds = []
        if self.metrics_port is not None:
            ds.append(maybeDeferred(self.metrics_port.stopListening))
        if self.control is not None:
            ds.append(maybeDeferred(self.control.stopService))
        if self.service is not None:
            ds.append(maybeDeferred(self.service.stopService))
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def _stopped(self, result: Any) -> Any:
        self._release()
        if self._previous_sighup is not None:
            try:
                signal.signal(signal.SIGHUP, self._previous_sighup)
            except ValueError:
                pass
            self._previous_sighup = None
        return result

    def _release(self) -> None:
        if self._lock is not None:
            self.data_dir.remove_state()
            self._lock.release()
            self._lock = None

    def _write_state(self) -> None:
        svc = self.service
        state = {
            "pid": os.getpid(),
            "peer_id": str(self.peer_id),
            "version": __version__,
            "control": self.control_path,
            "listen_addresses": [str(a) for a in svc.listen_addresses] if svc else [],
            "started": time.time(),
        }
        try:
            self.data_dir.write_state(state)
        except OSError as e:
            self.log.warn("cannot write {path}: {reason}", path=str(self.data_dir.state_path), reason=str(e))

    # -- what the control commands use ------------------------------------------------------

    def connection_info(self) -> Deferred:
        """Fires with our L{PubConnectionInfo} (kept, with its private part, for L{connect})."""
        assert self.service is not None

        def keep(info: PrivConnectionInfo) -> PubConnectionInfo:
            self._our_info = info
            return info.public

        return self.service.prepare_connection_info().addCallback(keep)

    def connect(self, target: Union[PubConnectionInfo, PeerId], timeout: Optional[float] = None) -> Deferred:
        """
        Connect to the peer C{target} names (its connection info, or its
        L{PeerId}: then through a peer we are both connected to); fires with
        its L{PeerId}.  With C{timeout}, fails with L{ControlTimeout} after
        that many seconds (the attempt itself runs on, to the configured
        connect_timeout).
        """
        assert self.service is not None
        d = self.service.connect(target)
        if timeout is None:
            return d
        peer = target if isinstance(target, PeerId) else target.peer_id
        return _with_timeout(d, timeout, self.reactor,
                             lambda: ControlTimeout(f"not connected to {peer} within {timeout:g} s"))

    def describe(self) -> Deferred:
        """Fires with the C{info} command's result."""
        assert self.service is not None and self.config is not None
        svc, config = self.service, self.config

        def build(info: PubConnectionInfo) -> dict[str, Any]:
            now = self.reactor.seconds()
            return {
                "peer_id": str(self.peer_id),
                "version": __version__,
                "network_name": config.network_name,
                "role": str(svc.bootstrapper.held_role or self.role),
                "role_reason": svc.bootstrapper.role_reason,
                "nat": describe_nat(svc.addresses.nat),
                "turn": svc.turn.status() if svc.turn is not None else [],
                "listen_addresses": [str(a) for a in svc.listen_addresses],
                "external_addresses": [str(a) for a in svc.external_addresses],
                "connection_info": json.loads(info.to_json()),
                "peers": len(svc.connected_peers()),
                "bootstrapped_to": ({"peer_id": str(svc.bootstrapped_to[0]), "address": str(svc.bootstrapped_to[1])}
                                    if svc.bootstrapped_to else None),
                "accept_bootstrap": svc.config.accept_bootstrap,
                "bootstrap_cache_size": len(svc.bootstrap_cached_peers()),
                "rebootstrap": self.keeper.status() if self.keeper is not None else None,
                "relay": svc.relay.stats(),
                "data_dir": str(self.data_dir.path),
                "config_file": (
                    str(self.config_file or self.data_dir.config_path) if self._given_config is None else None
                ),
                "control": self.control_path,
                "metrics": self.metrics_url,
                "pid": os.getpid(),
                "uptime": round(now - self.started_at, 3) if self.started_at is not None else 0.0,
            }

        return self.connection_info().addCallback(build)


class _Listening(TwistedService):
    """A port the node opened when it prepared, closed when it stops."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def stopService(self) -> Any:
        TwistedService.stopService(self)
        return self.port.stopListening()


def _with_timeout(d: Deferred, seconds: float, clock: Any, error: Any) -> Deferred:
    """A Deferred firing like C{d}, or failing with C{error()} after C{seconds}; C{d} is left alone."""
    out: Deferred = Deferred()

    def expire() -> None:
        if not out.called:
            out.errback(Failure(error()))

    timer = clock.callLater(seconds, expire)

    def done(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if out.called:
            return  # already timed out; a late failure is dropped here
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)

    d.addBoth(done)
    return out
