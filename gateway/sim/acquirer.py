"""A simulated acquirer host: answers ISO 8583 requests, holds funds, injects faults.

For each request the host decides a response code (rules, else approve), updates the ledger
(an approved reversible request holds its amount; a reversal releases it once), then delivers
the answer, unless a fault says otherwise (delay, drop, late, close, garbage). Faults act after
the decision, so an approval that never reaches the gateway still holds: exactly the situation
the gateway must repair with a reversal.

Fast path: requests are read with ``Codec.scan`` (only the fields the host needs are decoded)
and answers are built with ``Codec.encode`` from a small set of fields; the answers to all the
frames of one read are written with one ``write`` call.

Test API::

    sim = AcquirerSimulator("iso87-binary", rules=[Rule(terminal_id=frozenset({"T1"}),
                                                        response_code="51")], seed=1)
    await sim.start("127.0.0.1", 0)      # sim.port: the ephemeral port
    ...
    sim.ledger.summary(); sim.counters.requests["0401"]
    await sim.pause(); await sim.resume()  # acquirer down (connections refused) and back
    sim.rules = RuleSet([...])             # change behaviour while it runs
    await sim.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.mti import is_response, is_valid_mti, response_mti
from gateway.io.framed import FramedProtocol
from gateway.sim.fast_encode import MessageEncoder
from gateway.sim.ledger import Ledger, ReversalOutcome, amount_of, pan_of
from gateway.sim.ledger_export import LedgerFileWriter, LedgerHttpServer
from gateway.sim.rules import Decision, FaultRates, RequestFacts, Rule, RuleSet
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import Dialect, get_dialect
from gateway.wire.framing import Frame, FramingError, encode_frame, swap_tpdu

APPROVED = "00"
APPROVAL_CODES = frozenset({APPROVED})  # response codes that hold funds
ORIGINAL_NOT_FOUND = "25"  # reversal of something the host never approved

# Fields a host copies from the request into its answer (DE 2 included, as hosts do), plus
# DE 60 (CUP: batch and message type) and DE 70 (network management code).
BASE_ECHO_FIELDS: tuple[str, ...] = (
    "2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49", "60", "70",
)  # fmt: skip
# What the host reads beyond the echoed fields: the ledger's keys and data, DE 38 and DE 90 of
# reversals. DE 35 is read only when there is no DE 2 (the PAN for rules and the ledger entry).
_READ_FIELDS: tuple[str, ...] = ("2", "3", "4", "7", "11", "37", "38", "41", "49", "90")

_GARBAGE_MARK = b"\xff\xff"  # never a valid MTI in any dialect, so garbage cannot decode


@dataclass(slots=True)
class SimCounters:
    """What the simulator saw and did (tests assert on these, e.g. that 0401 repeats came)."""

    requests: Counter[str] = field(default_factory=Counter)  # by MTI
    responses: Counter[str] = field(default_factory=Counter)  # by DE 39 decided
    faults: Counter[str] = field(default_factory=Counter)  # by fault kind
    connections: int = 0  # accepted
    undecodable: int = 0  # frames the codec could not read (not answered)
    unexpected: int = 0  # responses or unknown message classes sent to the host
    framing_errors: int = 0  # connections cut for bad framing
    keepalives: int = 0
    undelivered: int = 0  # delayed/late answers whose connection was gone by then

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "responses": dict(self.responses),
            "faults": dict(self.faults),
            "connections": self.connections,
            "undecodable": self.undecodable,
            "unexpected": self.unexpected,
            "framing_errors": self.framing_errors,
            "keepalives": self.keepalives,
            "undelivered": self.undelivered,
        }


class _HostConnection(FramedProtocol):
    """One connection from the gateway. Answers to the frames of one read go out in one write."""

    def __init__(self, sim: AcquirerSimulator) -> None:
        super().__init__(sim.dialect.framing)
        self._sim = sim
        self._batch: list[bytes] | None = None
        self._close_requested = False

    def data_received(self, data: bytes) -> None:
        self._batch = []
        try:
            super().data_received(data)
        finally:
            batch, self._batch = self._batch, None
            transport = self.transport
            if batch and transport is not None and not transport.is_closing():
                transport.write(b"".join(batch))
            if self._close_requested:
                self.close()

    def send(self, frame: Frame) -> bool:
        if not self.is_open:
            return False
        if self._batch is not None:
            self._batch.append(encode_frame(self.framing, frame))
            return True
        return self.write_frame(frame)

    def close_soon(self) -> None:
        """Close after the answers already decided in this read are written."""
        if self._batch is not None:
            self._close_requested = True
        else:
            self.close()

    def on_connected(self) -> None:
        self._sim._connected(self)

    def on_frame(self, frame: Frame) -> None:
        if not self._close_requested:
            self._sim._on_frame(self, frame)

    def on_framing_error(self, error: FramingError) -> None:
        self._sim.counters.framing_errors += 1

    def on_disconnected(self, exc: Exception | None) -> None:
        self._sim._disconnected(self)


class AcquirerSimulator:
    """An acquirer host on a TCP port, with a ledger of held funds and fault injection."""

    def __init__(
        self,
        dialect: Dialect | str,
        *,
        rules: RuleSet | Iterable[Rule] | None = None,
        faults: FaultRates | None = None,
        seed: int | None = None,
        duplicate_reversal_code: str = APPROVED,
        echo_fields: Iterable[str] | None = None,
        ledger_file: Path | None = None,
        ledger_file_debounce: float = 0.5,
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self.tls = tls  # a server context: the host speaks TLS only
        self.rules = rules if isinstance(rules, RuleSet) else RuleSet(rules or (), faults, seed)
        # The answer to a second, distinct reversal of an original already released: "00"
        # resolves it at the gateway; "94" (duplicate) tests the gateway's handling of that.
        self.duplicate_reversal_code = duplicate_reversal_code
        self.ledger = Ledger()
        self.counters = SimCounters()
        self._codec = Codec(self.dialect)
        self._encoder = MessageEncoder(self._codec)
        defined = set(self.dialect.spec)
        echo = tuple(echo_fields) if echo_fields is not None else BASE_ECHO_FIELDS
        self._echo = tuple(name for name in dict.fromkeys(echo) if name in defined)
        self._read = tuple(dict.fromkeys(self._echo + _READ_FIELDS))
        self._clock = clock
        self._garbage_rng = random.Random(seed)
        self._approval_seq = 0
        self._rrn_seq = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_HostConnection] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_seq = 0
        self._http: LedgerHttpServer | None = None
        self._file = (
            LedgerFileWriter(ledger_file, self.snapshot, ledger_file_debounce)
            if ledger_file
            else None
        )
        self.host = ""
        self.port = 0
        self.paused = False

    # Lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ledger_http: tuple[str, int] | None = None,
    ) -> None:
        """Listen on host:port (port 0: ephemeral, see ``.port``); optionally serve the ledger."""
        await self._listen(host, port)
        if ledger_http is not None:
            self._http = LedgerHttpServer(self.snapshot)
            await self._http.start(*ledger_http)
        if self._file is not None:
            self.ledger.on_change = self._file.notify
            self._file.write_now()

    async def stop(self) -> None:
        """Stop listening, cut every connection, forget pending answers, write the ledger."""
        await self._stop_listening()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._file is not None:
            self.ledger.on_change = None
            self._file.close()

    async def pause(self) -> None:
        """Acquirer down: close every connection and refuse new ones until ``resume``."""
        self.paused = True
        await self._stop_listening()

    async def resume(self) -> None:
        """Acquirer back: listen again on the same host and port."""
        if self.paused:
            await self._listen(self.host, self.port)
            self.paused = False

    async def __aenter__(self) -> AcquirerSimulator:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def snapshot(self, entries: bool = True) -> dict[str, Any]:
        """JSON-ready state for the HTTP endpoint and the ledger file (PANs masked)."""
        data: dict[str, Any] = {
            "dialect": self.dialect.name,
            "listening": f"{self.host}:{self.port}",
            "paused": self.paused,
            "counters": self.counters.to_dict(),
            "rules_applied": self.rules.applied(),
        }
        data.update(self.ledger.to_dict(entries))
        return data

    async def _listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HostConnection(self), host, port, ssl=self.tls
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    async def _stop_listening(self) -> None:
        """Refuse new connections, then close the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()
        if server is not None:
            # Python 3.12+ also waits here for the closed connections to be gone.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5.0)

    def _connected(self, connection: _HostConnection) -> None:
        if self.paused:
            connection.abort()
            return
        self.counters.connections += 1
        self._connections.add(connection)

    def _disconnected(self, connection: _HostConnection) -> None:
        self._connections.discard(connection)

    # Requests ----------------------------------------------------------------------------

    def _on_frame(self, connection: _HostConnection, frame: Frame) -> None:
        if frame.is_keepalive:
            self.counters.keepalives += 1
            return
        try:
            view = self._codec.scan(frame.message)
            mti = view.mti
            fields = view.fields(self._read)
            if "2" not in fields and view.has("35"):
                fields["35"] = view.get("35") or ""
        except CodecError:
            self.counters.undecodable += 1
            return
        self.counters.requests[mti] += 1
        if not is_valid_mti(mti) or is_response(mti):
            self.counters.unexpected += 1  # a response or an odd message: hosts ignore those
            return
        facts = RequestFacts(
            mti=mti,
            amount=amount_of(fields),
            pan=pan_of(fields),
            terminal_id=fields.get("41"),
            processing_code=fields.get("3"),
        )
        decision = self.rules.decide(facts)
        try:
            answer = self._answer(mti, fields, decision)
        except CodecError:
            self.counters.undecodable += 1  # the echoed fields do not re-encode: no answer
            return
        envelope_tpdu = swap_tpdu(frame.tpdu) if frame.tpdu else b""
        self._deliver(connection, decision, Frame(answer, envelope_tpdu, frame.header))

    def _answer(self, mti: str, fields: dict[str, str], decision: Decision) -> bytes:
        """Decide the response code, update the ledger, and encode the response message."""
        now = self._clock()
        message_class, function = mti[1], mti[2]
        answer = {name: fields[name] for name in self._echo if name in fields}
        code = decision.response_code
        if message_class == "4":  # reversal
            if code is None or code == APPROVED:
                outcome, _ = self.ledger.reverse(mti, fields, now)
                code = self._reversal_code(outcome)
            if "38" in fields:
                answer["38"] = fields["38"]
        elif message_class in "12" and function == "0":  # authorization / financial request
            code = code or APPROVED
            if self.dialect.is_reversible(mti, fields.get("3")):
                rrn = fields.get("37") or self._new_rrn(now)
                if code in APPROVAL_CODES:
                    hold = self.ledger.approve(mti, fields, self._new_approval_code(), now, rrn)
                    answer["38"] = hold.approval_code
                    rrn = hold.rrn or rrn
                else:
                    self.ledger.decline(mti, fields)
                answer["37"] = rrn
            elif code in APPROVAL_CODES:
                answer["38"] = self._new_approval_code()
        else:  # advices, network management, anything else: acknowledged
            code = code or APPROVED
        if "37" not in answer and message_class in "124":
            answer["37"] = self._new_rrn(now)
        if "12" not in answer or "13" not in answer:
            local = time.localtime(now)
            answer.setdefault("12", time.strftime("%H%M%S", local))
            answer.setdefault("13", time.strftime("%m%d", local))
        answer["39"] = code
        self.counters.responses[code] += 1
        return self._encoder.encode(response_mti(mti), answer)

    def _reversal_code(self, outcome: ReversalOutcome) -> str:
        if outcome is ReversalOutcome.UNKNOWN:
            return ORIGINAL_NOT_FOUND
        if outcome is ReversalOutcome.DUPLICATE:
            return self.duplicate_reversal_code
        return APPROVED

    def _new_approval_code(self) -> str:
        self._approval_seq += 1
        return f"{self._approval_seq % 1_000_000:06d}"

    def _new_rrn(self, now: float) -> str:
        """RRN as many hosts make it: julian date (yddd) + a sequence, 12 characters."""
        self._rrn_seq += 1
        day = time.gmtime(now)
        return f"{day.tm_year % 10}{day.tm_yday:03d}{self._rrn_seq % 100_000_000:08d}"

    # Delivery and faults -----------------------------------------------------------------

    def _deliver(self, connection: _HostConnection, decision: Decision, frame: Frame) -> None:
        fault = decision.fault
        if fault is None:
            connection.send(frame)
            return
        self.counters.faults[fault] += 1
        if fault in ("delay", "late"):
            self._send_later(decision.seconds, connection, frame)
        elif fault == "close":
            connection.close_soon()
        elif fault == "garbage":
            noise = _GARBAGE_MARK + self._garbage_rng.randbytes(self._garbage_rng.randint(8, 64))
            connection.send(Frame(noise, frame.tpdu, frame.header))
        # "drop": the host processed the request and never answers.

    def _send_later(self, seconds: float, connection: _HostConnection, frame: Frame) -> None:
        self._timer_seq += 1
        token = self._timer_seq

        def fire() -> None:
            self._timers.pop(token, None)
            if not connection.send(frame):
                self.counters.undelivered += 1

        self._timers[token] = asyncio.get_running_loop().call_later(seconds, fire)
