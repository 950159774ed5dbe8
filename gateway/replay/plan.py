"""What a replay sends and what it expects, worked out from a capture before anything is sent.

The *front* of a capture is where terminals talk: every connection of a one-leg capture (taken
in front of the terminals, or between a gateway and its acquirer), or the terminal side of the
gateway's own two-leg recording. Each request the terminal end sent there is a ``Step``.

What the host did with it (its *host fate*) decides what the built-in host does now:

- one-leg capture: the answer on that same connection, or none, or the connection cut;
- two-leg recording: what the acquirer did with the request the old gateway forwarded (found
  on the acquirer side, see ``RequestIndex``); ``not_forwarded`` when the old gateway never
  sent it on (it declined at once, for example with the link down).

A request the host never answered (or whose connection it cut) and that holds funds must now
end in a reversal: ``expects_reversal``.

Finding a request again (``RequestIndex``): the gateway forwards the terminal's bytes, so the
request it sends carries the same key fields: the base MTI (repeat flag cleared) and the
dialect's match fields (DE 41 + DE 11, CUP adds DE 42). A gateway that rewrites the STAN
(``stan_mode = "rewrite"``) changes DE 11 only, so the second try is the whole content but
DE 11. Reversals are found by content only: the gateway's own reversal of an original carries
the same key fields as a terminal's reversal of it (CUP reverses with the original's STAN), and
only a forwarded terminal reversal has the terminal's exact content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from gateway.core.keys import values_of
from gateway.core.mti import base_mti, is_reversal
from gateway.replay.capture import Capture, CapturedMessage, Connection, Transaction

HostFate = Literal["answered", "no_response", "cut", "not_forwarded"]
NO_ANSWER_FATES = frozenset({"no_response", "cut"})

T = TypeVar("T")
_Key = tuple[object, ...]


def exact_key(mti: str, fields: Mapping[str, str], match_fields: Iterable[str]) -> _Key:
    return ("exact", base_mti(mti), *values_of(fields, tuple(match_fields)))


def content_key(mti: str, fields: Mapping[str, str]) -> _Key:
    return ("content", base_mti(mti), *sorted((k, v) for k, v in fields.items() if k != "11"))


class RequestIndex(Generic[T]):
    """Items filed under the requests they belong to; found by exact key, then by content."""

    def __init__(self, match_fields: Iterable[str]) -> None:
        self._match_fields = tuple(match_fields)
        self._items: dict[_Key, list[T]] = {}
        self._taken: set[int] = set()  # id() of the items taken

    def _keys(self, mti: str, fields: Mapping[str, str]) -> list[_Key]:
        content = content_key(mti, fields)
        if is_reversal(mti):
            return [content]
        return [exact_key(mti, fields, self._match_fields), content]

    def add(self, mti: str, fields: Mapping[str, str], item: T) -> None:
        for key in self._keys(mti, fields):
            self._items.setdefault(key, []).append(item)

    def find(self, mti: str, fields: Mapping[str, str], *, take: bool = False) -> T | None:
        """The first item filed under this request and not taken (``take``: take it)."""
        for key in self._keys(mti, fields):
            for item in self._items.get(key, ()):
                if id(item) not in self._taken:
                    if take:
                        self._taken.add(id(item))
                    return item
        return None


@dataclass(slots=True, eq=False)
class Step:
    """One terminal request to replay, and what the capture says happened to it."""

    txn: Transaction  # on the front
    host_txn: Transaction | None  # as the host saw it (the same one in a one-leg capture)
    host_fate: HostFate
    reversible: bool  # holds funds (dialect: MTI class and processing code)

    @property
    def number(self) -> int:
        return self.txn.number

    @property
    def expects_reversal(self) -> bool:
        return self.reversible and self.host_fate in NO_ANSWER_FATES

    @property
    def captured_response(self) -> CapturedMessage | None:
        """What the terminal got then."""
        return self.txn.response

    @property
    def host_response(self) -> CapturedMessage | None:
        """What the host answered then (the built-in host answers this now)."""
        return self.host_txn.response if self.host_txn is not None else None


@dataclass(slots=True)
class FrontConnection:
    connection: Connection
    messages: list[CapturedMessage]  # what the terminal end sent, in order
    terminal_id: str | None  # DE 41 of its first request: one terminal's connections in turn


@dataclass(slots=True)
class ReplayPlan:
    capture: Capture
    steps: list[Step]
    connections: list[FrontConnection]
    two_legs: bool
    steps_by_request: dict[int, Step] = field(default_factory=dict)  # request message number

    def step_of(self, message: CapturedMessage) -> Step | None:
        return self.steps_by_request.get(message.number)


def make_plan(capture: Capture, skip_mtis: Iterable[str] = ()) -> ReplayPlan:
    """Steps and connections to replay; ``skip_mtis``: terminal requests left out (for a
    capture between a gateway and its acquirer: that gateway's own 0800 and 0400)."""
    skipped = frozenset(skip_mtis)
    dialect = capture.dialect
    two_legs = "acquirer" in capture.legs and "terminal" in capture.legs
    front_legs = {"terminal"} if two_legs else {"", "terminal", "acquirer"}
    front_connections = {c.number for c in capture.connections if c.leg in front_legs}

    def sent(message: CapturedMessage) -> bool:
        return message.sender == "terminal" and message.connection in front_connections

    front_txns = [
        txn for txn in capture.transactions if sent(txn.request) and txn.request.mti not in skipped
    ]
    host_side: dict[int, Transaction] = {}
    if two_legs:
        # The old gateway's requests to the acquirer, each tied to the terminal's request.
        index: RequestIndex[Transaction] = RequestIndex(dialect.match_fields)
        for txn in front_txns:
            index.add(txn.request.mti, txn.request.fields, txn)
        for txn in capture.transactions:
            request = txn.request
            if capture.leg_of(txn) != "acquirer" or request.sender != "terminal":
                continue
            front = index.find(request.mti, request.fields, take=True)
            if front is not None and front.request.time <= request.time:
                host_side[front.number] = txn
    steps: list[Step] = []
    for txn in front_txns:
        request = txn.request
        host_txn = host_side.get(txn.number) if two_legs else txn
        fate: HostFate = host_txn.fate if host_txn is not None else "not_forwarded"
        reversible = dialect.is_reversible(base_mti(request.mti), request.fields.get("3"))
        steps.append(Step(txn, host_txn, fate, reversible))
    plan = ReplayPlan(capture, steps, [], two_legs)
    plan.steps_by_request = {step.txn.request.number: step for step in steps}
    for connection in capture.connections:
        if connection.number not in front_connections:
            continue
        messages = [
            m
            for m in capture.messages
            if m.connection == connection.number
            and m.sender == "terminal"
            and (m.is_request or not m.mti)  # requests, and what did not decode (sent as is)
            and m.mti not in skipped
        ]
        if messages:
            first = next((m.terminal_id for m in messages if m.terminal_id), None)
            plan.connections.append(FrontConnection(connection, messages, first))
    return plan
