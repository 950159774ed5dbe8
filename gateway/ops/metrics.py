"""Prometheus metrics: the core's news counted, the gateway's state read at scrape time.

Three parts, one registry per service (never the global one, so a test can run several):

- ``MetricsSink`` (an EventSink) counts the core's notices into plain ints keyed by their label
  values. It runs on the transaction path, so an event costs one dict lookup and an int add:
  no locks, no label validation, no string building (prometheus_client's own Counter child
  takes a lock per ``inc()``, several times the cost; see docs/operations.md).
- ``GatewayCollector`` (a prometheus_client custom collector) turns those counts, and what the
  core, the links, the terminal listener, the journal and the MQTT publisher say *now*, into
  metric families when someone scrapes.
- ``MetricsEndpoint`` (a Component) serves ``GET /metrics`` from a tiny HTTP server on the
  event loop. On the loop, the collector reads the loop's own state (the core's dicts, the
  links) consistently and without locks; prometheus_client's thread server would read it from
  another thread while it changes. A scrape takes the loop for about a millisecond, every 15 s.

Labels are low-cardinality by construction: MTI (normalised, see ``mti_label``), outcome,
reason, result, link number, error kind. Never a PAN, STAN, RRN or terminal id.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gateway.config import parse_hostport
from gateway.core import notices
from gateway.core.engine import GatewayCore
from gateway.core.records import ReversalReason
from gateway.ops.gc_pauses import PAUSES
from gateway.wire.dialect import Dialect

log = structlog.get_logger("gateway.metrics")

PREFIX = "iso_gateway_"

# Outcomes of transaction_completed (gateway/core/notices.py) seeded at 0 for the dialect's
# reversible MTIs, so that rate() and increase() see the first timeout after a start.
SEEDED_OUTCOMES = ("approved", "declined", "timeout", "link_down", "no_link")
REVERSAL_RESULTS = {
    notices.REVERSAL_OWED: "owed",
    notices.REVERSAL_ACKNOWLEDGED: "acknowledged",
    notices.REVERSAL_FAILED: "failed",
    notices.REVERSAL_CANCELLED: "cancelled",
    notices.REVERSAL_REQUEUED: "requeued",
}
REVERSAL_REASONS = tuple(reason.value for reason in ReversalReason)
UNMATCHED_REASONS = ("no_request", "not_a_response", "already_answered", "reversed_before_restart")
UNDELIVERABLE_OUTCOMES = ("closed", "write_failed")

# Seconds. The acquirer answers in tens to hundreds of milliseconds; the gateway's own share
# (decode, journal commit, encode) should stay within a few milliseconds.
ROUND_TRIP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
GATEWAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# MTI labels: version 0-2, class authorization/financial/reversal/network management, function
# request to advice response, origin acquirer (+repeat) or issuer (+repeat). At most 192 values;
# whatever a terminal makes up beyond that is "other".
_MTI_CLASSES = frozenset("1248")


def mti_label(mti: str) -> str:
    if (
        len(mti) == 4
        and mti.isascii()
        and mti[0] in "012"
        and mti[1] in _MTI_CLASSES
        and mti[2] in "0123"
        and mti[3] in "0123"
    ):
        return mti
    return "other"


class Histogram:
    """Bucket counts and a sum: ``observe`` is one bisect and two adds (no lock)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            buckets.append((str(float(bound)), cumulative))
        buckets.append(("+Inf", cumulative + self.counts[-1]))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class MetricsSink:
    """Counts the core's notices. ``notify`` is O(1): one dict lookup for the kind, one for
    the label values. Unknown kinds are ignored (new notices must not break the gateway)."""

    def __init__(self, dialect: Dialect) -> None:
        self.requests: dict[tuple[str, str], int] = {
            (mti, outcome): 0
            for mti in sorted(dialect.reversible_mtis)
            for outcome in SEEDED_OUTCOMES
        }
        self.reversals: dict[tuple[str, str], int] = {
            (reason, result): 0
            for reason in REVERSAL_REASONS
            for result in REVERSAL_RESULTS.values()
        }
        self.reversal_attempts: dict[str, int] = dict.fromkeys(REVERSAL_REASONS, 0)
        self.late_responses = 0
        self.unmatched_responses: dict[str, int] = dict.fromkeys(UNMATCHED_REASONS, 0)
        self.unmatched_approvals = 0
        self.undeliverable_responses: dict[str, int] = dict.fromkeys(UNDELIVERABLE_OUTCOMES, 0)
        self.round_trip = Histogram(ROUND_TRIP_BUCKETS)
        self.gateway_added = Histogram(GATEWAY_BUCKETS)
        self.commit_latency = Histogram(COMMIT_BUCKETS)
        self.commit_batch = Histogram(BATCH_BUCKETS)
        self._mti_labels: dict[str, str] = {}
        self._handlers: dict[str, Callable[[str, Mapping[str, Any]], None]] = {
            notices.TRANSACTION_COMPLETED: self._transaction,
            notices.DUPLICATE_REQUEST: self._duplicate,
            notices.REQUEST_REJECTED: self._rejected,
            notices.TERMINAL_REVERSAL: self._terminal_reversal,
            notices.REVERSAL_SENT: self._reversal_attempt,
            notices.LATE_RESPONSE: self._late,
            notices.UNMATCHED_RESPONSE: self._unmatched,
            notices.UNDELIVERABLE_RESPONSE: self._undeliverable,
            **dict.fromkeys(REVERSAL_RESULTS, self._reversal),
        }

    # EventSink ------------------------------------------------------------------------------

    def notify(self, kind: str, data: Mapping[str, Any]) -> None:
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(kind, data)

    def on_commit_stats(self, stats: Any) -> None:
        """The journal's StatsListener: one group commit (latency in seconds, rows written)."""
        self.commit_latency.observe(stats.latency)
        self.commit_batch.observe(stats.records)

    # per kind -------------------------------------------------------------------------------

    def _count_request(self, mti: Any, outcome: str) -> None:
        label = self._mti_labels.get(mti) or self._new_mti_label(mti)
        key = (label, outcome)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1

    def _new_mti_label(self, mti: Any) -> str:
        label = mti_label(mti) if isinstance(mti, str) else "other"
        if len(self._mti_labels) < 10_000:  # made-up MTIs must not grow the cache forever
            self._mti_labels[mti] = label
        return label

    def _transaction(self, kind: str, data: Mapping[str, Any]) -> None:
        self._count_request(data.get("mti"), data.get("outcome") or "unknown")
        added = data.get("gateway_seconds")
        if added is not None:
            self.gateway_added.observe(added)
            round_trip = data.get("acquirer_seconds")
            if round_trip is not None:
                self.round_trip.observe(round_trip)

    def _duplicate(self, kind: str, data: Mapping[str, Any]) -> None:
        self._count_request(data.get("mti"), "duplicate")

    def _rejected(self, kind: str, data: Mapping[str, Any]) -> None:
        self._count_request(data.get("mti"), "rejected")

    def _terminal_reversal(self, kind: str, data: Mapping[str, Any]) -> None:
        # forwarded, merged (with the gateway's own reversal), answered, no_link
        self._count_request(data.get("mti"), data.get("outcome") or "unknown")

    def _reversal(self, kind: str, data: Mapping[str, Any]) -> None:
        key = (data.get("reason") or "unknown", REVERSAL_RESULTS[kind])
        self.reversals[key] = self.reversals.get(key, 0) + 1

    def _reversal_attempt(self, kind: str, data: Mapping[str, Any]) -> None:
        reason = data.get("reason") or "unknown"
        self.reversal_attempts[reason] = self.reversal_attempts.get(reason, 0) + 1

    def _late(self, kind: str, data: Mapping[str, Any]) -> None:
        self.late_responses += 1

    def _unmatched(self, kind: str, data: Mapping[str, Any]) -> None:
        reason = data.get("reason") or "unknown"
        self.unmatched_responses[reason] = self.unmatched_responses.get(reason, 0) + 1
        if data.get("may_hold"):
            self.unmatched_approvals += 1

    def _undeliverable(self, kind: str, data: Mapping[str, Any]) -> None:
        outcome = data.get("outcome") or "unknown"
        self.undeliverable_responses[outcome] = self.undeliverable_responses.get(outcome, 0) + 1


