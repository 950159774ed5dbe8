"""The built-in host of a replay: an acquirer that answers what the capture says it answered.

The gateway under test connects here (``--acquirer-listen``: its acquirer address points at
it). For each request the gateway sends:

- a request of the capture (found by ``RequestIndex``: key fields, then content) gets the
  captured answer, its DE 11 set to the gateway's (a gateway that rewrites STANs sends its
  own), its TPDU swapped as hosts do; or no answer, where the capture shows none; or the
  connection is closed, where the capture shows the host cutting the link. Each captured answer
  is used once;
- a reversal (0400/0401/0420/0421) that is not a terminal's (forwarded) is the gateway's own:
  there is no captured answer for it, so it is acknowledged with ``00`` and recorded with the
  request it reverses (DE 90 original STAN, else the same terminal and STAN, else the same
  terminal, RRN and amount);
- network management (0800 sign-on, echo) is answered ``00``;
- anything else was not in the capture: recorded as unexpected and not answered.

Everything received is kept in ``requests`` for the report (fields hold card data: the report
masks them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.core.mti import base_mti, is_response, is_reversal, is_valid_mti, response_mti
from gateway.io.framed import FramedProtocol
from gateway.replay.capture import CapturedMessage
from gateway.replay.plan import ReplayPlan, RequestIndex, Step
from gateway.sim.acquirer import BASE_ECHO_FIELDS
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame, swap_tpdu

APPROVED = "00"
Kind = Literal["request", "reversal", "network", "other"]
Action = Literal["answered", "silent", "closed", "acknowledged", "unexpected"]


@dataclass(slots=True, repr=False, eq=False)
class HostRequest:
    """One message the gateway sent to the built-in host, and what the host did."""

    number: int
    time: float
    link: int
    mti: str  # "" if it did not decode
    fields: dict[str, str]  # card data inside: show through the report's masking only
    kind: Kind
    action: Action = "unexpected"
    step: Step | None = None  # the terminal request it is, when it is one of the capture
    response_code: str | None = None  # DE 39 the host answered
    original: HostRequest | None = None  # a reversal: the request it reverses

    def __repr__(self) -> str:
        return (
            f"HostRequest(#{self.number}, link={self.link}, mti={self.mti or '?'}, "
            f"kind={self.kind}, action={self.action})"
        )


class _HostLink(FramedProtocol):
    def __init__(self, host: ReplayHost, number: int) -> None:
        super().__init__(host.dialect.framing)
        self._host = host
        self.number = number

    def on_connected(self) -> None:
        self._host._link_opened(self)

    def on_frame(self, frame: Frame) -> None:
        if not frame.is_keepalive:
            self._host._on_frame(self, frame)

    def on_disconnected(self, exc: Exception | None) -> None:
        self._host._link_closed(self)


@dataclass(slots=True)
class HostCounters:
    links: int = 0  # connections accepted
    undecodable: int = 0
    responses_received: int = 0  # responses sent to the host: not expected


class ReplayHost:
    """An acquirer on a TCP port that answers from a replay plan."""

    def __init__(
        self, plan: ReplayPlan, dialect: Dialect, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.dialect = dialect
        self.codec = Codec(dialect)
        self.counters = HostCounters()
        self._clock = clock
        defined = set(dialect.spec)
        self._echo = tuple(name for name in BASE_ECHO_FIELDS if name in defined)
        self.reset(plan)
        self._server: asyncio.Server | None = None
        self._links: set[_HostLink] = set()
        self._changed = asyncio.Event()
        self.port = 0

    # lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HostLink(self, 0), host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.close()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5.0)

    def reset(self, plan: ReplayPlan) -> None:
        """Answer from this plan, every captured answer unused, nothing received yet (the
        links stay up: another replay through the same gateway)."""
        self.plan = plan
        self.requests: list[HostRequest] = []
        self.last_activity = 0.0  # time of the last request that was not network management
        self._answers: RequestIndex[Step] = RequestIndex(self.dialect.match_fields)
        self._front: RequestIndex[Step] = RequestIndex(self.dialect.match_fields)
        for step in plan.steps:
            request = step.txn.request
            self._front.add(request.mti, request.fields, step)
            if step.host_txn is not None:
                seen = step.host_txn.request
                self._answers.add(seen.mti, seen.fields, step)

    @property
    def links_open(self) -> int:
        return len(self._links)

    async def wait_link(self, timeout: float, *, after: int = 0) -> bool:
        """Until a connection numbered above ``after`` is open (the gateway's link is up)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not any(link.number > after for link in self._links):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def _link_opened(self, link: _HostLink) -> None:
        self.counters.links += 1
        link.number = self.counters.links
        self._links.add(link)
        self._changed.set()

    def _link_closed(self, link: _HostLink) -> None:
        self._links.discard(link)
        self._changed.set()

    # requests ---------------------------------------------------------------------------

    def reversals(self) -> list[HostRequest]:
        return [r for r in self.requests if r.kind == "reversal"]

    def _on_frame(self, link: _HostLink, frame: Frame) -> None:
        now = self._clock()
        try:
            view = self.codec.scan(frame.message)
            mti, fields = view.mti, view.fields(view.present)
        except CodecError:
            self.counters.undecodable += 1
            self.requests.append(
                HostRequest(len(self.requests) + 1, now, link.number, "", {}, "other")
            )
            return
        if not is_valid_mti(mti) or is_response(mti):
            self.counters.responses_received += 1
            self.requests.append(
                HostRequest(len(self.requests) + 1, now, link.number, mti, fields, "other")
            )
            return
        kind: Kind = "reversal" if is_reversal(mti) else "network" if mti[1] == "8" else "request"
        request = HostRequest(len(self.requests) + 1, now, link.number, mti, fields, kind)
        self.requests.append(request)
        if kind != "network":
            self.last_activity = now
        step = self._answers.find(mti, fields, take=True)
        if kind == "reversal":
            request.original = self._original_of(request)
        if step is not None:
            request.step = step
            self._as_captured(link, frame, request, step)
        elif kind in ("reversal", "network"):
            request.step = self._front.find(mti, fields) if kind == "network" else None
            request.action = "acknowledged"
            self._send(link, frame, request, self._default_answer(request))
        else:
            request.step = self._front.find(mti, fields)  # a request the old host never saw
            request.action = "unexpected"

    def _as_captured(self, link: _HostLink, frame: Frame, request: HostRequest, step: Step) -> None:
        fate = step.host_fate
        answer = step.host_response
        if fate == "answered" and answer is not None:
            request.action = "answered"
            self._send(link, frame, request, self._captured_answer(answer, request))
        elif fate == "cut":
            request.action = "closed"
            link.close()
        else:
            request.action = "silent"

    def _send(
        self, link: _HostLink, frame: Frame, request: HostRequest, message: bytes | None
    ) -> None:
        if message is None:
            request.action = "unexpected"
            return
        tpdu = swap_tpdu(frame.tpdu) if frame.tpdu else b""
        link.write_frame(Frame(message, tpdu, frame.header))

    def _captured_answer(self, answer: CapturedMessage, request: HostRequest) -> bytes | None:
        """The captured response, its DE 11 set to what the gateway sent now."""
        message = answer.frame.message
        stan = request.fields.get("11")
        request.response_code = answer.response_code
        if stan is not None and answer.stan is not None and answer.stan != stan:
            try:
                message = self.codec.scan(message).replace("11", stan)
            except CodecError:
                return None
        return message

    def _default_answer(self, request: HostRequest) -> bytes | None:
        """00 for the gateway's own reversals and network management: echo + DE 39."""
        fields = request.fields
        answer = {name: fields[name] for name in self._echo if name in fields}
        if request.kind == "reversal" and "38" in fields:
            answer["38"] = fields["38"]
        answer["39"] = APPROVED
        request.response_code = APPROVED
        try:
            return self.codec.encode(response_mti(request.mti), answer)
        except CodecError:
            return None

    def _original_of(self, reversal: HostRequest) -> HostRequest | None:
        """The request a reversal reverses, among what the gateway sent here before it."""
        fields = reversal.fields
        terminal = fields.get("41")
        merchant = fields.get("42")
        candidates = [
            r
            for r in reversed(self.requests)
            if r.kind == "request"
            and r.fields.get("41") == terminal
            and (merchant is None or r.fields.get("42") in (None, merchant))
        ]
        original_data = fields.get("90", "")
        if len(original_data) >= 10:
            mti, stan = original_data[:4], original_data[4:10]
            for candidate in candidates:
                if base_mti(candidate.mti) == base_mti(mti) and candidate.fields.get("11") == stan:
                    return candidate
        for candidate in candidates:
            if candidate.fields.get("11") == fields.get("11"):
                return candidate
        for candidate in candidates:
            same_rrn = fields.get("37") is not None and candidate.fields.get("37") == fields.get(
                "37"
            )
            if same_rrn and candidate.fields.get("4") == fields.get("4"):
                return candidate
        return None


__all__ = ["HostCounters", "HostRequest", "ReplayHost"]
