"""Simulated POS terminals: a load generator (``TerminalFleet``) and a single client for tests.

Each terminal has its own TCP connection, terminal id (DE 41 ``TERM0001``...), merchant id
(DE 42) and STAN counter, and records what it was told for every request: approved, declined
(with the code), no answer within its own timeout, or not sent at all (it could not connect).
That record is what the invariant checker compares with the acquirer's ledger.

Lock-step (``pipeline=1``: one request outstanding per terminal, as real terminals do) or
pipelined (up to K outstanding). ``rate`` caps the total requests per second across the
fleet (0: as fast as the other side answers); ``count`` is the total number of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.core.mti import base_mti, response_mti
from gateway.io.framed import FramedProtocol
from gateway.sim.fast_encode import MessageEncoder
from gateway.sim.ledger import OriginalKey, amount_of
from gateway.sim.traffic import RequestBuilder, Style, TrafficMix, default_envelope
from gateway.wire.codec import Codec, CodecError, FieldView, Message
from gateway.wire.dialect import Dialect, get_dialect
from gateway.wire.framing import Frame, Framing, encode_frame

DEFAULT_TIMEOUT = 30.0  # a terminal's own wait for an answer
CONNECT_TIMEOUT = 5.0
APPROVAL_CODES = frozenset({"00"})
STAN_MODULUS = 1_000_000
NOT_WRITTEN = "not_written"


class Outcome(StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    NO_ANSWER = "no_answer"  # sent, and no answer within the terminal's timeout (or cut off)
    NOT_SENT = "not_sent"  # the terminal could not connect: nothing can be held for it


@dataclass(slots=True)
class TxnRecord:
    """What one terminal sent and what it was told."""

    terminal_id: str
    mti: str
    stan: str
    amount: str | None  # DE 4 as sent
    transmission_time: str | None  # DE 7 as sent (absent in CUP traffic)
    rrn: str | None  # DE 37 as sent
    sent_at: float  # unix seconds
    outcome: Outcome = Outcome.NOT_SENT
    response_code: str | None = None  # DE 39
    approval_code: str | None = None  # DE 38
    response_rrn: str | None = None  # DE 37 of the answer
    latency: float | None = None  # seconds from send to answer
    no_answer_reason: str | None = None  # timeout, connection_lost; not sent: connect_failed,
    # not_written
    late_response_code: str | None = None  # DE 39 of an answer that came after the timeout
    reversal_code: str | None = None  # the answer to the terminal's own reversal ("" = none)

    @property
    def key(self) -> OriginalKey:
        """The ledger key of this request (see ledger.OriginalKey)."""
        return OriginalKey(
            mti=base_mti(self.mti),
            terminal_id=self.terminal_id,
            stan=self.stan,
            transmission_time=self.transmission_time,
            amount=amount_of({"4": self.amount}) if self.amount is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "terminal_id": self.terminal_id,
            "mti": self.mti,
            "stan": self.stan,
            "amount": self.amount,
            "transmission_time": self.transmission_time,
            "rrn": self.rrn,
            "outcome": self.outcome.value,
            "response_code": self.response_code,
            "approval_code": self.approval_code,
            "latency": self.latency,
            "no_answer_reason": self.no_answer_reason,
            "late_response_code": self.late_response_code,
            "reversal_code": self.reversal_code,
        }


def percentile(sorted_values: list[float], share: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class FleetResults:
    records: list[TxnRecord]
    elapsed: float  # seconds, first send to last answer
    counters: Counter[str] = field(default_factory=Counter)

    def by_outcome(self, outcome: Outcome) -> list[TxnRecord]:
        return [record for record in self.records if record.outcome is outcome]

    def approvals(self) -> list[TxnRecord]:
        return self.by_outcome(Outcome.APPROVED)

    def summary(self) -> dict[str, Any]:
        outcomes = Counter(record.outcome for record in self.records)
        declined = Counter(
            record.response_code or "?"
            for record in self.records
            if record.outcome is Outcome.DECLINED
        )
        latencies = sorted(record.latency for record in self.records if record.latency is not None)
        sent = len(self.records) - outcomes[Outcome.NOT_SENT]
        answered = outcomes[Outcome.APPROVED] + outcomes[Outcome.DECLINED]
        reversals = Counter(
            record.reversal_code or "no_answer"
            for record in self.records
            if record.reversal_code is not None
        )

        def millis(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "sent": sent,
            "approved": outcomes[Outcome.APPROVED],
            "declined": sum(declined.values()),
            "declined_by_code": dict(sorted(declined.items())),
            "no_answer": outcomes[Outcome.NO_ANSWER],
            "not_sent": outcomes[Outcome.NOT_SENT],
            "late_responses": self.counters["late_responses"],
            "terminal_reversals": dict(sorted(reversals.items())),
            "latency_ms": {
                "p50": millis(percentile(latencies, 0.50)),
                "p99": millis(percentile(latencies, 0.99)),
                "max": millis(latencies[-1] if latencies else None),
            },
            "elapsed_s": round(self.elapsed, 3),
            "answered_per_s": round(answered / self.elapsed, 1) if self.elapsed > 0 else None,
            "connections": {
                "opened": self.counters["connects"],
                "failed": self.counters["connect_failures"],
                "lost": self.counters["connections_lost"],
            },
            "undecodable_responses": self.counters["undecodable"],
            "unmatched_responses": self.counters["unmatched"],
        }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a newcomer reads it (no card data: none is in the summary)."""
    latency = summary["latency_ms"]
    not_sent = summary["not_sent"]
    lines = [
        f"requests sent      {summary['sent']}"
        + (f"  (+{not_sent} not sent: could not connect)" if not_sent else ""),
        f"approved           {summary['approved']}",
        f"declined           {summary['declined']}"
        + (
            "  (by response code: "
            + ", ".join(f"{code}: {n}" for code, n in summary["declined_by_code"].items())
            + ")"
            if summary["declined"]
            else ""
        ),
        f"no answer          {summary['no_answer']}  (terminal timed out or connection lost)",
    ]
    if summary["late_responses"]:
        lines.append(f"late answers       {summary['late_responses']}  (came after the timeout)")
    if summary["terminal_reversals"]:
        lines.append(
            "terminal reversals "
            + ", ".join(f"{code}: {n}" for code, n in summary["terminal_reversals"].items())
        )
    if latency["p50"] is not None:
        lines.append(
            f"latency            p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, "
            f"max {latency['max']:.1f} ms (send to answer)"
        )
    rate = summary["answered_per_s"]
    lines.append(
        f"elapsed            {summary['elapsed_s']:.2f} s"
        + (f", {rate:.0f} answers/s" if rate is not None else "")
    )
    return "\n".join(lines)


