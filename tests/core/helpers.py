"""A small harness to drive GatewayCore by hand: a fake clock, canned messages, command filters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from gateway.core.commands import (
    Command,
    ForwardToAcquirer,
    ForwardToTerminal,
    Notify,
    Persist,
    ReplyToTerminal,
    SendToAcquirer,
)
from gateway.core.engine import GatewayCore
from gateway.core.events import (
    AcquirerResponse,
    DeliveryResult,
    LinkDown,
    LinkUp,
    ReversalRequeued,
    TerminalClosed,
    TerminalRequest,
)
from gateway.core.records import AuthorizationRecord, ReversalRecord
from gateway.core.settings import CoreSettings
from gateway.wire.dialect import Dialect, ReversalRules
from gateway.wire.framing import Frame

# 2023-09-08 06:45:19 UTC: DE 7 of the public reversal vector is 0908064519.
T0 = 1_694_155_519.0
PAN = "4761739001010119"
TRACK2 = "4761739001010119=25122011143804400000"
PIN_BLOCK = "8E4A3F0B1C2D3E4F"
ICC = "9F2608C2C12B098F3DA6E3"

C = TypeVar("C")


def make_dialect(reversal: ReversalRules | None = None, **overrides: Any) -> Dialect:
    return Dialect(
        name="test",
        description="test dialect",
        source="tests",
        spec={},
        reversal=reversal or ReversalRules(),
        **overrides,
    )


def sale(stan: str = "003316", terminal: str = "TERM0001", **extra: str | None) -> dict[str, str]:
    """A 0200 sale's fields as the shell extracts them (card data included, as on the wire)."""
    fields = {
        "2": PAN,
        "3": "000000",
        "4": "000000001000",
        "7": "0908064519",
        "11": stan,
        "12": "064519",
        "13": "0908",
        "22": "051",
        "32": "200",
        "37": "325106000001",
        "41": terminal,
        "42": "MERCHANT0000001",
        "49": "978",
        "52": PIN_BLOCK,
        "55": ICC,
    }
    for name, value in extra.items():
        key = name.removeprefix("de")
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return fields


def answer(request: Mapping[str, str], code: str = "00", **extra: str | None) -> dict[str, str]:
    """The acquirer's response fields: the match fields echoed, DE 38/39."""
    fields = {name: request[name] for name in ("11", "41") if name in request}
    fields["39"] = code
    if code == "00":
        fields["38"] = "A1B2C3"
    for name, value in extra.items():
        key = name.removeprefix("de")
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return fields


def of_type(commands: Iterable[Command], kind: type[C]) -> list[C]:
    return [command for command in commands if isinstance(command, kind)]


def notices(commands: Iterable[Command], kind: str) -> list[Notify]:
    return [c for c in of_type(commands, Notify) if c.kind == kind]


def records(commands: Iterable[Command]) -> list[AuthorizationRecord | ReversalRecord]:
    return [c.record for c in of_type(commands, Persist)]


def auth_records(commands: Iterable[Command]) -> list[AuthorizationRecord]:
    return [r for r in records(commands) if isinstance(r, AuthorizationRecord)]


def reversal_records(commands: Iterable[Command]) -> list[ReversalRecord]:
    return [r for r in records(commands) if isinstance(r, ReversalRecord)]