# What the collector reads from the service (gateway/service.py), as protocols: ops sits below
# the service in the layering and must not import it.


class _Link(Protocol):
    @property
    def is_up(self) -> bool: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def echo_failures(self) -> int: ...


class _Counters(Protocol):
    @property
    def terminal_connections_total(self) -> int: ...
    @property
    def terminal_format_errors(self) -> Mapping[str, int]: ...
    @property
    def acquirer_format_errors(self) -> int: ...
    @property
    def sends_dropped_link_down(self) -> int: ...
    @property
    def sends_dropped_stale(self) -> int: ...


class _TerminalServer(Protocol):
    @property
    def refused(self) -> int: ...
    @property
    def cut(self) -> Mapping[str, int]: ...
    @property
    def tls_handshakes_failed(self) -> int: ...


class MeteredService(Protocol):
    @property
    def core(self) -> GatewayCore | None: ...
    @property
    def dialect(self) -> Dialect: ...
    @property
    def counters(self) -> _Counters: ...
    @property
    def links(self) -> Mapping[int, _Link]: ...
    @property
    def terminals(self) -> _TerminalServer: ...
    @property
    def journal(self) -> object: ...
    def status(self) -> dict[str, Any]: ...


def _version() -> str:
    try:
        return metadata.version("iso-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class GatewayCollector:
    """Builds every ``iso_gateway_*`` family at scrape time (docs/operations.md lists them)."""

    def __init__(
        self,
        service: MeteredService,
        sink: MetricsSink,
        *,
        mqtt: Callable[[], object | None] | None = None,
    ) -> None:
        self.service = service
        self.sink = sink
        # Returns the MQTT publisher (or None); read with getattr: ``connected``, ``dropped``.
        self.mqtt = mqtt
        self._version = _version()

    def collect(self) -> Iterator[Metric]:
        # Not started yet (components start first): no core state to report.
        status = self.service.status() if self.service.core is not None else None
        yield from self._info()
        yield from self._transactions()
        yield from self._reversals()
        if status is not None:
            yield from self._state(status)
        yield from self._links()
        yield from self._terminals(status)
        yield from self._journal()
        yield from self._mqtt()
        yield GaugeMetricFamily(
            PREFIX + "gc_frozen_objects",
            "Objects out of the cyclic collector's sight (alive since start-up or past a young "
            "pass); follows traffic x duplicate window.",
            value=gc.get_freeze_count(),
        )
        yield HistogramMetricFamily(
            PREFIX + "gc_pause_seconds",
            "Passes of the cyclic garbage collector, by how long each stopped the event loop.",
            buckets=PAUSES.cumulative(),
            sum_value=PAUSES.total_seconds,
        )

    def _info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "Gateway version and dialect; always 1.",
            labels=["version", "dialect"],
        )
        info.add_metric([self._version, self.service.dialect.name], 1)
        yield info

    def _transactions(self) -> Iterator[Metric]:
        sink = self.sink
        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Terminal requests by MTI and outcome (approved, declined, answered, timeout, "
            "link_down, no_link, overloaded, shutting_down, no_stan, duplicate, rejected, "
            "format_error; a terminal's 0400: forwarded, merged, answered, no_link).",
            labels=["mti", "outcome"],
        )
        for (mti, outcome), count in sorted(sink.requests.items()):
            requests.add_metric([mti, outcome], count)
        # A message that does not decode has no MTI worth a label.
        malformed = self.service.counters.terminal_format_errors.get("message", 0)
        requests.add_metric(["other", "format_error"], malformed)
        yield requests
        yield sink.round_trip.family(
            PREFIX + "acquirer_round_trip_seconds",
            "From a request's bytes written to the acquirer to its answer handled.",
        )
        yield sink.gateway_added.family(
            PREFIX + "gateway_added_latency_seconds",
            "From a request's frame read from the terminal to its bytes written to the "
            "acquirer (decode, journal commit, encode).",
        )
        yield _counter(
            "late_responses",
            "Acquirer answers after the gateway gave up (never forwarded).",
            sink.late_responses,
        )
        yield _counter_by(
            "unmatched_responses",
            "Acquirer messages that match no request, by reason.",
            "reason",
            sink.unmatched_responses,
        )
        yield _counter(
            "unmatched_approvals",
            "Approvals of authorizations that match no request: funds may be held that no "
            "terminal was told about, and the gateway cannot reverse them.",
            sink.unmatched_approvals,
        )
        yield _counter_by(
            "undeliverable_responses",
            "Approvals that could not be written to the terminal (then reversed), by outcome.",
            "outcome",
            sink.undeliverable_responses,
        )

    def _reversals(self) -> Iterator[Metric]:
        sink = self.sink
        reversals = CounterMetricFamily(
            PREFIX + "reversals",
            "Reversals by reason and result (owed, acknowledged, failed, cancelled, requeued).",
            labels=["reason", "result"],
        )
        for (reason, result), count in sorted(sink.reversals.items()):
            reversals.add_metric([reason, result], count)
        yield reversals
        yield _counter_by(
            "reversal_attempts",
            "Reversal messages sent to the acquirer (first attempts and repeats), by reason.",
            "reason",
            sink.reversal_attempts,
        )

    def _state(self, stats: Mapping[str, Any]) -> Iterator[Metric]:
        gauges = (
            ("in_flight_requests", "in_flight", "Requests forwarded and awaiting the acquirer."),
            (
                "authorizations_open",
                "authorizations_open",
                "Journaled authorizations that may still hold funds (in flight, approved, "
                "reversing).",
            ),
            ("reversals_owed", "reversals_owed", "Reversals owed or sent, not yet acknowledged."),
            (
                "reversals_waiting_for_link",
                "reversals_waiting_for_link",
                "Owed reversals waiting for an acquirer link.",
            ),
            (
                "reversals_failed",
                "reversals_failed",
                "Reversals given up on: kept for an operator (`iso-gateway saf retry`).",
            ),
        )
        for name, key, documentation in gauges:
            yield GaugeMetricFamily(PREFIX + name, documentation, value=stats.get(key, 0))
        core = self.service.core
        age = core.oldest_owed_reversal_age(time.time()) if core is not None else None
        yield GaugeMetricFamily(
            PREFIX + "oldest_owed_reversal_age_seconds",
            "Age of the oldest reversal owed or sent (0 when none).",
            value=max(0.0, age or 0.0),
        )

    def _links(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            PREFIX + "acquirer_link_up", "1 when the acquirer link is up.", labels=["link"]
        )
        reconnects = CounterMetricFamily(
            PREFIX + "acquirer_reconnects",
            "Times the acquirer link was lost and connected again.",
            labels=["link"],
        )
        echo_failures = CounterMetricFamily(
            PREFIX + "acquirer_echo_failures",
            "Echo tests left unanswered (the link is then dropped).",
            labels=["link"],
        )
        for link_id, link in sorted(self.service.links.items()):
            label = [str(link_id)]
            up.add_metric(label, 1 if link.is_up else 0)
            reconnects.add_metric(label, link.reconnects)
            echo_failures.add_metric(label, link.echo_failures)
        yield up
        yield reconnects
        yield echo_failures
        counters = self.service.counters
        dropped = CounterMetricFamily(
            PREFIX + "acquirer_sends_dropped",
            "Messages not written: their link was down, or (journal_late) their journal commit "
            "came after the acquirer timeout. The core reverses them.",
            labels=["reason"],
        )
        dropped.add_metric(["link_down"], counters.sends_dropped_link_down)
        dropped.add_metric(["journal_late"], counters.sends_dropped_stale)
        yield dropped
        errors = CounterMetricFamily(
            PREFIX + "format_errors",
            "Frames or messages that could not be read, by side and kind.",
            labels=["side", "kind"],
        )
        terminal_errors = {"message": 0, **counters.terminal_format_errors}
        for kind, count in sorted(terminal_errors.items()):
            errors.add_metric(["terminal", kind], count)
        errors.add_metric(["acquirer", "any"], counters.acquirer_format_errors)
        yield errors

    def _terminals(self, status: Mapping[str, Any] | None) -> Iterator[Metric]:
        counters = self.service.counters
        open_now = status.get("terminal_connections", 0) if status is not None else 0
        yield GaugeMetricFamily(
            PREFIX + "terminal_connections_open", "Terminal connections open now.", value=open_now
        )
        yield _counter(
            "terminal_connections",
            "Terminal connections accepted since start.",
            counters.terminal_connections_total,
        )
        terminals = self.service.terminals
        yield _counter(
            "terminal_connections_refused",
            "Terminal connections refused at gateway.max_connections.",
            terminals.refused,
        )
        cut = CounterMetricFamily(
            PREFIX + "terminal_connections_cut",
            "Terminal connections the gateway cut: write_timeout (it read nothing), "
            "frame_timeout (a frame left half sent), idle_timeout.",
            labels=["reason"],
        )
        for reason in ("write_timeout", "frame_timeout", "idle_timeout"):
            cut.add_metric([reason], terminals.cut.get(reason, 0))
        yield cut
        yield _counter(
            "terminal_tls_handshakes_failed",
            "Terminals that failed the TLS handshake (gateway.tls_cert set): plain TCP, a "
            "certificate refused, none under mutual TLS, or too slow.",
            terminals.tls_handshakes_failed,
        )

    def _journal(self) -> Iterator[Metric]:
        sink = self.sink
        yield sink.commit_latency.family(
            PREFIX + "journal_commit_seconds", "Duration of one journal group commit."
        )
        yield sink.commit_batch.family(
            PREFIX + "journal_commit_records", "Records written by one journal group commit."
        )
        errors = getattr(self.service.journal, "commit_errors", None)
        if isinstance(errors, int):
            yield _counter(
                "journal_commit_errors", "Journal commits that failed (and were retried).", errors
            )

    def _mqtt(self) -> Iterator[Metric]:
        publisher = self.mqtt() if self.mqtt is not None else None
        if publisher is None:  # no MQTT configured: no series, so no MQTT alert either
            return
        connected = getattr(publisher, "connected", None)
        if connected is not None:
            yield GaugeMetricFamily(
                PREFIX + "mqtt_connected",
                "1 when the MQTT publisher is connected to its broker.",
                value=1 if connected else 0,
            )
        dropped = getattr(publisher, "dropped", None)
        if dropped is not None:
            yield _counter(
                "mqtt_events_dropped",
                "Events not published: the queue was full (while the broker is away, events queue "
                "up to mqtt.queue_size).",
                dropped,
            )