# Connections ------------------------------------------------------------------------------


class _ClientProtocol(FramedProtocol):
    def __init__(
        self,
        framing: Framing,
        on_frame: Callable[[Frame], None],
        on_lost: Callable[[_ClientProtocol], None],
    ) -> None:
        super().__init__(framing)
        self._on_frame = on_frame
        self._on_lost = on_lost

    def on_frame(self, frame: Frame) -> None:
        self._on_frame(frame)

    def on_disconnected(self, exc: Exception | None) -> None:
        self._on_lost(self)


@dataclass(slots=True)
class _Pending:
    record: TxnRecord
    future: asyncio.Future[FieldView | None]
    timer: asyncio.TimerHandle
    sent_at: float  # perf_counter


class _Terminal:
    """One terminal of the fleet: connection, STAN counter, requests awaiting an answer."""

    def __init__(
        self, fleet: TerminalFleet, terminal_id: str, builder: RequestBuilder, stan: int
    ) -> None:
        self.fleet = fleet
        self.terminal_id = terminal_id
        self.builder = builder
        self._stan = stan
        self.protocol: _ClientProtocol | None = None
        self.pending: dict[tuple[str, str], _Pending] = {}  # (response MTI, STAN)
        self.expired: dict[tuple[str, str], TxnRecord] = {}  # timed out, for late answers
        self._lock = asyncio.Lock()
        self._outbox: list[bytes] = []  # frames of this loop iteration, written together

    def next_stan(self) -> str:
        self._stan = self._stan % (STAN_MODULUS - 1) + 1  # 000001..999999, never 000000
        return f"{self._stan:06d}"

    async def connection(self) -> _ClientProtocol | None:
        protocol = self.protocol
        if protocol is not None and protocol.is_open:
            return protocol
        async with self._lock:
            if self.protocol is not None and self.protocol.is_open:
                return self.protocol
            fleet = self.fleet
            loop = asyncio.get_running_loop()
            try:
                _, new = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _ClientProtocol(fleet.framing, self.on_frame, self.on_lost),
                        fleet.host,
                        fleet.port,
                        ssl=fleet.tls,
                    ),
                    CONNECT_TIMEOUT,
                )
            except (OSError, TimeoutError):
                fleet.counters["connect_failures"] += 1
                return None
            fleet.counters["connects"] += 1
            self.protocol = new
            return new

    def on_frame(self, frame: Frame) -> None:
        fleet = self.fleet
        if frame.is_keepalive:
            return
        try:
            view = fleet.codec.scan(frame.message)
            key = (view.mti, view.get("11") or "")
        except CodecError:
            fleet.counters["undecodable"] += 1
            return
        pending = self.pending.pop(key, None)
        if pending is not None:
            pending.timer.cancel()
            pending.record.latency = time.perf_counter() - pending.sent_at
            if not pending.future.done():
                pending.future.set_result(view)
            return
        late = self.expired.pop(key, None)
        if late is not None:
            fleet.counters["late_responses"] += 1
            late.late_response_code = view.get("39")
        else:
            fleet.counters["unmatched"] += 1

    def on_lost(self, protocol: _ClientProtocol) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        self.fleet.counters["connections_lost"] += 1
        pending, self.pending = self.pending, {}
        for item in pending.values():
            item.timer.cancel()
            item.record.no_answer_reason = "connection_lost"
            if not item.future.done():
                item.future.set_result(None)

    def expire(self, key: tuple[str, str]) -> None:
        pending = self.pending.pop(key, None)
        if pending is None:
            return
        pending.record.no_answer_reason = "timeout"
        self.expired[key] = pending.record
        if not pending.future.done():
            pending.future.set_result(None)

    async def exchange(
        self, protocol: _ClientProtocol, mti: str, fields: dict[str, str], record: TxnRecord
    ) -> FieldView | None:
        """Send one request and wait for its answer (None: timeout or connection lost)."""
        fleet = self.fleet
        message = fleet.encoder.encode(mti, fields)
        loop = asyncio.get_running_loop()
        key = (response_mti(mti), fields["11"])
        future: asyncio.Future[FieldView | None] = loop.create_future()
        timer = loop.call_later(fleet.timeout, self.expire, key)
        self.pending[key] = _Pending(record, future, timer, time.perf_counter())
        self.expired.pop(key, None)
        if not self._send(protocol, Frame(message, fleet.tpdu, fleet.header)):
            # The connection went away between connect and write: nothing left the terminal.
            del self.pending[key]
            timer.cancel()
            record.no_answer_reason = NOT_WRITTEN
            return None
        return await future

    def _send(self, protocol: _ClientProtocol, frame: Frame) -> bool:
        """Queue a frame; the frames queued in one loop iteration go out in one write (the
        pipelined slots of a terminal wake together when a batch of answers arrives)."""
        if not protocol.is_open:
            return False
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush, protocol)
        self._outbox.append(encode_frame(self.fleet.framing, frame))
        return True

    def _flush(self, protocol: _ClientProtocol) -> None:
        data = b"".join(self._outbox)
        self._outbox.clear()
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)