class Harness:
    """One core, a fake clock and the commands it returned, newest last."""

    def __init__(
        self,
        settings: CoreSettings | None = None,
        dialect: Dialect | None = None,
        *,
        links: Iterable[int] = (1,),
        now: float = T0,
        **core_args: Any,
    ) -> None:
        self.now = now
        self.core = GatewayCore(
            dialect or make_dialect(), settings or CoreSettings(), now=now, **core_args
        )
        self.log: list[Command] = []
        self._frames = 0
        for link_id in links:
            self.link_up(link_id)

    def _record(self, commands: list[Command]) -> list[Command]:
        self.log.extend(commands)
        return commands

    def frame(self, tag: str = "") -> Frame:
        self._frames += 1
        return Frame(message=f"#{self._frames}{tag}".encode())

    def request(
        self,
        fields: Mapping[str, str],
        *,
        conn: int = 1,
        mti: str = "0200",
        frame: Frame | None = None,
    ) -> list[Command]:
        event = TerminalRequest(conn, mti, dict(fields), frame or self.frame("req"))
        return self._record(self.core.handle(event, self.now))

    def respond(
        self,
        fields: Mapping[str, str],
        *,
        link: int = 1,
        mti: str = "0210",
        frame: Frame | None = None,
    ) -> list[Command]:
        event = AcquirerResponse(link, mti, dict(fields), frame or self.frame("resp"))
        return self._record(self.core.handle(event, self.now))

    def delivered(self, ref: int | None, ok: bool = True) -> list[Command]:
        assert ref is not None
        return self._record(self.core.handle(DeliveryResult(ref, ok), self.now))

    def closed(self, conn: int) -> list[Command]:
        return self._record(self.core.handle(TerminalClosed(conn), self.now))

    def link_up(self, link: int = 1) -> list[Command]:
        return self._record(self.core.handle(LinkUp(link), self.now))

    def link_down(self, link: int = 1) -> list[Command]:
        return self._record(self.core.handle(LinkDown(link), self.now))

    def requeue(self, reversal_id: int) -> list[Command]:
        return self._record(self.core.handle(ReversalRequeued(reversal_id), self.now))

    def advance(self, seconds: float) -> list[Command]:
        """Move the clock and fire what is due, the way the shell does."""
        self.now += seconds
        return self._record(self.core.on_timer(self.now))

    def run_until(self, when: float) -> list[Command]:
        """Fire timers one deadline at a time up to ``when`` (each at its own time)."""
        out: list[Command] = []
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > when:
                break
            self.now = max(self.now, deadline)
            out.extend(self._record(self.core.on_timer(self.now)))
        self.now = when
        return out

    def approve(self, fields: Mapping[str, str], conn: int = 1) -> tuple[list[Command], int]:
        """Request, approval and a successful delivery; returns the commands and the txn id."""
        sent = self.request(fields, conn=conn)
        got = self.respond(answer(fields))
        delivery = of_type(got, ForwardToTerminal)[0]
        done = self.delivered(delivery.delivery_ref, True)
        return sent + got + done, auth_records(sent)[0].txn_id


def sent_reversals(commands: Iterable[Command]) -> list[SendToAcquirer]:
    return of_type(commands, SendToAcquirer)


def forwards(commands: Iterable[Command]) -> list[ForwardToAcquirer]:
    return of_type(commands, ForwardToAcquirer)


def replies(commands: Iterable[Command]) -> list[ReplyToTerminal]:
    return of_type(commands, ReplyToTerminal)


def to_terminal(commands: Iterable[Command]) -> list[ForwardToTerminal]:
    return of_type(commands, ForwardToTerminal)


def settings(**overrides: Any) -> CoreSettings:
    return CoreSettings(**overrides)


def reversal_answer(sent: SendToAcquirer, code: str = "00") -> dict[str, str]:
    """The acquirer's answer to a reversal attempt: its STAN and DE 41 echoed, DE 39."""
    return {"11": sent.fields["11"], "41": sent.fields["41"], "39": code}


def reversed_by_the_gateway(h: Harness, original: dict[str, str], code: str = "00") -> None:
    """The original times out; the gateway's reversal is answered ``code``."""
    h.request(original)
    [sent] = sent_reversals(h.advance(15))
    h.respond({"11": sent.fields["11"], "41": original["41"], "39": code}, mti="0410")


def unanswered_then_repeated(
    h: Harness, original: dict[str, str]
) -> tuple[SendToAcquirer, SendToAcquirer]:
    """The original times out (15 s); its reversal's first attempt gets no answer within the
    reversal timeout (10 s) and the repeat (0401, same STAN) goes out 5 s later."""
    h.request(original)
    [first] = sent_reversals(h.advance(15.0))
    h.advance(10.0)
    [second] = sent_reversals(h.advance(5.0))
    assert second.mti == "0401" and second.fields["11"] == first.fields["11"]
    return first, second
