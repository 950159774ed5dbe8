"""A deterministic simulation of GatewayCore among terminals, an acquirer and faults.

One ``random.Random(seed)`` drives everything: terminals that buy, repeat, hang up and reverse;
an acquirer that keeps a LEDGER of held funds (an approval holds, the first matching reversal
releases, a second releases nothing, a reversal of an unknown original gets "25"); two links
that break; responses that are dropped or come late; and crashes that rebuild the core from
the journal records that survived (only what was persisted before the last acquirer send is
guaranteed durable; any later suffix may be lost).

The shell is modelled as the real one behaves (gateway/service.py): commands are carried out
in order, a send to the acquirer makes every earlier Persist durable, DeliveryResults are
handled right after the batch that asked for them.

After the run, faults stop, an operator requeues failed reversals, time runs until everything
settles, and ``check`` states THE INVARIANT (see ``Simulation.check``).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.clock import transmission_time
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
    AcquirerResponse,
    AuthorizationsFound,
    DeliveryResult,
    Event,
    FieldsRead,
    LinkDown,
    LinkUp,
    ReversalRequeued,
    TerminalClosed,
    TerminalRequest,
)
from gateway.core.mti import classify
from gateway.core.records import (
    OPEN_AUTH_STATES,
    OPEN_REVERSAL_STATES,
    AuthorizationRecord,
    AuthState,
    ReversalReason,
    ReversalRecord,
    ReversalState,
)
from gateway.core.reversal import original_data_elements
from gateway.core.settings import CoreSettings
from gateway.core.stan import seed_after
from gateway.wire.dialect import Dialect, ReversalRules
from gateway.wire.framing import Frame

T0 = 1_700_000_000.0
LINKS = (1, 2)
TERMINAL_TIMEOUT = 20.0
TERMINAL_REVERSAL_RETRY = 12.0
ACTIVE_SECONDS = 150.0
SETTLE_LIMIT = 5_000.0
SECRETS = ("35", "52", "55")
TRACK2_TAIL = "=27122011143804400000"
PIN_BLOCK = "8E4A3F0B1C2D3E4F"
ICC = "9F2608C2C12B098F3DA6E3"

Key = tuple[str | None, str | None, str | None]  # DE 41, acquirer-side DE 11, DE 7


def settings_for_simulation() -> CoreSettings:
    return CoreSettings(
        acquirer_timeout=5.0,
        reversal_timeout=3.0,
        retry_delays=(1.0, 2.0, 4.0),
        max_attempts=4,
        reversal_expiry=40.0,
        duplicate_window=10.0,
        reversal_drain_rate=20.0,
        history_window=30.0,
    )


def dialect_variant(rng: random.Random) -> Dialect:
    """Default (0400, new STAN, DE 90), CUP-like (original STAN, no DE 90) or 0420 advice."""
    choice = rng.randrange(3)
    if choice == 0:
        rules = ReversalRules()
    elif choice == 1:
        rules = ReversalRules(
            stan="original",
            original_data="none",
            reason_codes={
                "timeout": "98",
                "link_lost": "98",
                "undeliverable": "96",
                "in_doubt": "98",
                "terminal": "06",
                "other": "06",
            },
        )
    else:
        rules = ReversalRules(mti="0420")
    return Dialect(name=f"sim{choice}", description="", source="sim", spec={}, reversal=rules)


@dataclass(frozen=True)
class Faults:
    request_drop: float = 0.03  # a forward that never reaches the acquirer
    response_drop: float = 0.05
    response_late: float = 0.08  # answered after the acquirer timeout
    reversal_unresolved: float = 0.12  # the acquirer answers a reversal 91/96
    # The acquirer takes an authorization from its queue seconds late: a reversal sent on the
    # gateway's timeout overtakes it there and is answered "25" before the funds are held.
    processed_late: float = 0.04
    reroute: float = 0.3  # an answer whose link broke comes back on another link
    # A queued request's answer after the gateway process that sent it crashed: sent to the
    # new process (hosts that answer by station), else the acquirer reverses it itself.
    answered_by_station: float = 0.5
    duplicate: float = 0.15
    duplicate_on_new_conn: float = 0.4
    hang_up: float = 0.1
    write_fail: float = 0.03
    reverse_after_approval: float = 0.05  # card removed: the terminal reverses its approval
    # ... of those, sent once the gateway no longer remembers the sale (past its duplicate
    # window): under STAN rewrite the gateway reads the sale's acquirer STAN from the journal
    reversal_after_window: float = 0.3
    reverse_on_timeout: float = 0.6
    balance_inquiry: float = 0.1
    # A terminal starts its STANs again (a new business day) 90-120 s into the run: its sales
    # reuse the STANs of its first ones, half of them with the same amount.
    new_day: float = 0.3
    link_cuts: int = 2  # at most, per run
    crash: float = 0.4  # chance of a crash per run (a second one with this chance squared)


@dataclass
class Msg:
    """What a placeholder Frame stands for."""

    mti: str
    fields: Mapping[str, str]
    key: Key | None = None  # for responses to holding requests: the original at the acquirer
    holds: bool = False  # an approval that put a hold on funds


@dataclass
class Release:
    at: float
    cause: str  # a ReversalReason value, or "passthrough"
    reversal_id: int | None


@dataclass
class Original:
    """An authorization as the acquirer's ledger knows it."""

    key: Key
    amount: str
    day: str | None  # DE 13: with the terminal and STAN, what a reversal without DE 90 names
    code: str
    approval_code: str | None
    holds: bool
    held: bool
    releases: list[Release] = field(default_factory=list)
    reversals_seen: int = 0  # every reversal message that named it, releasing or not
    reversal_ids: list[int] = field(default_factory=list)
    reversed_at: float | None = None  # first answered 00 to one of the gateway's reversals
    passed_through: list[float] = field(default_factory=list)  # terminals' untied reversals