class _Pacer:
    """Spaces sends evenly to a total rate; never bursts to catch up after a stall."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        at = max(self._next, now)
        self._next = at + self._interval
        if at - now > 0.0005:
            await asyncio.sleep(at - now)


class TerminalFleet:
    """N terminals sending ``count`` requests in total to host:port."""

    def __init__(
        self,
        host: str,
        port: int,
        dialect: Dialect | str,
        *,
        terminals: int = 10,
        count: int = 100,
        rate: float = 0.0,
        pipeline: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        seed: int | None = None,
        mix: TrafficMix | None = None,
        style: Style | None = None,
        reverse_on_timeout: bool = False,
        connect_retry_delay: float = 0.2,
        terminal_id_prefix: str = "TERM",
        progress: Callable[[str], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if terminals < 1 or count < 0 or pipeline < 1 or rate < 0 or timeout <= 0:
            raise ValueError(
                "terminals and pipeline must be >= 1, count and rate >= 0, timeout > 0"
            )
        self.host = host
        self.port = port
        self.tls = tls  # a client context: terminals connect with TLS
        self.dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self.codec = Codec(self.dialect)
        self.encoder = MessageEncoder(self.codec)
        self.framing = self.dialect.framing
        self.tpdu, self.header = default_envelope(self.dialect)
        self.count = count
        self.rate = rate
        self.pipeline = pipeline
        self.timeout = timeout
        self.reverse_on_timeout = reverse_on_timeout
        self.connect_retry_delay = connect_retry_delay
        self.progress = progress
        self.counters: Counter[str] = Counter()
        self.records: list[TxnRecord] = []
        rng = random.Random(seed)
        self._terminals = [
            _Terminal(
                self,
                f"{terminal_id_prefix}{index:04d}"[-8:],
                RequestBuilder(
                    self.dialect,
                    f"{terminal_id_prefix}{index:04d}"[-8:],
                    f"MERCHANT{index:07d}"[:15],
                    random.Random(rng.random()),
                    mix=mix,
                    style=style,
                ),
                # A random start keeps two runs against one host from reusing keys.
                stan=rng.randrange(STAN_MODULUS - 1),
            )
            for index in range(1, terminals + 1)
        ]
        self._remaining = count
        self._pacer = _Pacer(rate) if rate > 0 else None

    def stop(self) -> None:
        """Send nothing more; ``run`` returns once the outstanding requests are settled."""
        self._remaining = 0

    async def run(self) -> FleetResults:
        started = time.perf_counter()
        reporter = asyncio.create_task(self._report(started)) if self.progress is not None else None
        try:
            async with asyncio.TaskGroup() as group:
                for terminal in self._terminals:
                    for _ in range(self.pipeline):
                        group.create_task(self._slot(terminal))
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            for terminal in self._terminals:
                if terminal.protocol is not None:
                    terminal.protocol.close()
        return FleetResults(self.records, time.perf_counter() - started, self.counters)

    async def _slot(self, terminal: _Terminal) -> None:
        """One outstanding request at a time on this terminal (K slots: pipelining)."""
        while self._remaining > 0:
            self._remaining -= 1
            if self._pacer is not None:
                await self._pacer.wait()
            await self._transaction(terminal)

    async def _transaction(self, terminal: _Terminal) -> None:
        now = time.time()
        protocol = await terminal.connection()
        stan = terminal.next_stan()
        mti, fields = terminal.builder.build(stan, now)
        record = TxnRecord(
            terminal_id=terminal.terminal_id,
            mti=mti,
            stan=stan,
            amount=fields.get("4"),
            transmission_time=fields.get("7"),
            rrn=fields.get("37"),
            sent_at=now,
        )
        self.records.append(record)
        if protocol is None:
            record.no_answer_reason = "connect_failed"
            await asyncio.sleep(self.connect_retry_delay)
            return
        view = await terminal.exchange(protocol, mti, fields, record)
        if view is None:
            if record.no_answer_reason == NOT_WRITTEN:
                return  # stays NOT_SENT
            record.outcome = Outcome.NO_ANSWER
            if self.reverse_on_timeout:
                await self._terminal_reversal(terminal, mti, fields, record)
            return
        code = view.get("39")
        record.response_code = code
        record.approval_code = view.get("38")
        record.response_rrn = view.get("37")
        record.outcome = Outcome.APPROVED if code in APPROVAL_CODES else Outcome.DECLINED

    async def _terminal_reversal(
        self, terminal: _Terminal, mti: str, fields: dict[str, str], record: TxnRecord
    ) -> None:
        """What a terminal does after a timeout: reverse its own request, once."""
        protocol = await terminal.connection()
        if protocol is None:
            record.reversal_code = ""
            return
        reversal_mti, reversal = terminal.builder.reversal(
            mti, fields, terminal.next_stan(), time.time()
        )
        probe = TxnRecord(
            terminal_id=terminal.terminal_id,
            mti=reversal_mti,
            stan=reversal["11"],
            amount=reversal.get("4"),
            transmission_time=reversal.get("7"),
            rrn=None,
            sent_at=time.time(),
        )
        view = await terminal.exchange(protocol, reversal_mti, reversal, probe)
        record.reversal_code = (view.get("39") or "") if view is not None else ""

    async def _report(self, started: float) -> None:
        assert self.progress is not None
        while True:
            await asyncio.sleep(1.0)
            outcomes = Counter(record.outcome for record in self.records)
            elapsed = time.perf_counter() - started
            answered = outcomes[Outcome.APPROVED] + outcomes[Outcome.DECLINED]
            self.progress(
                f"{elapsed:6.1f}s  requests {len(self.records)}/{self.count}  "
                f"approved {outcomes[Outcome.APPROVED]}  declined {outcomes[Outcome.DECLINED]}  "
                f"no answer {outcomes[Outcome.NO_ANSWER]}  "
                f"{answered / elapsed if elapsed else 0:.0f}/s"
            )


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# A single terminal for tests ---------------------------------------------------------------


class TerminalClient:
    """One terminal connection: send a message (or raw bytes) and read the answer.

    ``send`` waits for the response whose MTI is the request's + 10 and whose DE 11 matches;
    every other frame goes to an inbox read with ``receive``.
    """

    def __init__(
        self,
        dialect: Dialect | str,
        *,
        timeout: float = 5.0,
        tpdu: bytes | None = None,
        header: bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self.codec = Codec(self.dialect)
        self.timeout = timeout
        self.tls = tls
        default_tpdu, default_header = default_envelope(self.dialect)
        self.tpdu = default_tpdu if tpdu is None else tpdu
        self.header = default_header if header is None else header
        self.last_frame: Frame | None = None  # envelope of the last answer ``send`` returned
        self._protocol: _ClientProtocol | None = None
        self._waiters: list[tuple[str, str | None, asyncio.Future[tuple[Message, Frame]]]] = []
        self._inbox: asyncio.Queue[Frame] = asyncio.Queue()

    @classmethod
    async def connect(
        cls, host: str, port: int, dialect: Dialect | str, **options: Any
    ) -> TerminalClient:
        client = cls(dialect, **options)
        await client.open(host, port)
        return client

    async def open(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _ClientProtocol(self.dialect.framing, self._on_frame, self._on_lost),
                host,
                port,
                ssl=self.tls,
            ),
            CONNECT_TIMEOUT,
        )
        self._protocol = protocol

    @property
    def is_open(self) -> bool:
        return self._protocol is not None and self._protocol.is_open

    async def send(
        self, mti: str, fields: Mapping[str, str], *, timeout: float | None = None
    ) -> Message | None:
        """Send a request; its answer, or None when none came within the timeout or the
        connection was lost first. Raises ConnectionError when the connection is not open."""
        message = self.codec.encode(mti, fields)
        future: asyncio.Future[tuple[Message, Frame]] = asyncio.get_running_loop().create_future()
        waiter = (response_mti(mti), fields.get("11"), future)
        self._waiters.append(waiter)
        try:
            self.send_frame(Frame(message, self.tpdu, self.header))
            wait = self.timeout if timeout is None else timeout
            answer, frame = await asyncio.wait_for(future, wait)
        except (TimeoutError, ConnectionResetError):
            return None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        self.last_frame = frame
        return answer

    def send_frame(self, frame: Frame) -> None:
        protocol = self._require_open()
        protocol.write_frame(frame)

    def send_raw(self, data: bytes) -> None:
        """Bytes exactly as given: no length header added (for framing tests)."""
        protocol = self._require_open()
        assert protocol.transport is not None
        protocol.transport.write(data)

    async def receive(self, timeout: float | None = None) -> Frame | None:
        """The next frame no ``send`` claimed (late answers, garbage...), or None."""
        try:
            return await asyncio.wait_for(
                self._inbox.get(), self.timeout if timeout is None else timeout
            )
        except TimeoutError:
            return None

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """True once the peer closed the connection (within the timeout)."""
        if self._protocol is None:
            return True
        try:
            await asyncio.wait_for(
                asyncio.shield(self._protocol.closed), self.timeout if timeout is None else timeout
            )
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            await self.wait_closed(1.0)

    async def __aenter__(self) -> TerminalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _require_open(self) -> _ClientProtocol:
        if self._protocol is None or not self._protocol.is_open:
            raise ConnectionError("the terminal connection is not open")
        return self._protocol

    def _on_frame(self, frame: Frame) -> None:
        if not frame.is_keepalive and self._waiters:
            try:
                message = self.codec.decode(frame.message)
            except CodecError:
                message = None
            if message is not None:
                for waiter in self._waiters:
                    mti, stan, future = waiter
                    if message.mti == mti and (stan is None or message.get("11") == stan):
                        self._waiters.remove(waiter)
                        if not future.done():
                            future.set_result((message, frame))
                        return
        self._inbox.put_nowait(frame)

    def _on_lost(self, protocol: _ClientProtocol) -> None:
        del protocol
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(ConnectionResetError("the connection was closed"))
