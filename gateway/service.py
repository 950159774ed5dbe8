"""The one place where the core meets the network, the journal and operations.

Everything the core decides comes back as commands; this module carries them out in order,
with one promise: a message goes to the acquirer only once every journal record emitted before
it is durable ("journal before you send"). Sends wait in a FIFO behind the journal's commit
sequence instead of awaiting per message, so the event loop never blocks and one group commit
releases a whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.config import GatewayConfig, parse_hostport
from gateway.core import notices
from gateway.core.commands import (
    Command,
    FindAuthorizations,
    ForwardToAcquirer,
    ForwardToTerminal,
    Notify,
    Persist,
    ReplyToTerminal,
    ReserveStans,
    SendToAcquirer,
)
from gateway.core.engine import GatewayCore
from gateway.core.events import (
    UNREADABLE,
    AcquirerResponse,
    AuthorizationsFound,
    DeliveryResult,
    Draining,
    Event,
    FieldsRead,
    LinkDown,
    LinkUp,
    ReversalRequeued,
    TerminalClosed,
    TerminalRequest,
)
from gateway.core.mti import classify
from gateway.core.stan import STAN_MAX, seed_after
from gateway.io.acquirer_link import AcquirerLink, LinkSettings
from gateway.io.tap import FrameTap
from gateway.io.terminals import ConnectionLimits, TerminalConnection, TerminalServer
from gateway.journal.base import Journal, JournalError
from gateway.ops.logging import log_context_var
from gateway.ops.sink import EventSink
from gateway.wire.codec import Codec, CodecError, FieldView, LazyFields
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame, FramingError, swap_tpdu

log = structlog.get_logger("gateway.service")
# Journal meta: the last STAN of the allocator's reserved block (see gateway/core/stan.py).
STAN_META_KEY = "last_stan"

REQUEUE_POLL_SECONDS = 1.0
# Seconds shutdown waits for the journal's last commit.
JOURNAL_FLUSH_AT_STOP = 5.0
# At stop, how long terminal reversals may still wait for their journal lookup (a read of an
# index: milliseconds). One not done by then is not journaled: its terminal repeats it.
LOOKUPS_AT_STOP = 2.0
PRUNE_EVERY_SECONDS = 3600.0

# Lines logged while a terminal's frame or an acquirer's message is handled carry conn= or
# link= (a ContextVar set and reset: ~0.4 µs a message, where bound_contextvars costs ~5 µs).
_LOG_CONN = log_context_var("conn")
_LOG_LINK = log_context_var("link")

# A forwarded request, as its transaction_completed notice names it (MTI, DE 41, DE 11), and
# when its frame arrived (perf_counter): for the latencies that notice carries.
_RequestKey = tuple[str, str | None, str | None]
_Arrival = tuple[_RequestKey, float]
_ANSWERED = frozenset({"approved", "declined", "answered"})

# How late a core timer may fire (see GatewayService._arm_timer). The core's timers are
# seconds long (acquirer and reversal timeouts, retry delays, the duplicate window).
TIMER_SLOT = 0.005


@dataclass
class ServiceCounters:
    """Plain counters the ops layer reads (metrics, `iso-gateway status`)."""

    terminal_connections_total: int = 0
    terminal_format_errors: dict[str, int] = field(default_factory=dict)
    acquirer_format_errors: int = 0
    sends_dropped_link_down: int = 0
    sends_dropped_stale: int = 0  # requests whose journal commit came after their timeout


class GatewayService:
    def __init__(
        self, config: GatewayConfig, dialect: Dialect, journal: Journal, sink: EventSink
    ) -> None:
        self.config = config
        self.dialect = dialect
        self.codec = Codec(dialect)
        self.journal = journal
        self.sink = sink
        self.counters = ServiceCounters()
        self._fields_read = FieldsRead.of(dialect)
        self.core: GatewayCore | None = None
        gateway = config.gateway
        limits = ConnectionLimits(
            max_connections=gateway.max_connections,
            write_timeout=gateway.write_timeout,
            frame_timeout=gateway.frame_timeout,
            idle_timeout=gateway.idle_timeout,
            tls_handshake_timeout=gateway.tls_handshake_timeout,
        )
        self.terminals = TerminalServer(dialect.framing, self, limits)
        addresses = [parse_hostport(a) for a in config.acquirer.addresses]
        link_settings = LinkSettings(
            addresses=addresses,
            connect_timeout=config.acquirer.connect_timeout,
            reconnect_min=config.acquirer.reconnect_min,
            reconnect_max=config.acquirer.reconnect_max,
            echo_interval=config.acquirer.echo_interval,
            echo_timeout=config.acquirer.echo_timeout,
            sign_on=config.acquirer.sign_on,
            own_frame_parts=config.acquirer.own_frame_parts(dialect.framing),
            # Certificates are read here, at start: a missing or bad file is a ConfigError.
            tls=config.acquirer.tls_context(),
            tls_server_name=config.acquirer.tls_server_name,
        )
        self._terminal_tls = gateway.tls_context()
        self.links = {
            link_id: AcquirerLink(link_id, link_settings, dialect.framing, self.codec, self)
            for link_id in range(1, config.acquirer.connections + 1)
        }
        self._held_sends: deque[tuple[int, int, Frame, _Arrival | None]] = deque()
        self._arrival: _Arrival | None = None  # the terminal request being dispatched
        # Forwarded requests awaiting their outcome: (arrived, written to the acquirer).
        # Bounded: an entry whose notice never comes (abandoned) is evicted oldest first.
        self._written_at: dict[_RequestKey, tuple[float, float]] = {}
        self._written_at_limit = 2 * config.acquirer.max_in_flight
        self._last_persist_seq = 0
        self._pending_events: deque[Event] = deque()
        self._timer: asyncio.TimerHandle | None = None
        # Timers run in a context of their own: call_later would otherwise copy the log
        # context (conn=, link=) of whichever message happened to arm them.
        self._timer_context = contextvars.Context()
        self._timer_deadline: float | None = None
        self._background: list[asyncio.Task[None]] = []
        self._lookups: set[asyncio.Task[None]] = set()  # FindAuthorizations, being read
        self._stopping = False  # past the grace period: nothing more reaches the core
        self._stopped = asyncio.Event()
        self.tap: FrameTap | None = None  # set by the capture recorder, when configured

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.start()
        authorizations, reversals = await self.journal.load_open()
        settings = self.config.core_settings()
        now = time.time()
        reversed_recently = await self.journal.load_reversed_since(now - settings.history_window)
        closed_recently = await self.journal.load_closed_since(now - settings.duplicate_window)
        next_txn_id, next_reversal_id = await self.journal.next_ids()
        last_stan = await self.journal.get_meta(STAN_META_KEY)
        self.core = GatewayCore(
            self.dialect,
            settings,
            now=now,
            open_authorizations=authorizations,
            open_reversals=reversals,
            reversed_recently=reversed_recently,
            closed_recently=closed_recently,
            next_txn_id=next_txn_id,
            next_reversal_id=next_reversal_id,
            stan_seed=seed_after(last_stan, int(now) % STAN_MAX + 1),
        )
        self.journal.on_commit(self._release_sends)
        if authorizations or reversals:
            log.info(
                "recovering", open_authorizations=len(authorizations), open_reversals=len(reversals)
            )
        self._run(self._core.recover)
        for link in self.links.values():
            link.start()
        host, port = parse_hostport(self.config.gateway.listen)
        await self.terminals.start(host, port, self._terminal_tls)
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._poll_requeued(), name="requeue-poll"),
            loop.create_task(self._prune_periodically(), name="prune"),
        ]
        log.info(
            "gateway_started",
            listen=f"{host}:{self.terminals.port}",
            dialect=self.dialect.name,
            terminal_tls=self._terminal_tls is not None,
            acquirer_tls=self.config.acquirer.tls,
        )

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then stop.

        Whatever is still owed stays in the journal: the next start reverses it.
        """
        if self._stopped.is_set() or self.core is None:
            return
        self.terminals.stop_accepting()
        self._dispatch(Draining())  # new requests on open connections: declined at once
        deadline = time.monotonic() + self.config.gateway.shutdown_grace
        while self._core.stats().get("in_flight", 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._lookups:  # terminal reversals waiting for the journal: tied before the end
            await asyncio.wait(self._lookups, timeout=LOOKUPS_AT_STOP)
            # One still reading is dropped (nothing of it was journaled): its terminal repeats
            # its reversal to the next process. It must not reach the core or a closed journal.
            for lookup in list(self._lookups):
                lookup.cancel()
            await asyncio.gather(*self._lookups, return_exceptions=True)
        # Past the grace: what still waits is declined to its terminal now and its reversal
        # journaled (and sent, if a link is still up, before the links stop).
        self._dispatch(Draining(final=True))
        self._stopping = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._timer is not None:
            self._timer.cancel()
        await self.terminals.close()
        try:
            # Bounded: a journal that cannot be written (disk full, locked) must not keep the
            # process from stopping. Sends still held then never leave: nothing was sent that
            # the journal does not know of.
            await asyncio.wait_for(self.journal.flush(), JOURNAL_FLUSH_AT_STOP)
        except (TimeoutError, JournalError) as error:
            log.error("journal_not_flushed_at_stop", error=str(error) or type(error).__name__)
        else:
            self._release_sends(self.journal.committed_seq)
        for link in self.links.values():
            await link.stop()
        try:
            await self.journal.close()
        except JournalError as error:  # what it could not write is lost; logged, not raised
            log.error("journal_close_failed", error=str(error))
        finally:
            stats = self._core.stats()
            log.info("gateway_stopped", **stats)
            self._stopped.set()

    @property
    def _core(self) -> GatewayCore:
        assert self.core is not None, "the service is not started"
        return self.core

    # the event loop of the core ---------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        self._run(lambda now: self._core.handle(event, now))

    def _run(self, step: Callable[[float], list[Command]]) -> None:
        now = time.time()
        self._execute(step(now))
        core = self._core
        while self._pending_events:
            self._execute(core.handle(self._pending_events.popleft(), now))
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self._core.next_deadline()
        if deadline is None:
            return
        armed = self._timer_deadline
        if armed is not None and armed <= deadline:
            return  # most calls (one per event): nothing earlier to wake up for
        # Wake up on a grid: every deadline in one slot fires in one wake-up, up to
        # TIMER_SLOT late. Each request's timers (acquirer timeout, end of its duplicate
        # window) fall due at the rate requests came in; one wake-up each cost more loop time
        # than the timers' own work (bench/README.md).
        if math.isfinite(deadline):  # an infinite reversal.expiry: a timer that never fires
            deadline = math.ceil(deadline / TIMER_SLOT) * TIMER_SLOT
        if armed is not None and armed <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            max(0.0, deadline - time.time()), self._on_timer, context=self._timer_context
        )
        self._timer_deadline = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self._run(self._core.on_timer)

    # commands ---------------------------------------------------------------------------

    def _execute(self, commands: Iterable[Command]) -> None:
        for command in commands:
            if isinstance(command, Persist):
                self._last_persist_seq = self.journal.put(command.record)
                if command.urgent:
                    self.journal.request_commit()
            elif isinstance(command, ForwardToAcquirer):
                frame = self._replaced(command.frame, command.replace)
                if frame is not None:
                    self._send_to_acquirer(command.link_id, frame, self._arrival)
            elif isinstance(command, SendToAcquirer):
                message = self._encode(command.mti, command.fields)
                if message is not None:
                    frame = Frame(message, command.tpdu, command.header)
                    self._send_to_acquirer(command.link_id, frame)
            elif isinstance(command, ForwardToTerminal):
                reply = self._replaced(command.frame, command.replace)
                self._send_to_terminal(command.conn_id, reply, command.delivery_ref)
            elif isinstance(command, ReplyToTerminal):
                message = self._encode(command.mti, command.fields)
                reply = None
                if message is not None:
                    tpdu = swap_tpdu(command.tpdu) if command.tpdu else b""
                    reply = Frame(message, tpdu, command.header)
                self._send_to_terminal(command.conn_id, reply, command.delivery_ref)
            elif isinstance(command, Notify):
                data = command.data
                if command.kind == notices.TRANSACTION_COMPLETED and self._written_at:
                    data = self._with_latencies(data)
                self.sink.notify(command.kind, data)
            elif isinstance(command, ReserveStans):
                # Like a Persist: what follows waits for it to be durable.
                self._last_persist_seq = self.journal.put_meta(STAN_META_KEY, command.last_stan)
            elif isinstance(command, FindAuthorizations):
                lookup = asyncio.get_running_loop().create_task(self._find_authorizations(command))
                self._lookups.add(lookup)
                lookup.add_done_callback(self._lookups.discard)

    async def _find_authorizations(self, command: FindAuthorizations) -> None:
        """Read what a terminal's reversal waits for, off the loop, and hand it to the core.
        A journal that cannot be read gives nothing: the reversal then goes as it is."""
        if self._stopping:
            return
        try:
            records = await self.journal.find_authorizations(command.terminal_id, command.stan)
        except Exception as error:
            log.error(
                "journal_lookup_failed",
                terminal_id=command.terminal_id,
                stan=command.stan,
                error=f"{type(error).__name__}: {error}",
            )
            records = []
        if self._stopping:  # the journal may be closed by now: the terminal repeats it
            return
        self._dispatch(AuthorizationsFound(command.terminal_id, command.stan, tuple(records)))

    def _send_to_acquirer(
        self, link_id: int, frame: Frame, arrival: _Arrival | None = None
    ) -> None:
        if self._held_sends or self.journal.committed_seq < self._last_persist_seq:
            self._held_sends.append((self._last_persist_seq, link_id, frame, arrival))
            self.journal.request_commit()
        else:
            self._write_to_link(link_id, frame, arrival)

    def _release_sends(self, committed_seq: int) -> None:
        """Journal commit callback (on the loop): what waited for durability goes now, in one
        system call per link, without waiting for the end of the loop iteration (by then the
        loop would have read and handled another round of requests first)."""
        held = self._held_sends
        if not held or held[0][0] > committed_seq:
            return
        stale_before = time.perf_counter() - self.config.acquirer.timeout
        while held and held[0][0] <= committed_seq:
            _, link_id, frame, arrival = held.popleft()
            if arrival is not None and arrival[1] < stale_before:
                # The journal was held up past the acquirer timeout: the core has declined
                # this request to its terminal (and owes a reversal the acquirer will answer
                # "unknown"). Sent now, it could be approved behind the terminal's back.
                self.counters.sends_dropped_stale += 1
                log.warning("request_not_sent_journal_late", link=link_id)
                continue
            self._write_to_link(link_id, frame, arrival)
        for link in self.links.values():
            if link.connection is not None:
                link.connection.flush()

    def _write_to_link(self, link_id: int, frame: Frame, arrival: _Arrival | None = None) -> None:
        link = self.links.get(link_id)
        if link is None or not link.send(frame):
            # The core hears LinkDown for this link and treats what it sent there as lost.
            self.counters.sends_dropped_link_down += 1
            return
        if arrival is not None:
            self._note_written(arrival)
        if self.tap is not None and link.connection is not None:
            connection = link.connection
            self.tap.frame(
                "acquirer", False, connection.local_address, connection.peer_address, frame
            )

    def _note_written(self, arrival: _Arrival) -> None:
        written_at = self._written_at
        if len(written_at) >= self._written_at_limit:
            del written_at[next(iter(written_at))]
        key, arrived = arrival
        written_at[key] = (arrived, time.perf_counter())

    def _with_latencies(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """Add to a transaction_completed notice the seconds the gateway held the request
        before writing it to the acquirer (journal commit included) and, when answered, the
        acquirer's round trip (written -> answer handled)."""
        key: _RequestKey = (data["mti"], data.get("terminal_id"), data.get("stan"))
        times = self._written_at.pop(key, None)
        if times is None:
            return data
        arrived, written = times
        timed = {**data, "gateway_seconds": written - arrived}
        if data.get("outcome") in _ANSWERED:
            timed["acquirer_seconds"] = time.perf_counter() - written
        return timed

    def _send_to_terminal(self, conn_id: int, frame: Frame | None, ref: int | None) -> None:
        conn = self.terminals.connections.get(conn_id)
        if frame is None or conn is None:
            ok = False
        elif ref is None:
            ok = conn.write_frame(frame)
        else:
            # An approval: the core hears how it went once the bytes actually left (end of
            # this loop iteration), or that they could not, and reverses it then.
            ok = conn.write_frame(frame, on_sent=functools.partial(self._delivered, ref))
        if ok and self.tap is not None:
            assert frame is not None and conn is not None
            self.tap.frame("terminal", False, conn.local_address, conn.peer_address, frame)
        if ref is not None and not ok:
            self._pending_events.append(DeliveryResult(ref, False))

    def _delivered(self, ref: int, sent: bool) -> None:
        self._dispatch(DeliveryResult(ref, sent))

    def _replaced(self, frame: Frame, replace: Mapping[str, str]) -> Frame | None:
        if not replace:
            return frame
        try:
            view = self.codec.scan(frame.message)
            message = frame.message
            for field_id, value in replace.items():
                message = view.replace(field_id, value)
                if len(replace) > 1:
                    view = self.codec.scan(message)
        except CodecError as error:
            log.error("field_rewrite_failed", error=str(error))
            return None
        return Frame(message, frame.tpdu, frame.header)

    def _encode(self, mti: str, fields: Mapping[str, str]) -> bytes | None:
        try:
            return self.codec.encode(mti, fields)
        except CodecError as error:
            log.error("message_not_encodable", mti=mti, error=str(error))
            return None

    # terminals (TerminalListener) -------------------------------------------------------

    def on_terminal_connected(self, conn: TerminalConnection) -> None:
        self.counters.terminal_connections_total += 1
        if self.tap is not None:
            self.tap.connection_opened("terminal", conn.local_address, conn.peer_address)

    def on_terminal_frame(self, conn: TerminalConnection, frame: Frame) -> None:
        arrived = time.perf_counter()
        if self.tap is not None:
            self.tap.frame("terminal", True, conn.local_address, conn.peer_address, frame)
        if frame.is_keepalive:
            return
        try:
            view = self.codec.scan(frame.message)
            reversal = classify(view.mti).reversal
            read = self._fields_read
            fields = view.fields(read.terminal_reversal if reversal else read.request)
        except CodecError as error:
            # The frame boundary is intact, so the connection stays usable: drop the message.
            self._count_format_error("message")
            log.warning("terminal_message_malformed", conn=conn.conn_id, error=str(error))
            return
        if not reversal:  # a terminal's reversal has no such notice
            self._arrival = ((view.mti, fields.get("41"), fields.get("11")), arrived)
        log_context = _LOG_CONN.set(conn.conn_id)
        try:
            self._dispatch(TerminalRequest(conn.conn_id, view.mti, fields, frame))
        finally:
            self._arrival = None
            _LOG_CONN.reset(log_context)

    def on_terminal_framing_error(self, conn: TerminalConnection, error: FramingError) -> None:
        self._count_format_error(type(error).__name__)
        log.warning("terminal_framing_error", conn=conn.conn_id, peer=conn.peer, error=str(error))

    def on_terminal_closed(self, conn: TerminalConnection) -> None:
        if self.tap is not None:
            self.tap.connection_closed("terminal", conn.local_address, conn.peer_address)
        if self.core is not None:
            self._dispatch(TerminalClosed(conn.conn_id))

    def _count_format_error(self, kind: str) -> None:
        errors = self.counters.terminal_format_errors
        errors[kind] = errors.get(kind, 0) + 1

    # acquirer (LinkListener) ------------------------------------------------------------

    def on_link_up(self, link: AcquirerLink) -> None:
        if self.tap is not None and link.connection is not None:
            connection = link.connection
            self.tap.connection_opened(
                "acquirer", connection.local_address, connection.peer_address
            )
        self.sink.notify(
            "acquirer_link_up", {"link_id": link.link_id, "address": link.address_text or "-"}
        )
        self._dispatch(LinkUp(link.link_id))

    def on_link_down(self, link: AcquirerLink) -> None:
        if self.tap is not None and link.connection is not None:
            connection = link.connection
            self.tap.connection_closed(
                "acquirer", connection.local_address, connection.peer_address
            )
        # Sends still waiting for the journal were never written: drop them before the core
        # hears of the loss, so they cannot reach a reconnected link after their reversal.
        if self._held_sends:
            self._held_sends = deque(s for s in self._held_sends if s[1] != link.link_id)
        self.sink.notify(
            "acquirer_link_down", {"link_id": link.link_id, "address": link.address_text or "-"}
        )
        self._dispatch(LinkDown(link.link_id))

    def on_link_message(self, link: AcquirerLink, frame: Frame, view: FieldView) -> None:
        if self.tap is not None and link.connection is not None:
            connection = link.connection
            self.tap.frame(
                "acquirer", True, connection.local_address, connection.peer_address, frame
            )
        read = self._fields_read
        try:
            fields = LazyFields(view, read.response, read.response_later, UNREADABLE)
        except CodecError as error:
            self.on_link_format_error(link, error)
            return
        log_context = _LOG_LINK.set(link.link_id)
        try:
            self._dispatch(AcquirerResponse(link.link_id, view.mti, fields, frame))
        finally:
            _LOG_LINK.reset(log_context)

    def on_link_format_error(self, link: AcquirerLink, error: Exception) -> None:
        self.counters.acquirer_format_errors += 1
        log.warning("acquirer_message_malformed", link=link.link_id, error=str(error))

    # background -------------------------------------------------------------------------

    async def _poll_requeued(self) -> None:
        """Operators retry failed reversals from another process (`saf retry`)."""
        while True:
            await asyncio.sleep(REQUEUE_POLL_SECONDS)
            try:
                reversal_ids = await self.journal.take_requeued()
            except Exception:
                log.exception("requeue_poll_failed")
                continue
            for reversal_id in reversal_ids:
                self._dispatch(ReversalRequeued(reversal_id))

    async def _prune_periodically(self) -> None:
        retention = self.config.journal.retention_days * 86_400
        while True:
            try:
                pruned = await self.journal.prune(time.time() - retention)
                if pruned:
                    log.info("journal_pruned", records=pruned)
            except Exception:
                log.exception("journal_prune_failed")
            await asyncio.sleep(PRUNE_EVERY_SECONDS)

    def status(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self._core.stats())
        stats["links_up"] = sum(1 for link in self.links.values() if link.is_up)
        stats["terminal_connections"] = len(self.terminals.connections)
        return stats
