"""
Prometheus metrics of one L{crust.service.Service}: L{ServiceMetrics}, and
L{MetricsPage} / L{listen_metrics} to serve them over HTTP.

Every service has a C{CollectorRegistry} of its own
(C{service.metrics.registry}), never C{prometheus_client}'s global one, so
that several services in one process (as in the tests) each count their own
and do not collide.  Its figures come two ways:

  - read at scrape time (L{ServiceCollector}) from what the layers keep
    anyway: the connections in the peer table by transport and path, their
    send queues, the handshakes and connect attempts under way, the message
    counts of the observers' fan-out, and the counters of the punch
    manager, the rendezvous, the relay, the TURN clients, the UDP socket and
    the port mapper;
  - counted as things happen (L{ServiceMetrics}): the service's observer
    events (drops, bootstraps, circuits, path changes), each connection's
    end as the peer table reports it (handshake outcomes and failure
    reasons, closes), and each connect attempt's end (its outcome, its
    duration, each strategy's part in it).

Label values come from fixed sets (a transport, a path kind, a strategy, a
reason code from L{crust.wire} or L{crust.relay.messages}); never a peer id
or an address.  doc/metrics.md lists every metric.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource

from crust._version import __version__
from crust.relay import messages as relay_messages
from crust.roles import Role
from crust.session.handshake import HandshakeState
from crust.wire import CloseReason, RejectReason

if TYPE_CHECKING:
    from crust.peering.attempt import ConnectAttempt
    from crust.service import Service
    from crust.session.connection import PeerConnection

#: What a connection's path may be (L{crust.session.connection.PathInfo.kind}); anything else is C{other}.
PATH_KINDS = frozenset(("direct", "mapped", "punched-tcp", "punched-udp", "relayed", "incoming"))

#: The reasons a handshake fails or a connection closes, as labels: the codes that cross the wire, and a few of ours.
REASONS = frozenset([r.value for r in RejectReason] + [r.value for r in CloseReason]
                    + ["tls", "connection-lost", "other"])

#: Why a relayed circuit ended (L{crust.relay.messages}); anything else is C{other}.
CIRCUIT_REASONS = frozenset(getattr(relay_messages, name) for name in dir(relay_messages)
                            if name.startswith("REASON_")) | {"other"}

#: Priorities above this share one label value (C{"8+"}).
PRIORITY_LABELS = 8

#: Connect attempts' duration buckets, in seconds (a punch waits for its moment; the default timeout is 30 s).
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)

_PEER_PREFIXES = ("peer closed: ", "refused by the peer: ")


def reason_code(text: str) -> str:
    """
    The label for a connection's end reason, a member of L{REASONS}: the
    code it starts with (C{"network-mismatch: ..."}, C{"peer closed:
    timeout (...)"}), C{tls} for a TLS or certificate failure,
    C{connection-lost} when the transport went away, else C{other}.
    """
    text = text.strip()
    for prefix in _PEER_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
    head = text.split(":", 1)[0].split(" (", 1)[0].strip()
    if head in REASONS:
        return head
    lower = text.lower()
    if lower.startswith("wrong peer key"):
        return RejectReason.WRONG_PEER.value
    if lower.startswith("tls") or "certificate" in lower or "crust identity" in lower:
        return "tls"
    if lower.startswith("connection lost"):
        return "connection-lost"
    return "other"


def drop_reason(text: str) -> str:
    """C{closed} (the connection ended with messages queued), C{expired} (they waited too long), or C{other}."""
    if text.startswith("connection closed"):
        return "closed"
    if text.startswith("waited over"):
        return "expired"
    return "other"


def priority_label(priority: int) -> str:
    return str(priority) if priority < PRIORITY_LABELS else f"{PRIORITY_LABELS}+"


def path_kind(conn: "PeerConnection") -> str:
    """The label for how C{conn} was made (a member of L{PATH_KINDS}, or C{other})."""
    path = conn.path
    kind = path.kind if path is not None else ("direct" if conn.initiator else "incoming")
    return kind if kind in PATH_KINDS else "other"


def _kind_of(described: Any) -> str:
    """The path kind of a C{path_changed} event's description (a dict), as a label."""
    kind = described.get("kind") if isinstance(described, dict) else None
    return kind if kind in PATH_KINDS else "other"


class ServiceMetrics:
    """
    The metrics of one service: its registry, the counters fed by what
    happens, and the collector that reads the rest when scraped.

    It is an observer of the service (every event but C{new_message}, which
    it leaves alone: the messages are counted on the hot path already), a
    listener of its peer table and a watcher of its connect attempts.

    @ivar registry: the service's own C{CollectorRegistry}.
    @ivar sent_messages: by priority (0..255), the messages C{Service.send} took.
    @ivar sent_bytes: by priority, their bytes.
    @ivar received_ended: the messages, and their bytes, that connections
        received before they ended (those still open count their own).
    """

    new_message = None  # not told of each message (crust.observer.Observers.add)

    def __init__(self, service: "Service") -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)  # names checked, name[] filters work
        self._table = service.peers
        self.sent_messages = [0] * 256  # Service.send counts here: a list each, the hot path's cheapest
        self.sent_bytes = [0] * 256
        self.received_ended = [0, 0]
        self._promoted: "weakref.WeakSet[PeerConnection]" = weakref.WeakSet()
        self.handshakes = Counter(
            "crust_handshakes", "Secure handshakes that ended, by transport and outcome: active (the connection "
            "became a peer's active one), probe (a probe completed), duplicate (complete, but another connection "
            "to the peer was chosen), failed.", ["transport", "outcome"], registry=registry)
        self.handshake_failures = Counter(
            "crust_handshake_failures", "Handshakes that failed, by transport and reason.",
            ["transport", "reason"], registry=registry)
        self.closed = Counter(
            "crust_connections_closed", "Active connections that ended, by transport and reason.",
            ["transport", "reason"], registry=registry)
        self.connects = Counter(
            "crust_connect_attempts", "Connect attempts (Service.connect) that ended, by outcome and, for a "
            "success, the path of the connection (none for a failure).", ["outcome", "path"], registry=registry)
        self.connect_time = Histogram(
            "crust_connect_duration_seconds", "How long connect attempts took, by outcome.", ["outcome"],
            buckets=CONNECT_BUCKETS, registry=registry)
        self.legs = Counter(
            "crust_connect_strategies", "Each dial strategy's part in the connect attempts that ended: won (it "
            "made the connection), failed (everything it tried failed), other (still running when the attempt "
            "ended, or it made no connection of its own, as the rendezvous, which plans the punches).",
            ["strategy", "outcome"], registry=registry)
        self.dropped = Counter(
            "crust_messages_dropped", "Queued messages dropped, by priority and reason (expired: they waited "
            "longer than drop_after; closed: the connection ended).", ["priority", "reason"], registry=registry)
        self.dropped_bytes = Counter(
            "crust_message_bytes_dropped", "The bytes of the dropped messages, by priority and reason.",
            ["priority", "reason"], registry=registry)
        self.too_large = Counter(
            "crust_messages_too_large", "Sends refused for being over max_message_size.", registry=registry)
        self.bootstraps = Counter(
            "crust_bootstraps", "Bootstraps of ours that ended, by outcome (connected, failed).", ["outcome"],
            registry=registry)
        self.bootstrap_accepts = Counter(
            "crust_bootstrap_accepts", "Peers that bootstrapped off us, by the role they hold.", ["role"],
            registry=registry)
        self.path_changes = Counter(
            "crust_path_changes", "A peer's connection moved to another path (a handover, or back to a "
            "standby), by the path kinds before and after.", ["before", "after"], registry=registry)
        self.circuits_closed = Counter(
            "crust_relay_circuits_closed", "Relayed circuits we are an end of that closed, by reason.",
            ["reason"], registry=registry)
        self.listener_failures = Counter(
            "crust_listener_failures", "Listeners that could not start, by transport.", ["transport"],
            registry=registry)
        for outcome in ("success", "failure"):
            self.connect_time.labels(outcome)
        for outcome in ("connected", "failed"):
            self.bootstraps.labels(outcome)
        self.too_large.inc(0)
        registry.register(ServiceCollector(service, self))
        service.add_observer(self)
        service.peers.listen(self)
        service.connector.watch(self.attempt_ended)

    # -- the peer table (PeerListener) ----------------------------------------------------

    def peer_promoted(self, conn: "PeerConnection", peer_id: Any) -> None:
        if conn not in self._promoted:  # (a standby becomes active again: told twice)
            self._promoted.add(conn)
            self.handshakes.labels(conn.transport_name, "active").inc()

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        messages, nbytes = conn.received
        self.received_ended[0] += messages
        self.received_ended[1] += nbytes
        transport = conn.transport_name
        code = reason_code(reason)
        if conn in self._promoted:
            self.closed.labels(transport, code).inc()
        elif code == CloseReason.PROBE_DONE.value:
            self.handshakes.labels(transport, "probe").inc()
        elif code == CloseReason.DUPLICATE.value:
            self.handshakes.labels(transport, "duplicate").inc()
        else:
            self.handshakes.labels(transport, "failed").inc()
            self.handshake_failures.labels(transport, code).inc()

    # -- connect attempts (Connector.watch) -------------------------------------------------

    def attempt_ended(self, attempt: "ConnectAttempt", seconds: float) -> None:
        winner = None
        if attempt.error is None:
            outcome = "success"
            conn = self._table.active.get(attempt.peer_id)
            path = path_kind(conn) if conn is not None else "other"
            winner = conn.path.strategy if conn is not None and conn.path is not None else None
        else:
            outcome, path = "failure", "none"
        self.connects.labels(outcome, path).inc()
        self.connect_time.labels(outcome).observe(max(0.0, seconds))
        targets: dict[str, list[Any]] = {}  # a strategy may have several legs (the rendezvous adds some)
        for leg in attempt.legs:
            targets.setdefault(leg.name, []).extend(leg.targets)
        for name in set(attempt.started):
            if name == winner:
                result = "won"
            elif all(target in attempt.reasons for target in targets.get(name, ())):
                result = "failed"
            else:
                result = "other"
            self.legs.labels(name, result).inc()

    # -- observer events ------------------------------------------------------------------

    def message_dropped(self, peer_id: Any, priority: int, count: int, size: int, reason: str) -> None:
        labels = (priority_label(priority), drop_reason(reason))
        self.dropped.labels(*labels).inc(count)
        self.dropped_bytes.labels(*labels).inc(size)

    def message_too_large(self, peer_id: Any, size: int, limit: int) -> None:
        self.too_large.inc()

    def bootstrap_connect(self, peer_id: Any, address: Any) -> None:
        self.bootstraps.labels("connected").inc()

    def bootstrap_failed(self, reason: Any) -> None:
        self.bootstraps.labels("failed").inc()

    def bootstrap_accept(self, peer_id: Any, role: Any) -> None:
        value = getattr(role, "value", role)
        self.bootstrap_accepts.labels(value if value in (Role.NODE.value, Role.CLIENT.value) else "other").inc()

    def path_changed(self, peer_id: Any, old: Any, new: Any) -> None:
        self.path_changes.labels(_kind_of(old), _kind_of(new)).inc()

    def relay_circuit_closed(self, peer_id: Any, via: Any, reason: str) -> None:
        self.circuits_closed.labels(reason if reason in CIRCUIT_REASONS else "other").inc()

    def listener_failed(self, transport: str, reason: str) -> None:
        self.listener_failures.labels(transport if transport in ("tcp", "udp") else "other").inc()

    def relay_circuit_opened(self, peer_id: Any, via: Any) -> None: ...  # crust_relay_end_circuits counts them
    def listener_started(self, address: Any) -> None: ...
    def connect_success(self, peer_id: Any) -> None: ...
    def connect_failure(self, peer_id: Any, reason: Any) -> None: ...
    def lost_peer(self, peer_id: Any, reason: str) -> None: ...


_HANDSHAKE_DONE = (HandshakeState.ACTIVE, HandshakeState.PROBED, HandshakeState.CLOSED)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled(family: Any, rows: Iterable[tuple[Iterable[str], float]]) -> Any:
    for labels, value in rows:
        family.add_metric(list(labels), value)
    return family


class ServiceCollector:
    """
    What a service's layers keep, read when its registry is scraped (a
    C{prometheus_client} custom collector: C{collect()} yields the families).
    Call it on the reactor thread, as L{MetricsPage} does: it reads live state.
    """

    def __init__(self, service: "Service", metrics: ServiceMetrics) -> None:
        self._service = service
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        svc = self._service
        info = GaugeMetricFamily("crust_info", "This crust: its version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._connections(svc)
        yield from self._traffic(svc)
        yield from self._punch(svc.punch)
        yield from self._relay(svc.relay)
        if svc.turn is not None:
            yield from self._turn(svc.turn)
        if svc.udp_endpoint is not None:
            yield from self._udp(svc.udp_endpoint)
        if svc.quic is not None:
            yield from self._quic(svc.quic)
        yield from self._port_mapping(svc.port_mapper)

    def _connections(self, svc: "Service") -> Iterator[Metric]:
        table = svc.peers
        by_path: dict[tuple[str, str], int] = {}
        for conn in table.active.values():
            key = (conn.transport_name, path_kind(conn))
            by_path[key] = by_path.get(key, 0) + 1
        yield _labelled(GaugeMetricFamily(
            "crust_connections", "Active connections (one per connected peer), by transport and path kind.",
            labels=["transport", "path"]), ((k, v) for k, v in sorted(by_path.items())))
        yield GaugeMetricFamily("crust_peers", "Peers with an active connection that is not closing.",
                                value=sum(1 for conn in table.active.values() if not conn.closing))
        yield GaugeMetricFamily(
            "crust_handshakes_running", "Connections whose secure handshake is under way.",
            value=sum(1 for conn in table.connections if conn.handshake.state not in _HANDSHAKE_DONE))
        queued = {"urgent": [0, 0], "bulk": [0, 0]}
        for conn in table.connections:
            for lane, queues in (("urgent", conn.queues), ("bulk", conn.bulk_queues)):
                queued[lane][0] += queues.size
                queued[lane][1] += queues.count
        yield _labelled(GaugeMetricFamily(
            "crust_send_queue_bytes", "Message bytes waiting in the send queues of every connection, by lane "
            "(bulk: priority 2 and more over QUIC; everything else is urgent).", labels=["lane"]),
            (([lane], v[0]) for lane, v in queued.items()))
        yield _labelled(GaugeMetricFamily(
            "crust_send_queue_frames", "Frames waiting in the send queues of every connection, by lane.",
            labels=["lane"]), (([lane], v[1]) for lane, v in queued.items()))
        yield GaugeMetricFamily("crust_connect_attempts_running", "Connect attempts under way.",
                                value=len(svc.connector.attempts))
        yield GaugeMetricFamily("crust_bootstrap_cache_peers", "Peers in the bootstrap cache.",
                                value=len(svc.bootstrap_cached_peers()))

    def _traffic(self, svc: "Service") -> Iterator[Metric]:
        metrics = self._metrics
        messages: dict[str, int] = {}
        nbytes: dict[str, int] = {}
        for priority, count in enumerate(metrics.sent_messages):
            if count:
                label = priority_label(priority)
                messages[label] = messages.get(label, 0) + count
                nbytes[label] = nbytes.get(label, 0) + metrics.sent_bytes[priority]
        yield _labelled(CounterMetricFamily(
            "crust_messages_sent", "Messages the application sent (queued or written), by priority.",
            labels=["priority"]), (([p], v) for p, v in messages.items()))
        yield _labelled(CounterMetricFamily(
            "crust_message_bytes_sent", "The bytes of the messages sent, by priority.", labels=["priority"]),
            (([p], v) for p, v in nbytes.items()))
        received, received_bytes = metrics.received_ended
        for conn in svc.peers.connections:
            messages_in, bytes_in = conn.received
            received += messages_in
            received_bytes += bytes_in
        yield _counter("crust_messages_received", "Messages received (the wire does not carry their priority).",
                       received)
        yield _counter("crust_message_bytes_received", "The bytes of the messages received.", received_bytes)

    def _punch(self, manager: Any) -> Iterator[Metric]:
        counters = manager.counters
        yield _labelled(CounterMetricFamily(
            "crust_punch_exchanges", "Hole-punching exchanges, by role: initiator (we asked, through a "
            "rendezvous), responder (a peer asked us).", labels=["role"]),
            ((["initiator"], counters["exchanges"]), (["responder"], counters["answered"])))
        yield _labelled(CounterMetricFamily(
            "crust_punch_requests_ignored", "Rendezvous envelopes we ignored, by reason (invalid: did not open "
            "or check out; rate-limited).", labels=["reason"]),
            ((["invalid"], counters["dropped"]), (["rate-limited"], counters["rate_limited"])))
        yield _labelled(CounterMetricFamily(
            "crust_rendezvous_events", "What we did as a rendezvous and its user, by event (the rendezvous' "
            "counters: queries_answered, forwarded, forward_refused, delivered, rate_limited, malformed).",
            labels=["event"]), (([name], value) for name, value in sorted(manager.rendezvous.counters.items())))
        if manager.udp is not None:
            yield _labelled(CounterMetricFamily(
                "crust_punch_udp_checks", "UDP hole-punching checks and their answers, by event (the UDP "
                "puncher's counters).", labels=["event"]),
                (([event], value) for event, value in sorted(manager.udp.counters.items())))

    def _relay(self, relay: Any) -> Iterator[Metric]:
        server, ends = relay.server, relay.ends
        counters = server.counters
        yield GaugeMetricFamily("crust_relay_circuits_open", "Circuits we relay for others now.",
                                value=server.circuits)
        yield _counter("crust_relay_circuits_served", "Circuits we relayed for others (opened).",
                       counters["circuits_total"])
        yield _counter("crust_relay_bytes", "Bytes we relayed for others (both directions).",
                       counters["bytes_relayed"])
        yield _labelled(CounterMetricFamily(
            "crust_relay_served_ends", "Circuits we relayed, or were asked to, that did not run their course, by "
            "reason: refused (at OPEN), limit (they reached a relay limit).", labels=["reason"]),
            ((["refused"], counters["refused"]), (["limit"], counters["limit_closed"])))
        yield _counter("crust_relay_frames_dropped", "Relay frames we dropped (before a circuit was ready, or "
                       "after its end).", counters["dropped"])
        yield GaugeMetricFamily("crust_relay_circuit_ends", "Relayed circuits we are an end of now.",
                                value=ends.circuits)
        yield _labelled(CounterMetricFamily(
            "crust_relay_end_circuits", "Relayed circuits as an end, by outcome: opened (as the side that "
            "connects), accepted (invited), refused (invitations we refused), failed (openings that failed).",
            labels=["outcome"]), (([name], value) for name, value in sorted(ends.counters.items())))
        splicer, splice = getattr(relay, "splicer", None), getattr(ends, "splice", None)
        if splicer is not None:
            yield _labelled(CounterMetricFamily(
                "crust_relay_splices", "Circuits we relay that were offered splicing, and the connections that "
                "came for it, by outcome: spliced, fell_back (on frames after all), refused (a bad, unknown, used "
                "or expired token).", labels=["outcome"]),
                (([name], value) for name, value in sorted(splicer.counters.items())))
        if splice is not None:
            yield _labelled(CounterMetricFamily(
                "crust_relay_end_splices", "Relayed circuits as an end that the relay offered to splice, by "
                "outcome: spliced, fell_back (on frames after all).", labels=["outcome"]),
                (([name], value) for name, value in sorted(splice.counters.items())))

    def _turn(self, turn: Any) -> Iterator[Metric]:
        states: dict[str, int] = {}
        totals: dict[str, int] = {}
        for client in turn.clients:
            states[client.state.value] = states.get(client.state.value, 0) + 1
            for name, value in client.counters.items():
                totals[name] = totals.get(name, 0) + value
        yield _labelled(GaugeMetricFamily(
            "crust_turn_clients", "TURN clients (one per configured server), by state (allocated: it holds a "
            "relayed address).", labels=["state"]),
            (([state], n) for state, n in sorted(states.items())))
        yield _counter("crust_turn_allocations", "TURN allocations made.", totals.get("allocations", 0))
        yield _labelled(CounterMetricFamily(
            "crust_turn_failures", "TURN requests that failed, by kind (error: an error response; timeout).",
            labels=["kind"]), ((["error"], totals.get("errors", 0)), (["timeout"], totals.get("timeouts", 0))))
        yield _labelled(CounterMetricFamily(
            "crust_turn_relayed_bytes", "Bytes through our TURN allocations, by direction.", labels=["direction"]),
            ((["in"], totals.get("relayed_in_bytes", 0)), (["out"], totals.get("relayed_out_bytes", 0))))

    def _udp(self, endpoint: Any) -> Iterator[Metric]:
        counters = endpoint.counters
        yield _labelled(CounterMetricFamily(
            "crust_udp_datagrams", "Datagrams on the node's UDP socket, by direction.", labels=["direction"]),
            ((["in"], counters["received"]), (["out"], counters["sent"])))
        yield _labelled(CounterMetricFamily(
            "crust_udp_bytes", "Bytes on the node's UDP socket, by direction.", labels=["direction"]),
            ((["in"], counters["received_bytes"]), (["out"], counters["sent_bytes"])))
        yield _counter("crust_udp_send_failures", "Datagrams the UDP socket could not send.",
                       counters["send_failures"])

    def _quic(self, dispatcher: Any) -> Iterator[Metric]:
        counters = dispatcher.counters
        yield _labelled(CounterMetricFamily(
            "crust_quic_initials_turned_away", "QUIC Initials that opened no connection, by fate (retry: answered "
            "with a Retry; undecryptable; invalid-token; refused-full: the inbound connections are all taken; "
            "refused-pending: too many handshakes pending).", labels=["fate"]),
            (([fate], counters[key]) for fate, key in (
                ("retry", "retries"), ("undecryptable", "undecryptable"), ("invalid-token", "invalid_token"),
                ("refused-full", "refused_full"), ("refused-pending", "refused_pending"))))
        yield GaugeMetricFamily("crust_quic_handshakes_pending", "Incoming QUIC handshakes under way.",
                                value=dispatcher.admission.pending)

    def _port_mapping(self, mapper: Any) -> Iterator[Metric]:
        mappings = GaugeMetricFamily("crust_port_mappings", "Ports the gateway forwards to us now, by transport "
                                     "and method (pcp, natpmp, upnp).", labels=["transport", "method"])
        outcomes = CounterMetricFamily("crust_port_mapping_requests", "Port-mapping requests (mappings and "
                                       "renewals), by method and outcome (granted, failed, no-answer).",
                                       labels=["method", "outcome"])
        if mapper is not None:
            found: dict[tuple[str, str], int] = {}
            for mapping in mapper.mappings.values():
                key = (mapping.transport, mapping.method)
                found[key] = found.get(key, 0) + 1
            _labelled(mappings, sorted(found.items()))
            _labelled(outcomes, sorted(mapper.outcomes.items()))
        yield mappings
        yield outcomes


class MetricsPage(Resource):
    """
    C{/metrics}: a registry in Prometheus' text format (or OpenMetrics, when
    the scraper asks for it), rendered on the reactor thread.

    (C{prometheus_client.twisted.MetricsResource} runs its WSGI application
    in the global reactor's thread pool: the collectors would then read the
    node's state from another thread while the reactor changes it.)
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        encoder, content_type = choose_encoder(
            (request.getHeader(b"accept") or b"").decode("latin-1"))
        registry: Any = self.registry
        names = [n.decode("utf-8", "replace") for n in (request.args or {}).get(b"name[]", [])]
        if names:
            registry = registry.restricted_registry(names)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(registry)


def metrics_site(registry: CollectorRegistry) -> Any:
    """A C{twisted.web} site serving C{registry} at C{/metrics} (and nothing else)."""
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"metrics", MetricsPage(registry))
    site = Site(root)
    site.displayTracebacks = False
    return site


def listen_metrics(reactor: Any, description: str, registry: CollectorRegistry) -> Any:
    """
    Serve C{registry} at C{/metrics} on the server endpoint C{description}
    (C{twisted.internet.endpoints.serverFromString}: C{tcp:9464:interface=127.0.0.1}).
    Returns the Deferred of the endpoint's C{listen} (it fires with the
    listening port).

    @raise ValueError: C{description} is not a server endpoint description.
    """
    from twisted.internet.endpoints import serverFromString

    return serverFromString(reactor, description).listen(metrics_site(registry))