@dataclass
class TerminalTxn:
    mti: str
    fields: dict[str, str]
    started: float
    crash_epoch: int
    answered: str | None = None  # DE 39 the terminal received
    reversed: bool = False  # the terminal sent its own reversal of it


@dataclass
class Terminal:
    terminal_id: str
    stan: int
    conn: int | None = None
    txn: TerminalTxn | None = None
    reversal: dict[str, str] | None = None
    reversal_of: TerminalTxn | None = None  # the transaction its reversal is for
    reversal_tries: int = 0
    first_stan: int = 0  # where it starts its STANs again on a new day
    day: str = "1114"  # DE 13
    amounts: dict[str, str] = field(default_factory=dict)  # by STAN, of its last sale on it


class Acquirer:
    """The acquirer and its ledger of held funds."""

    def __init__(self, rng: random.Random, unresolved: float) -> None:
        self.rng = rng
        self.unresolved = unresolved
        self.originals: dict[Key, Original] = {}
        self.faulty = True
        self.unknown_reversals = 0
        self.not_found: list[Mapping[str, str]] = []  # reversals answered "25"
        self.overtaken = 0  # originals approved after a reversal of them was answered "25"
        self.answered_after_restart = 0  # queued answers sent to the gateway's next process

    def receive(
        self, mti: str, fields: Mapping[str, str], cause: str, reversal_id: int | None, now: float
    ) -> tuple[str, dict[str, str], Msg] | None:
        klass = mti[1]
        if klass in "12":
            return self._authorization(mti, fields)
        if klass == "4":
            return self._reversal(mti, fields, cause, reversal_id, now)
        if klass == "8":
            echo = {k: fields[k] for k in ("11", "41") if k in fields}
            return "0810", {**echo, "39": "00"}, Msg("0810", {})
        return None

    def _authorization(
        self, mti: str, fields: Mapping[str, str]
    ) -> tuple[str, dict[str, str], Msg]:
        """A first receipt holds funds if approved; a second one replays the answer."""
        key: Key = (fields.get("41"), fields.get("11"), fields.get("7"))
        holding = fields.get("3", "")[:2] != "31"
        original = self.originals.get(key)
        if original is None:
            approved = self.rng.random() < 0.75
            original = Original(
                key=key,
                amount=fields.get("4", ""),
                day=fields.get("13"),
                code="00" if approved else self.rng.choice(("05", "51")),
                approval_code=f"{self.rng.randrange(1_000_000):06d}" if approved else None,
                holds=approved and holding,
                held=approved and holding,
            )
            self.originals[key] = original
        answer = {k: fields[k] for k in ("3", "4", "7", "11", "12", "13", "41") if k in fields}
        answer["39"] = original.code
        if original.approval_code:
            answer["38"] = original.approval_code
        response = mti[:2] + str(int(mti[2]) + 1) + "0"
        return response, answer, Msg(response, answer, key=key, holds=original.holds)

    def _find(self, fields: Mapping[str, str]) -> Original | None:
        de90 = fields.get("90")
        terminal_id = fields.get("41")
        if de90 and de90.strip("0"):
            return self.originals.get((terminal_id, de90[4:10], de90[10:20]))
        day = fields.get("13")
        for original in reversed(self.originals.values()):  # the newest of a reused STAN
            if (
                original.key[0] == terminal_id
                and original.key[1] == fields.get("11")
                and original.amount == fields.get("4")
                and (day is None or original.day is None or original.day == day)
            ):
                return original
        return None

    def was_not_found(self, original: Original) -> bool:
        """A reversal of it came first and was answered "25"."""
        return any(self._find(reversal) is original for reversal in self.not_found)

    def stand_in(self, answer: Msg, now: float) -> None:
        """Release the hold of an approval this host could not deliver."""
        original = self.originals.get(answer.key) if answer.key is not None else None
        if original is not None and original.held:
            original.held = False
            original.releases.append(Release(now, "acquirer", None))

    def _reversal(
        self, mti: str, fields: Mapping[str, str], cause: str, reversal_id: int | None, now: float
    ) -> tuple[str, dict[str, str], Msg]:
        response = mti[:2] + str(int(mti[2]) + 1) + "0"
        # As sent, like a CUP host: what tells apart two reversals with one terminal and STAN
        echo = {k: fields[k] for k in ("11", "12", "13", "37", "41") if k in fields}
        if self.faulty and self.rng.random() < self.unresolved:
            return response, {**echo, "39": self.rng.choice(("91", "96"))}, Msg(response, {})
        original = self._find(fields)
        if original is None:
            self.unknown_reversals += 1
            self.not_found.append(fields)
            return response, {**echo, "39": "25"}, Msg(response, {})
        original.reversals_seen += 1
        if reversal_id is not None and reversal_id not in original.reversal_ids:
            original.reversal_ids.append(reversal_id)
        if reversal_id is not None and original.reversed_at is None:
            original.reversed_at = now
        if cause == "passthrough":
            original.passed_through.append(now)
        if original.held:
            original.held = False
            original.releases.append(Release(now, cause, reversal_id))
        return response, {**echo, "39": "00"}, Msg(response, {})


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        core_class: type[GatewayCore] = GatewayCore,
        faults: Faults | None = None,
        settings: CoreSettings | None = None,
        terminals: int = 3,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.core_class = core_class
        self.faults = faults or Faults()
        self.dialect = dialect_variant(self.rng)
        self.fields_read = FieldsRead.of(self.dialect)
        self.stan_mode = "rewrite" if self.rng.random() < 0.35 else "passthrough"
        self.link_strategy = "round_robin" if self.rng.random() < 0.5 else "primary"
        self.settings = dataclasses.replace(
            settings or settings_for_simulation(),
            stan_mode=self.stan_mode,
            link_strategy=self.link_strategy,
        )
        self.now = T0
        self.queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.trace_on = trace
        self.trace: list[str] = []
        self.violations: list[str] = []
        self.acquirer = Acquirer(self.rng, self.faults.reversal_unresolved)
        self.forwarded: dict[tuple[int, tuple[str | None, ...]], int] = {}
        self.forwarded_ever: set[tuple[str | None, ...]] = set()
        self.answers: dict[tuple[int, tuple[str | None, ...]], str | None] = {}
        self.notices: dict[str, int] = {}  # what happened, by kind and outcome: coverage
        # (DE 41, DE 11) of approvals the gateway flagged as holds it cannot reverse
        self.alerted: set[tuple[str | None, str | None]] = set()
        self.alerted_holds = 0
        self.lookups_found_delivered = 0  # FindAuthorizations that found a delivered sale
        self.frames: dict[bytes, Msg] = {}
        self.journal: list[AuthorizationRecord | ReversalRecord] = []
        self.durable = 0
        # ReserveStans puts: (journal length when put, last STAN of the block)
        self.stan_reservations: list[tuple[int, str]] = []
        # STAN -> (incarnation that first sent it, the original it was sent for)
        self.rewritten_stans: dict[str, tuple[int, tuple[str | None, ...]]] = {}
        self.incarnation = 0
        self.crash_epoch = 0
        self.link_up = dict.fromkeys(LINKS, True)
        self.link_session = dict.fromkeys(LINKS, 0)
        self.next_conn = 1
        self.conns: dict[int, Terminal] = {}
        self.txn_keys: dict[int, Key] = {}
        self.delivered: dict[Key, float] = {}  # approvals a terminal received (delivery ok)
        # DE 38 of each, by the terminal's DE 41/11/7/4
        self.delivered_answers: dict[tuple[str | None, ...], str | None] = {}
        self.delivered_lost: set[Key] = set()  # their DELIVERED record was lost in a crash
        self.failed_reversals: list[int] = []
        self.active = True
        self.crashes = 0
        self.terminals = [
            Terminal(f"T{n:07d}", stan=self.rng.randrange(1, 900_000)) for n in range(terminals)
        ]
        for terminal in self.terminals:
            terminal.first_stan = terminal.stan
        # The original at the acquirer of each request the gateway forwarded, by the terminal's
        # DE 41, 11, 7, 4; and those a terminal's own reversal named.
        self.acquirer_key_of: dict[tuple[str | None, ...], Key] = {}
        self.reversal_intents: set[Key] = set()
        self.core = self._new_core([], [], 1, 1)
        for link_id in LINKS:
            self._to_core(LinkUp(link_id))

    # the event queue -------------------------------------------------------------------------

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (when, self.seq, action, args))

    def _log(self, text: str) -> None:
        if self.trace_on:
            self.trace.append(f"{self.now - T0:9.3f} {text}")

    def run(self) -> list[str]:
        for terminal in self.terminals:
            self.at(self.now + self.rng.uniform(0, 5), self._start_txn, terminal)
            if self.rng.random() < self.faults.new_day:
                self.at(T0 + self.rng.uniform(90, 120), self._new_day, terminal)
        for _ in range(self.rng.randint(0, self.faults.link_cuts)):
            self.at(
                T0 + self.rng.uniform(0, ACTIVE_SECONDS), self._cut_link, self.rng.choice(LINKS)
            )
        if self.rng.random() < self.faults.crash:
            self.at(T0 + self.rng.uniform(5, ACTIVE_SECONDS), self._crash)
            if self.rng.random() < self.faults.crash:
                self.at(T0 + self.rng.uniform(5, ACTIVE_SECONDS), self._crash)
        self.at(T0 + ACTIVE_SECONDS, self._calm_down)
        self._loop(T0 + ACTIVE_SECONDS + SETTLE_LIMIT)
        self.check()
        return self.violations

    def _loop(self, until: float) -> None:
        while True:
            core_due = self.core.next_deadline()
            sim_due = self.queue[0][0] if self.queue else None
            if core_due is None and sim_due is None:
                return
            if sim_due is None or (core_due is not None and core_due < sim_due):
                assert core_due is not None
                if core_due > until:
                    return
                self.now = max(self.now, core_due)
                self._execute(self.core.on_timer(self.now))
            else:
                if sim_due > until:
                    return
                when, _, action, args = heapq.heappop(self.queue)
                self.now = max(self.now, when)
                action(*args)
            if not self.active and self._settled():
                return

    @property
    def _awaited(self) -> tuple[Callable[..., None], ...]:
        """What a settled run still waits for: the acquirer's queued work and answers (an
        approval may still arrive and hold funds), an operator's requeue."""
        return (self._requeue, self._process_late, self._acquirer_answers)

    def _settled(self) -> bool:
        stats = self.core.stats()
        return (
            not stats["in_flight"]
            and not stats["reversals_owed"]
            and not stats["reversals_failed"]
            and not stats["authorizations_open"]
            and all(self.link_up.values())
            and not any(event[2] in self._awaited for event in self.queue)
        )

    # the shell ---------------------------------------------------------------------------------

    def _new_core(
        self,
        auths: list[AuthorizationRecord],
        revs: list[ReversalRecord],
        next_txn_id: int,
        next_reversal_id: int,
        reversed_recently: Iterable[tuple[AuthorizationRecord, ReversalRecord]] = (),
        closed_recently: Iterable[AuthorizationRecord] = (),
    ) -> GatewayCore:
        return self.core_class(
            self.dialect,
            self.settings,
            now=self.now,
            open_authorizations=auths,
            open_reversals=revs,
            reversed_recently=reversed_recently,
            closed_recently=closed_recently,
            next_txn_id=next_txn_id,
            next_reversal_id=next_reversal_id,
            stan_seed=seed_after(
                self.stan_reservations[-1][1] if self.stan_reservations else None,
                self.rng.randrange(1, 999_999),
            ),
        )

    def _to_core(self, event: Event, incarnation: int | None = None) -> None:
        if incarnation is not None and incarnation != self.incarnation:
            return  # addressed to a core that crashed
        self._log(f"-> {event!r}"[:200])
        self._execute(self.core.handle(event, self.now))

    def _execute(self, commands: list[Command]) -> None:
        results: list[DeliveryResult] = []
        sending: ReversalRecord | None = None
        for command in commands:
            self._log(f"<- {type(command).__name__} {_brief(command)}")
            if isinstance(command, Persist):
                record = command.record
                self._check_record(record)
                self.journal.append(record)
                if command.urgent:  # the shell commits it at once
                    self.durable = len(self.journal)
                if isinstance(record, AuthorizationRecord) and record.state is AuthState.IN_FLIGHT:
                    self.txn_keys[record.txn_id] = (
                        record.terminal_id,
                        record.acquirer_stan,
                        record.reversal_fields.get("7"),
                    )
                if isinstance(record, ReversalRecord) and record.state is ReversalState.SENT:
                    sending = record
            elif isinstance(command, ReserveStans):
                self.stan_reservations.append((len(self.journal), command.last_stan))
            elif isinstance(command, ForwardToAcquirer):
                self.durable = len(self.journal)
                msg = self.frames[command.frame.message]
                self._check_rewritten_stan(command.replace.get("11"), msg)
                fields = {**msg.fields, **command.replace}
                if msg.mti[1] in "12":
                    self._count_forward(msg)
                    self.acquirer_key_of[_terminal_identity(msg.fields)] = (
                        fields.get("41"),
                        fields.get("11"),
                        fields.get("7"),
                    )
                reversal = sending if msg.mti[1] == "4" else None
                sending = None
                self._to_acquirer(command.link_id, msg.mti, fields, reversal)
            elif isinstance(command, SendToAcquirer):
                self.durable = len(self.journal)
                if sending is None or command.fields.get("11") != sending.stan:
                    self.violations.append(f"reversal sent without its SENT record: {command}")
                self._to_acquirer(command.link_id, command.mti, dict(command.fields), sending)
                sending = None
            elif isinstance(command, ForwardToTerminal):
                msg = self.frames[command.frame.message]
                fields = {**msg.fields, **command.replace}
                ok = self._to_terminal(command.conn_id, msg.mti, fields)
                if msg.holds and msg.key is not None:
                    if command.delivery_ref is None and msg.key not in self.delivered and ok:
                        self.violations.append(f"approval {msg.key} reached a terminal untracked")
                    if command.delivery_ref is not None and ok:
                        self.delivered.setdefault(msg.key, self.now)
                        self.delivered_answers[_terminal_identity(fields)] = fields.get("38")
                if command.delivery_ref is not None:
                    results.append(DeliveryResult(command.delivery_ref, ok))
            elif isinstance(command, ReplyToTerminal):
                if command.mti[1] in "12" and command.fields.get("39") == "00":
                    # Only an approval a terminal received, answered again to its resend.
                    identity = _terminal_identity(command.fields)
                    approval_code = self.delivered_answers.get(identity, "")
                    if approval_code != command.fields.get("38"):
                        self.violations.append(f"the gateway approved by itself: {command}")
                ok = self._to_terminal(command.conn_id, command.mti, dict(command.fields))
                if command.delivery_ref is not None:
                    results.append(DeliveryResult(command.delivery_ref, ok))
            elif isinstance(command, Notify):
                self._check_notice(command)
            elif isinstance(command, FindAuthorizations):
                incarnation = self.incarnation
                delay = self.rng.uniform(0.001, 0.05)
                self.at(self.now + delay, self._find_authorizations, command, incarnation)
            else:
                raise TypeError(f"the simulation's shell does not know {command!r}")
        for result in results:
            self._to_core(result)

    def _find_authorizations(self, command: FindAuthorizations, incarnation: int) -> None:
        """What ``Journal.find_authorizations`` reads: committed records only."""
        latest: dict[int, AuthorizationRecord] = {}
        for record in self.journal[: self.durable]:
            if isinstance(record, AuthorizationRecord):
                latest[record.txn_id] = record
        found = tuple(
            record
            for txn_id, record in sorted(latest.items(), reverse=True)
            if (record.terminal_id, record.stan) == (command.terminal_id, command.stan)
        )
        if incarnation == self.incarnation and any(
            record.state is AuthState.DELIVERED for record in found
        ):
            self.lookups_found_delivered += 1
        self._to_core(AuthorizationsFound(command.terminal_id, command.stan, found), incarnation)

    def _check_rewritten_stan(self, stan: str | None, msg: Msg) -> None:
        """A STAN the gateway allocated is never sent again by a restarted gateway for another
        transaction (the acquirer may still remember it): allocation resumes past the
        journaled reservation. A reversal may carry its original's STAN (``stan =
        "original"``), also after a restart."""
        if stan is None:
            return
        de90 = msg.fields.get("90")
        named = de90[4:10] if msg.mti[1] == "4" and de90 and de90.strip("0") else None
        original = (msg.fields.get("41"), named or msg.fields.get("11"), msg.fields.get("4"))
        first, owner = self.rewritten_stans.setdefault(stan, (self.incarnation, original))
        if first != self.incarnation and owner != original:
            self.violations.append(f"STAN {stan} of incarnation {first} sent again after a restart")

    def _count_forward(self, msg: Msg) -> None:
        """A request is never forwarded twice. A journaled (reversible) one: across restarts
        too, since terminals resend within the duplicate window and a restarted core
        remembers those requests from the journal. A balance inquiry is not journaled: a
        restart forgets it (a second one holds nothing)."""
        identity = _terminal_identity(msg.fields)
        self.forwarded_ever.add(identity)
        reversible = self.dialect.is_reversible(msg.mti[:3] + "0", msg.fields.get("3"))
        key = (0 if reversible else self.incarnation, identity)
        self.forwarded[key] = self.forwarded.get(key, 0) + 1
        if self.forwarded[key] > 1:
            self.violations.append(f"request {identity} forwarded twice")

    def _check_record(self, record: AuthorizationRecord | ReversalRecord) -> None:
        mapping = (
            record.reversal_fields if isinstance(record, AuthorizationRecord) else record.fields
        )
        leaked = [n for n in SECRETS if n in mapping]
        values = " ".join(mapping.values())
        if leaked or TRACK2_TAIL in values or PIN_BLOCK in values or ICC in values:
            self.violations.append(f"card secrets journaled in {type(record).__name__}: {leaked}")

    def _check_notice(self, notice: Notify) -> None:
        label = notice.kind
        for detail in ("outcome", "reason"):
            if detail in notice.data:
                label += f":{notice.data[detail]}"
        self.notices[label] = self.notices.get(label, 0) + 1
        text = repr(notice.data)
        for terminal in self.terminals:
            if _pan(terminal.terminal_id) in text:
                self.violations.append(f"full PAN in a {notice.kind} notice")
        if notice.kind == "unmatched_response" and notice.data["may_hold"]:
            self.alerted.add((notice.data["terminal_id"], notice.data["stan"]))
        if notice.kind == "reversal_failed":
            reversal_id = notice.data["reversal_id"]
            if not self.active:
                self.at(self.now + 1.0, self._requeue, reversal_id, self.incarnation)
            else:
                self.failed_reversals.append(reversal_id)

    def _requeue(self, reversal_id: int, incarnation: int) -> None:
        self._to_core(ReversalRequeued(reversal_id), incarnation)

    # the network -------------------------------------------------------------------------------

    def _frame(self, msg: Msg) -> Frame:
        self.seq += 1
        message = f"m{self.seq}".encode()
        self.frames[message] = msg
        return Frame(message=message)

    def _to_acquirer(
        self, link_id: int, mti: str, fields: dict[str, str], reversal: ReversalRecord | None
    ) -> None:
        if not self.link_up[link_id]:
            return  # written to a broken connection: lost
        if self.active and self.rng.random() < self.faults.request_drop:
            return
        cause = reversal.reason.value if reversal is not None else "passthrough"
        reversal_id = reversal.reversal_id if reversal is not None else None
        session = self.link_session[link_id]
        if self.active and mti[1] in "12" and self.rng.random() < self.faults.processed_late:
            # Around the acquirer timeout (5 s). Its answer (at most 2 s later) then comes
            # within duplicate_window (10 s) of the "25" to a reversal that overtook it: an
            # approval later than that goes unmatched (docs/reversal.md).
            delay = self.rng.uniform(4.0, 8.0)
            self.at(
                self.now + delay,
                self._process_late,
                link_id,
                session,
                self.incarnation,
                mti,
                fields,
            )
            return
        answered = self.acquirer.receive(mti, fields, cause, reversal_id, self.now)
        if answered is None:
            return
        response_mti, response, msg = answered
        delay = self.rng.uniform(0.01, 2.0)
        if self.active:
            roll = self.rng.random()
            if roll < self.faults.response_drop:
                return
            if roll < self.faults.response_drop + self.faults.response_late:
                delay = self.rng.uniform(5.5, 30.0)
        msg.fields = response
        self.at(self.now + delay, self._acquirer_answers, link_id, session, msg, response_mti)

    def _process_late(
        self, link_id: int, session: int, incarnation: int, mti: str, fields: dict[str, str]
    ) -> None:
        """The acquirer processes a request it queued (Faults.processed_late) and answers it
        promptly. An approval it cannot deliver it reverses itself, as hosts do: after the
        gateway's own reversal was answered "25", no gateway could know of that hold."""
        acquirer = self.acquirer
        answered = acquirer.receive(mti, fields, "passthrough", None, self.now)
        assert answered is not None
        response_mti, response, msg = answered
        original = acquirer.originals.get(msg.key) if msg.key is not None else None
        if original is not None and original.holds and acquirer.was_not_found(original):
            acquirer.overtaken += 1
        msg.fields = response
        delay = self.rng.uniform(0.01, 2.0)
        self.at(
            self.now + delay,
            self._acquirer_answers,
            link_id,
            session,
            msg,
            response_mti,
            incarnation,
        )

    def _acquirer_answers(
        self, link_id: int, session: int, msg: Msg, mti: str, incarnation: int | None = None
    ) -> None:
        """``incarnation``: the gateway process a queued request came from (Faults.processed_late):
        its answer goes to another connection only while that process lives, and one that
        cannot be delivered the acquirer reverses itself."""
        if self.link_session[link_id] != session or not self.link_up[link_id]:
            live = [other for other in LINKS if self.link_up[other]]
            if incarnation not in (None, self.incarnation):
                # Sent by a gateway process that is gone: a host that answers by station
                # sends it to the new process, one that does not reverses it itself.
                by_station = self.rng.random() < self.faults.answered_by_station
                if not live or not by_station:
                    self.acquirer.stand_in(msg, self.now)
                    return
                link_id = live[0]
                self.acquirer.answered_after_restart += 1
            else:
                # The connection it was written to is gone; some hosts answer on another one.
                others = [other for other in live if other != link_id]
                rerouted = self.active and self.rng.random() < self.faults.reroute
                if not others or not rerouted:
                    if incarnation is not None:
                        self.acquirer.stand_in(msg, self.now)
                    return
                link_id = others[0]
        read = self.fields_read  # what the service extracts, no more
        fields = {
            name: value
            for name, value in msg.fields.items()
            if name in read.response or name in read.response_later
        }
        self._to_core(AcquirerResponse(link_id, mti, fields, self._frame(msg)))

    def _cut_link(self, link_id: int) -> None:
        if not self.active or not self.link_up[link_id]:
            return
        self.link_up[link_id] = False
        self.link_session[link_id] += 1
        incarnation = self.incarnation
        self.at(self.now + self.rng.uniform(0, 0.3), self._to_core, LinkDown(link_id), incarnation)
        self.at(self.now + self.rng.uniform(1, 15), self._reconnect, link_id, incarnation)

    def _reconnect(self, link_id: int, incarnation: int) -> None:
        if incarnation != self.incarnation or self.link_up[link_id]:
            return
        self.link_up[link_id] = True
        self._to_core(LinkUp(link_id))

    # crashes -------------------------------------------------------------------------------------

    def _crash(self) -> None:
        if not self.active:
            return
        self.crashes += 1
        self.crash_epoch += 1
        keep = self.durable + self.rng.randint(0, len(self.journal) - self.durable)
        lost = self.journal[keep:]
        self.journal = self.journal[:keep]
        self.durable = keep
        self.stan_reservations = [r for r in self.stan_reservations if r[0] <= keep]
        self._log(f"CRASH: {len(lost)} journal records lost")
        for record in lost:
            if isinstance(record, AuthorizationRecord) and record.state is AuthState.DELIVERED:
                key = self.txn_keys.get(record.txn_id)
                if key is not None:
                    self.delivered_lost.add(key)
        self.incarnation += 1
        for link_id in LINKS:
            self.link_up[link_id] = False
            self.link_session[link_id] += 1
        for conn_id, terminal in list(self.conns.items()):
            if terminal.conn == conn_id:
                terminal.conn = None
        self.conns.clear()
        auths: dict[int, AuthorizationRecord] = {}
        revs: dict[int, ReversalRecord] = {}
        for record in self.journal:
            if isinstance(record, AuthorizationRecord):
                auths[record.txn_id] = record
            else:
                revs[record.reversal_id] = record
        since = self.now - self.settings.history_window
        self.core = self._new_core(
            [a for a in auths.values() if a.state in OPEN_AUTH_STATES],
            [r for r in revs.values() if r.state in OPEN_REVERSAL_STATES],
            max(auths, default=0) + 1,
            max(revs, default=0) + 1,
            # what Journal.load_reversed_since gives the restarted gateway
            [
                (auths[r.txn_id], r)
                for r in revs.values()
                if (
                    (r.state is ReversalState.ACKNOWLEDGED and r.updated_at >= since)
                    or r.state in OPEN_REVERSAL_STATES
                )
                and r.txn_id in auths
                and auths[r.txn_id].state not in OPEN_AUTH_STATES
            ],
            # what Journal.load_closed_since gives it
            [
                a
                for a in auths.values()
                if a.state not in OPEN_AUTH_STATES
                and a.updated_at >= self.now - self.settings.duplicate_window
            ],
        )
        self._execute(self.core.recover(self.now))
        incarnation = self.incarnation
        for link_id in LINKS:
            self.at(self.now + self.rng.uniform(0.5, 3), self._reconnect, link_id, incarnation)

    def _calm_down(self) -> None:
        """Faults stop, links come back, an operator requeues what failed."""
        self.active = False
        self.acquirer.faulty = False
        for link_id in LINKS:
            if not self.link_up[link_id]:
                self.at(self.now + 1.0, self._reconnect, link_id, self.incarnation)
        for reversal_id in self.failed_reversals:
            self.at(self.now + 1.0, self._requeue, reversal_id, self.incarnation)
        self.failed_reversals = []

    # terminals ------------------------------------------------------------------------------------

    def _connect(self, terminal: Terminal) -> int:
        if terminal.conn is None:
            terminal.conn = self.next_conn
            self.next_conn += 1
            self.conns[terminal.conn] = terminal
        return terminal.conn

    def _hang_up(self, terminal: Terminal, conn_id: int) -> None:
        if terminal.conn != conn_id:
            return
        terminal.conn = None
        self.conns.pop(conn_id, None)
        self._to_core(TerminalClosed(conn_id))

    def _send(self, terminal: Terminal, mti: str, fields: dict[str, str], conn_id: int) -> None:
        # What the service extracts, no more: the core must work with what the shell hands it.
        read = self.fields_read
        names = read.terminal_reversal if classify(mti).reversal else read.request
        extracted = {name: value for name, value in fields.items() if name in names}
        self._to_core(TerminalRequest(conn_id, mti, extracted, self._frame(Msg(mti, fields))))

    def _new_day(self, terminal: Terminal) -> None:
        terminal.stan = terminal.first_stan
        terminal.day = "1115"

    def _next_stan(self, terminal: Terminal) -> str:
        terminal.stan = terminal.stan % 999_999 + 1
        return f"{terminal.stan:06d}"

    def _start_txn(self, terminal: Terminal) -> None:
        if not self.active or terminal.txn is not None:
            return
        rng = self.rng
        inquiry = rng.random() < self.faults.balance_inquiry
        stan = self._next_stan(terminal)
        amount = f"{rng.randrange(100, 100_000):012d}"
        if stan in terminal.amounts and rng.random() < 0.5:
            amount = terminal.amounts[stan]  # what only DE 13 (or the sale's age) tells apart
        terminal.amounts[stan] = amount
        fields = {
            "3": "310000" if inquiry else "000000",
            "4": amount,
            "7": transmission_time(self.now),
            "11": stan,
            "12": "120000",
            "13": terminal.day,
            "22": "051",
            "32": "200",
            "41": terminal.terminal_id,
            "42": "MERCHANT0000001",
            "49": "978",
            "52": PIN_BLOCK,
            "55": ICC,
        }
        if rng.random() < 0.3:
            fields["35"] = _pan(terminal.terminal_id) + TRACK2_TAIL  # track 2 only
        else:
            fields["2"] = _pan(terminal.terminal_id)
        mti = rng.choice(("0100", "0200"))
        txn = TerminalTxn(mti, fields, self.now, self.crash_epoch)
        terminal.txn = txn
        conn_id = self._connect(terminal)
        self._send(terminal, mti, fields, conn_id)
        self.at(self.now + TERMINAL_TIMEOUT, self._terminal_timeout, terminal, txn)
        if rng.random() < self.faults.duplicate:
            self.at(self.now + rng.uniform(0.05, 8), self._resend, terminal, txn)
        if rng.random() < self.faults.hang_up:
            self.at(self.now + rng.uniform(0, 7), self._hang_up, terminal, conn_id)

    def _resend(self, terminal: Terminal, txn: TerminalTxn) -> None:
        if not self.active or txn.reversed:
            return
        if self.rng.random() < self.faults.duplicate_on_new_conn and terminal.conn is not None:
            terminal.conn = None  # leaves the old connection open, talks on a new one
        mti = txn.mti if self.rng.random() < 0.5 else txn.mti[:3] + "1"
        self._send(terminal, mti, txn.fields, self._connect(terminal))

    def _terminal_timeout(self, terminal: Terminal, txn: TerminalTxn) -> None:
        if terminal.txn is not txn:
            return
        terminal.txn = None
        if self.active and self.rng.random() < self.faults.reverse_on_timeout:
            self._terminal_reverses(terminal, txn)
        self._next_txn_later(terminal)

    def _next_txn_later(self, terminal: Terminal) -> None:
        if self.active:
            self.at(self.now + self.rng.uniform(1, 10), self._start_txn, terminal)

    def _terminal_reverses(self, terminal: Terminal, txn: TerminalTxn) -> None:
        """The terminal's own reversal: DE 90 style, or CUP style (the original's STAN)."""
        txn.reversed = True
        original = txn.fields
        fields = {
            k: original[k] for k in ("2", "3", "4", "13", "32", "41", "42", "49") if k in original
        }
        if "2" not in fields:
            fields["35"] = original["35"]
        intended = self.acquirer_key_of.get(_terminal_identity(original))
        if intended is not None:
            self.reversal_intents.add(intended)
        if self.dialect.reversal.original_data == "de90":
            fields["11"] = self._next_stan(terminal)
            fields["90"] = original_data_elements(
                txn.mti, original["11"], original["7"], original["32"], None
            )
        else:
            fields["11"] = original["11"]
        fields["7"] = transmission_time(self.now)
        fields["39"] = "98" if txn.answered is None else "96"
        terminal.reversal = fields
        terminal.reversal_of = txn
        terminal.reversal_tries = 0
        self._send_reversal(terminal, fields)

    def _send_reversal(self, terminal: Terminal, fields: dict[str, str]) -> None:
        if not self.active or terminal.reversal is not fields:
            return
        mti = self.dialect.reversal.mti
        if terminal.reversal_tries:
            mti = mti[:3] + "1"
        terminal.reversal_tries += 1
        self._send(terminal, mti, fields, self._connect(terminal))
        if terminal.reversal_tries < 3:
            self.at(self.now + TERMINAL_REVERSAL_RETRY, self._send_reversal, terminal, fields)

    def _to_terminal(self, conn_id: int, mti: str, fields: dict[str, str]) -> bool:
        """A write to a terminal connection: fails if it is closed (or by a fault)."""
        terminal = self.conns.get(conn_id)
        if terminal is None:
            return False
        if self.active and self.rng.random() < self.faults.write_fail:
            return False
        self._terminal_receives(terminal, mti, fields)
        return True

    def _terminal_receives(self, terminal: Terminal, mti: str, fields: dict[str, str]) -> None:
        if mti[1] == "4":
            reversal = terminal.reversal
            if reversal is not None and fields.get("11") == reversal["11"]:
                terminal.reversal = None
                if (
                    reversal["39"] == "96"
                    and fields.get("39") in self.dialect.reversal.not_found_codes
                    and terminal.reversal_of is not None
                    and self.dialect.is_reversible(
                        terminal.reversal_of.mti, terminal.reversal_of.fields.get("3")
                    )
                ):
                    # It received the approval of a sale, so the acquirer holds it: "not
                    # found" means the reversal named it wrong (a terminal's STAN the acquirer
                    # never saw) and the hold stays.
                    self.violations.append(
                        f"terminal {terminal.terminal_id}'s reversal of the approval it received "
                        f"was answered {fields.get('39')}: {reversal}"
                    )
            return
        code = fields.get("39")
        identity = (terminal.terminal_id, fields.get("11"), fields.get("7"), fields.get("4"))
        if identity in self.forwarded_ever:
            # Once a request went upstream, every answer the terminal gets for it from one
            # process agrees (across a crash, a lost DELIVERED record turns it in doubt).
            first = self.answers.setdefault((self.incarnation, identity), code)
            if first != code:
                self.violations.append(f"terminal got {first} then {code} for {identity}")
        txn = terminal.txn
        if txn is None or fields.get("11") != txn.fields["11"]:
            return
        for name in ("4", "7"):  # echoed as sent: another transaction's answer shows here
            if fields.get(name, txn.fields[name]) != txn.fields[name]:
                self.violations.append(
                    f"terminal {terminal.terminal_id} got the answer of another transaction "
                    f"with its STAN {txn.fields['11']} (DE {name})"
                )
        txn.answered = code
        terminal.txn = None
        if code == "00" and self.active and self.rng.random() < self.faults.reverse_after_approval:
            delay = self.rng.uniform(0, 3)
            if self.rng.random() < self.faults.reversal_after_window:
                delay += self.settings.duplicate_window + 1
            self.at(self.now + delay, self._terminal_reverses, terminal, txn)
        self._next_txn_later(terminal)

    # the invariant -------------------------------------------------------------------------

    def check(self) -> None:
        """THE INVARIANT, once everything settled:

        1. Every hold left on the ledger belongs to an approval a terminal received (written
           to it with a successful DeliveryResult). One exception, counted as
           ``alerted_holds``: the gateway's reversal overtook the original ("25"), the
           gateway restarted before the original's approval came, and the approval came to
           the new process, which knows no request of it (the old one's answered reversal
           left nothing in the journal to reopen). The gateway must have flagged that
           approval ``may_hold`` (the UnmatchedApproval alert): operations reverse it.
        2. No original is reversed twice: at most one of the gateway's reversals (one
           reversal id) reached the acquirer per original; the ledger released at most once.
        3. No reversal of the gateway's own released a delivered approval, except an in-doubt
           reversal after a crash that lost the DELIVERED record (the rules accept that).
           A terminal's own reversal may release what it received: it asked for it, but only
           the transaction it named (terminals start their STANs again on a new day, so an
           older sale with the terminal's STAN, and maybe its amount, is not the one).
        4. Nothing is left owed: no open authorization, no owed or failed reversal.
        """
        v = self.violations
        stats = self.core.stats()
        for name in ("in_flight", "reversals_owed", "reversals_failed", "authorizations_open"):
            if stats[name]:
                v.append(f"not settled: {name}={stats[name]}")
        for key, original in self.acquirer.originals.items():
            if original.held and key not in self.delivered:
                if key[:2] in self.alerted and self.acquirer.was_not_found(original):
                    self.alerted_holds += 1
                else:
                    v.append(f"hold left for {key}: approval never reached a terminal")
            if len(original.releases) > 1:
                v.append(f"{key} released {len(original.releases)} times")
            if len(original.reversal_ids) > 1:
                v.append(f"{key} reversed by {original.reversal_ids}: more than one reversal")
            # Within history_window of its reversal (give or take a delayed answer), the
            # gateway knows the original, across restarts too: a terminal's reversal of it is
            # answered or merged, never passed upstream as another reversal.
            window = self.settings.history_window
            for at in original.passed_through:
                if original.reversed_at is not None and 5 < at - original.reversed_at < window - 5:
                    v.append(
                        f"{key} reversed again by a terminal's reversal passed through "
                        f"{at - original.reversed_at:.1f} s after the gateway's"
                    )
            for release in original.releases:
                if (
                    release.cause in ("terminal", "passthrough")
                    and key not in self.reversal_intents
                ):
                    v.append(f"{key} released by a terminal's reversal of another transaction")
                if key not in self.delivered or release.cause in ("terminal", "passthrough"):
                    continue
                accepted = (
                    release.cause == ReversalReason.IN_DOUBT.value and key in self.delivered_lost
                )
                if not accepted:
                    v.append(
                        f"delivered approval {key} released by a {release.cause} reversal "
                        f"(reversal {release.reversal_id})"
                    )

    def summary(self) -> dict[str, int]:
        originals = self.acquirer.originals.values()
        return {
            "originals": len(self.acquirer.originals),
            "holds": sum(1 for o in originals if o.holds),
            "held_at_end": sum(1 for o in originals if o.held),
            "released": sum(1 for o in originals if o.releases),
            "delivered": len(self.delivered),
            "delivered_lost": len(self.delivered_lost),
            "crashes": self.crashes,
            "overtaken": self.acquirer.overtaken,
            "answered_after_restart": self.acquirer.answered_after_restart,
            "alerted_holds": self.alerted_holds,
            "lookups_found_delivered": self.lookups_found_delivered,
        }


def _pan(terminal_id: str) -> str:
    return "47617390" + terminal_id[-7:].rjust(8, "0")


def _terminal_identity(fields: Mapping[str, str]) -> tuple[str | None, ...]:
    """A request as its terminal knows it (DE 11 is the terminal's own, under STAN rewrite
    too), and its answers: DE 41, 11, 7, 4."""
    return tuple(fields.get(k) for k in ("41", "11", "7", "4"))


def _brief(command: Command) -> str:
    if isinstance(command, Persist):
        r = command.record
        ident = r.txn_id if isinstance(r, AuthorizationRecord) else f"r{r.reversal_id}"
        return f"{type(r).__name__[:4]} {ident} {r.state.value}"
    if isinstance(command, SendToAcquirer | ReplyToTerminal):
        return f"{command.mti} {dict(command.fields).get('11')} {dict(command.fields).get('39')}"
    if isinstance(command, Notify):
        return f"{command.kind} {dict(command.data)}"
    return repr(command)[:160]


def run_seed(seed: int, **options: Any) -> Simulation:
    sim = Simulation(seed, **options)
    sim.run()
    return sim