def _counter(name: str, documentation: str, count: int) -> Metric:
    family = CounterMetricFamily(PREFIX + name, documentation)
    family.add_metric([], count)
    return family


def _counter_by(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


# the endpoint ------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_READ_TIMEOUT = 10.0
_MAX_HEADERS = 100


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.1 from the event loop (a Component of the app).

    One request per connection (``Connection: close``); text format 0.0.4, or OpenMetrics
    when the scraper asks for it (Prometheus does).
    """

    def __init__(
        self,
        listen: str,
        service: MeteredService,
        *,
        mqtt: Callable[[], object | None] | None = None,
    ) -> None:
        self.host, self._port = parse_hostport(listen, what="metrics listen")
        self.sink = MetricsSink(service.dialect)
        self.collector = GatewayCollector(service, self.sink, mqtt=mqtt)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # process_* : CPU, memory, open files
        GCCollector(registry=self.registry)  # python_gc_* : passes per generation
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one when configured as 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        log.info("metrics_listening", address=f"{self.host}:{self.port}", path="/metrics")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type, as a scrape with this Accept gets it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, content_type = await asyncio.wait_for(
                self._respond(reader), _READ_TIMEOUT
            )
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that hangs up or sends garbage gets nothing more
        except Exception:
            log.exception("metrics_scrape_failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, bytes, str]:
        request_line = (await reader.readline()).decode("latin-1").split()
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            line = (await reader.readline()).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        text = "text/plain; charset=utf-8"
        if len(request_line) != 3:
            return 400, b"bad request\n", text
        method, target, _ = request_line
        if target.split("?", 1)[0] != "/metrics":
            return 404, b"not found: the metrics are at /metrics\n", text
        if method != "GET":
            return 405, b"use GET\n", text
        body, content_type = self.render(headers.get("accept", ""))
        return 200, body, content_type
