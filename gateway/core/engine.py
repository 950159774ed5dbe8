"""GatewayCore: every decision of the gateway, as a sans-IO state machine.

Events and the current wall-clock time go in; commands come out in the order they must be
carried out (docs: reversal-rules.md). The core never reads a clock, sleeps or does I/O: its
timers are deadlines that the shell honours through ``next_deadline`` and ``on_timer``.

What it tracks (gateway/core/tracking.py): ``Pending`` requests on the wire, which linger
``duplicate_window`` seconds after their answer to serve duplicates and recognise late
responses; journaled ``Authorization``s; and their ``Reversal``s, each with its own timer so
that one stuck reversal never holds up another.

Choices where the rules leave room:

- Link choice: the lowest ``link_id`` that is up, or each link up in turn (``link_strategy``).
- Approval: DE 39 in ``settings.approval_codes``; anything else (or no DE 39) is a decline.
- A response is found by its MTI and DE 11 (one dict lookup), then compared on the other
  match fields both sides carry; a request still awaiting its answer wins over one answered.
- ``delivery_ref`` values are the core's own counter, one per write: an approval can go to
  several connections (duplicates), and it is delivered if any of the writes succeeds.
- Persist order: a new reversal is journaled before its authorization turns REVERSING, and an
  authorization is closed before its reversal. After a crash (the journal keeps a prefix of
  what was persisted) an open reversal always finds its authorization open or closed, and an
  open authorization without a reversal is in doubt.
- A reversal sent on a link that broke goes again as a repeat, not counted as a failure.
- ``reversal_drain_rate`` paces the reversals that waited for a link (or were recovered,
  requeued, or lost their link), not the first attempt of a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypedDict, TypeGuard

from gateway.core import notices
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
from gateway.core.events import (
    UNREADABLE,
    AcquirerResponse,
    AuthorizationsFound,
    DeliveryResult,
    Draining,
    Event,
    LinkDown,
    LinkUp,
    ReversalRequeued,
    TerminalClosed,
    TerminalRequest,
)
from gateway.core.keys import (
    DuplicateKey,
    FieldValues,
    RepeatKey,
    duplicate_key,
    repeat_key,
    values_agree,
    values_of,
)
from gateway.core.mti import (
    MtiInfo,
    attempt_mti,
    base_mti,
    classify,
    is_valid_mti,
    request_mti,
    response_mti,
)
from gateway.core.records import (
    CARD_DATA_FIELDS,
    OPEN_AUTH_STATES,
    AuthorizationRecord,
    AuthState,
    ReversalReason,
    ReversalRecord,
    ReversalState,
)
from gateway.core.reversal import (
    reversal_message_fields,
    reversal_source_fields,
    source_field_names,
    terminal_reversal_fields,
)
from gateway.core.schedule import DrainPacer, retry_delay
from gateway.core.settings import CoreSettings
from gateway.core.sharded import ShardedDict
from gateway.core.stan import StanAllocator, StanExhausted
from gateway.core.timers import TimerHeap
from gateway.core.tracking import (
    NO_FIELDS,
    UNANSWERED_KEPT,
    Authorization,
    EchoFields,
    IndexKey,
    Pending,
    Phase,
    Reversal,
    Waiter,
)
from gateway.wire.dialect import Dialect
from gateway.wire.masking import PAN_FIELDS

APPROVED_BY_GATEWAY = "00"  # DE 39 of a 0410 the gateway answers itself
_MERGEABLE = (ReversalState.OWED, ReversalState.SENT, ReversalState.FAILED)
_CLOSED_REVERSAL = (ReversalState.ACKNOWLEDGED, ReversalState.CANCELLED)


class _MatchedBy(TypedDict):
    index_key: IndexKey
    match_values: FieldValues


_NO_REPLACE: Mapping[str, str] = {}
# The link of a request read back after a restart: it went out on one of the old process.
_NO_LINK = -1

_Matchable = Pending | Reversal
_Timed = Pending | Reversal | Authorization
_ConnWait = Pending | Reversal | int  # int: a delivery ref


class GatewayCore:
    """Events in, commands out. See the module docstring and docs/reversal-rules.md."""

    def __init__(
        self,
        dialect: Dialect,
        settings: CoreSettings,
        *,
        now: float,
        open_authorizations: Iterable[AuthorizationRecord] = (),
        open_reversals: Iterable[ReversalRecord] = (),
        reversed_recently: Iterable[tuple[AuthorizationRecord, ReversalRecord]] = (),
        closed_recently: Iterable[AuthorizationRecord] = (),
        next_txn_id: int = 1,
        next_reversal_id: int = 1,
        stan_seed: int = 1,
    ) -> None:
        self.dialect = dialect
        self.settings = settings
        self._rules = dialect.reversal
        self._match_fields = dialect.match_fields
        self._duplicate_fields = dialect.duplicate_fields
        self._echo_fields = tuple(
            name for name in dialect.response_echo_fields if name not in dialect.sensitive_fields
        )
        self._source_fields = source_field_names(dialect)
        # Match fields a terminal's reversal repeats from its original besides DE 41 and 11
        # (not DE 7, 12, 13: a reversal has its own times).
        self._identity_fields = tuple(
            f for f in dialect.match_fields if f not in ("7", "11", "12", "13", "41")
        )
        # What a closed authorization keeps of its fields, so that after a restart a terminal's
        # reversal still finds an original the gateway reversed: DE 7 (DE 90 names it) and the
        # identity fields. Never card data, whatever a dialect matches on.
        self._kept_when_closed = tuple(
            f
            for f in ("7", *self._identity_fields)
            if f not in dialect.sensitive_fields and f not in CARD_DATA_FIELDS
        )
        self._kept_when_closed_set = frozenset(self._kept_when_closed)
        # What an authorization closed with an answer (delivered, declined) journals, so that a
        # restarted gateway still knows a resend of it for the rest of the duplicate window:
        # the fields that find its duplicates, repeats and late answers and that its rebuilt
        # answer echoes. Never card data.
        self._answer_fields = tuple(
            f
            for f in dict.fromkeys(
                ("7", *dialect.match_fields, *dialect.duplicate_fields, *self._echo_fields)
            )
            if f not in dialect.sensitive_fields and f not in CARD_DATA_FIELDS
        )
        self._answer_field_set = frozenset(self._answer_fields)
        # What a request keeps once answered, while it lingers: those, and the echo fields of
        # the decline of its resend (the terminal's own PAN among them, where a dialect echoes
        # DE 2: in memory only).
        self._lingering_fields = tuple(dict.fromkeys((*self._answer_fields, *self._echo_fields)))
        # What tells apart the answers of two requests sharing a key, of one no longer in flight:
        # the echo fields only. A settled request keeps DE 7 for a restart even where the
        # dialect does not echo it, and an acquirer that stamps its own DE 7 would then
        # contradict it, sending its late answer to the request in flight.
        self._telling_when_settled = tuple(f for f in _TELLING_FIELDS if f in self._echo_fields)
        # ... and of one alone on its key: the terminal's local time and date only. Not DE 7
        # (some acquirers stamp their own) nor DE 37 (some assign their own RRN): either would
        # leave every late answer unmatched, its reversal no longer kept or reopened.
        self._telling_alone = tuple(f for f in self._telling_when_settled if f in ("12", "13"))
        # The shipped dialects echo no field they do not journal: nothing to filter then.
        self._lingering_is_journaled = set(self._lingering_fields) == self._answer_field_set
        # Responses are found by (MTI, this field) in one lookup, then compared on the rest.
        self._index_field = "11" if "11" in dialect.match_fields else dialect.match_fields[0]
        self._rewrite = settings.stan_mode == "rewrite"
        self._stans = StanAllocator(stan_seed)
        self._next_txn_id = next_txn_id
        self._next_reversal_id = next_reversal_id
        self._next_delivery_ref = 1

        self._links_up: set[int] = set()
        self._primary: int | None = None  # the lowest link up; None: no link is up
        self._draining = False  # stopping: new requests are declined
        self._round_robin = settings.link_strategy == "round_robin"
        self._turns: tuple[int, ...] = ()  # the links up, in order, for round_robin
        self._turn = 0
        self._pacer = DrainPacer(settings.reversal_drain_rate, now)
        self._timers: TimerHeap[_Timed] = TimerHeap()

        # Lookups. Dicts, not sets, wherever the core iterates: command order must never
        # depend on object ids (the simulation replays a seed step for step).
        # The four that hold every lingering request are sharded: see gateway/core/sharded.py.
        self._index: ShardedDict[IndexKey, list[_Matchable]] = ShardedDict()
        self._by_duplicate: ShardedDict[DuplicateKey, Pending] = ShardedDict()
        self._by_repeat: ShardedDict[RepeatKey, Pending] = ShardedDict()
        self._by_terminal: ShardedDict[tuple[str | None, str | None], list[Authorization]] = (
            ShardedDict()
        )
        self._awaiting: dict[Pending, None] = {}
        self._conn_waits: dict[int, dict[_ConnWait, None]] = {}
        self._deliveries: dict[int, tuple[Authorization, int]] = {}  # ref -> (auth, conn)
        self._reversals: dict[int, Reversal] = {}  # OWED and SENT
        self._failed: dict[int, Reversal] = {}
        self._parked: dict[Reversal, None] = {}  # OWED, waiting for a link
        self._lingering = 0
        self._open_auths = 0
        self._in_doubt: list[Authorization] = []
        # Terminal reversals waiting for the journal's authorizations on (DE 41, STAN), and
        # the connections among theirs that closed meanwhile (``_look_up_forgotten``).
        self._finding: dict[tuple[str, str], list[TerminalRequest]] = {}
        self._closed_while_finding: set[int] = set()
        # Restart: the journal's authorizations, open and recently closed, their requests
        # rebuilt oldest first (as they came in: the newest of two sharing a key wins, as in
        # the old process), then the reversed ones' history.
        requests: list[tuple[Authorization, Phase, float]] = []
        closed: dict[int, Authorization] = {}
        self._restore(open_authorizations, open_reversals, now, requests)
        self._restore_closed(closed_recently, now, requests, closed)
        for auth, phase, forget_at in sorted(requests, key=lambda item: item[0].txn_id):
            self._remember_request(auth, phase, forget_at)
            if auth.closed_at is not None:
                auth.reversal_fields = NO_FIELDS  # as a running gateway keeps a closed one
        self._restore_reversed(reversed_recently, now, closed)
        for candidates in self._by_terminal.values():  # newest last: found first
            candidates.sort(key=_txn_id)

    # the API the shell calls ------------------------------------------------------------------

    def recover(self, now: float) -> list[Command]:
        """After a restart: owe a reversal (in_doubt) for every open authorization without one.

        IN_FLIGHT and APPROVED authorizations may hold funds the terminal never learned of.
        Open OWED/SENT reversals resume: they wait for a link and leave at the drain rate.
        FAILED ones stay failed until an operator requeues them.
        """
        out: list[Command] = []
        for auth in self._in_doubt:
            if auth.reversal is None:
                self._owe_reversal(auth, ReversalReason.IN_DOUBT, now, out)
            elif auth.state is not AuthState.REVERSING:
                auth.state = AuthState.REVERSING
                auth.updated_at = now
                out.append(Persist(auth.record()))
        self._in_doubt = []
        self._drain(now)
        self._reserve_stans(out)
        return out

    def handle(self, event: Event, now: float) -> list[Command]:
        out: list[Command] = []
        if isinstance(event, TerminalRequest):
            self._on_terminal_request(event, now, out)
        elif isinstance(event, AcquirerResponse):
            self._on_acquirer_response(event, now, out)
        elif isinstance(event, DeliveryResult):
            self._on_delivery_result(event, now, out)
        elif isinstance(event, TerminalClosed):
            self._on_terminal_closed(event, now, out)
        elif isinstance(event, LinkUp):
            self._on_link_up(event, now)
        elif isinstance(event, LinkDown):
            self._on_link_down(event, now, out)
        elif isinstance(event, ReversalRequeued):
            self._on_reversal_requeued(event, now, out)
        elif isinstance(event, Draining):
            self._on_draining(event, now, out)
        elif isinstance(event, AuthorizationsFound):
            self._on_authorizations_found(event, now, out)
        else:
            raise TypeError(f"GatewayCore.handle: unknown event type {type(event).__name__}")
        self._reserve_stans(out)
        return out

    def on_timer(self, now: float) -> list[Command]:
        """Fire every timer due at or before ``now``, earliest first."""
        out: list[Command] = []
        for target in self._timers.due(now):
            if isinstance(target, Pending):
                self._on_pending_timer(target, now, out)
            elif isinstance(target, Reversal):
                self._on_reversal_timer(target, now, out)
            else:
                self._forget_auth_if_done(target, now)
        self._reserve_stans(out)
        return out

    def _reserve_stans(self, out: list[Command]) -> None:
        """A new block of STANs was started: its reservation goes first, before any send."""
        reservation = self._stans.take_reservation()
        if reservation is not None:
            out.insert(0, ReserveStans(reservation))

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    def stats(self) -> dict[str, int]:
        return {
            "in_flight": len(self._awaiting),
            "lingering": self._lingering,
            "authorizations_open": self._open_auths,
            "reversals_owed": len(self._reversals),
            "reversals_waiting_for_link": len(self._parked),
            "reversals_failed": len(self._failed),
            "links_up": len(self._links_up),
            "stans_in_use": len(self._stans),
            "timers": len(self._timers),
        }

    def oldest_owed_reversal_age(self, now: float) -> float | None:
        """Age of the oldest OWED/SENT reversal (a scan: for metrics, not per message)."""
        if not self._reversals:
            return None
        return now - min(rev.created_at for rev in self._reversals.values())

    # restart -------------------------------------------------------------------------------------

    def _restore(
        self,
        authorizations: Iterable[AuthorizationRecord],
        reversals: Iterable[ReversalRecord],
        now: float,
        requests: list[tuple[Authorization, Phase, float]],
    ) -> None:
        auths: dict[int, Authorization] = {}
        for record in authorizations:
            if record.state not in OPEN_AUTH_STATES:
                continue
            auth = Authorization.from_record(record)
            auth.identity = self._identity_of(record.reversal_fields)
            auths[auth.txn_id] = auth
            self._open_auths += 1
            self._by_terminal.setdefault((auth.terminal_id, auth.stan), []).append(auth)
            self._next_txn_id = max(self._next_txn_id, auth.txn_id + 1)
        for saved in reversals:
            if saved.state not in _MERGEABLE:
                continue
            owner = auths.get(saved.txn_id)
            fields = dict(saved.fields)
            rev = Reversal.from_record(
                saved,
                auth=owner,
                fields=fields,
                # one past its expiry at restart still gets one more attempt
                expires_at=max(_expiry_of(saved, self.settings.reversal_expiry), now),
                **self._matched_by(saved.mti, saved.stan, fields),
            )
            self._index.setdefault(rev.index_key, []).append(rev)
            self._stans.hold(saved.stan)
            rev.last_chance = rev.expires_at <= now
            # Sent before the crash, or requeued after attempts (updated since created).
            rev.sent_before = saved.attempts > 0 or saved.updated_at > saved.created_at
            rev.unanswered = int(rev.sent_before)  # its answer died with the process, or is late
            self._next_reversal_id = max(self._next_reversal_id, rev.reversal_id + 1)
            if owner is not None:
                owner.reversal = rev
            if saved.state is ReversalState.FAILED:
                self._failed[rev.reversal_id] = rev
            else:
                # A SENT one lost its answer with the old connection: it goes again.
                rev.state = ReversalState.OWED
                rev.next_attempt_at = saved.next_attempt_at
                self._reversals[rev.reversal_id] = rev
                self._park(rev)
        for auth in auths.values():
            if self._can_rebuild_request(auth):
                requests.append((auth, Phase.TIMED_OUT, now + self.settings.duplicate_window))
        self._in_doubt = list(auths.values())

    def _restore_closed(
        self,
        records: Iterable[AuthorizationRecord],
        now: float,
        requests: list[tuple[Authorization, Phase, float]],
        closed: dict[int, Authorization],
    ) -> None:
        """Authorizations closed less than ``duplicate_window`` before a restart: their
        requests linger as in the old process, so a resend is never forwarded a second time
        (under STAN rewrite the acquirer would take it for a new sale and approve it again).
        A delivered or declined one's resend is answered as it was; a reversed one's is
        declined. Delivered and declined ones are found by their terminal's reversal, as in
        the old process; reversed ones are left to ``_restore_reversed`` (``closed``: one
        object per authorization for both)."""
        for record in records:
            if record.state in OPEN_AUTH_STATES:
                continue
            forget_at = record.updated_at + self.settings.duplicate_window
            auth = self._closed_authorization(record)
            if forget_at <= now or not self._can_rebuild_request(auth):
                continue
            self._next_txn_id = max(self._next_txn_id, auth.txn_id + 1)
            closed[auth.txn_id] = auth
            if record.state is AuthState.REVERSED:
                requests.append((auth, Phase.TIMED_OUT, forget_at))
                continue
            # The closing record's DE 4 is the amount approved (``_closed_record_fields``).
            approved = record.reversal_fields.get("4")
            if approved != auth.amount:
                auth.approved_amount = approved
            self._by_terminal.setdefault((auth.terminal_id, auth.stan), []).append(auth)
            requests.append((auth, Phase.ANSWERED, forget_at))

    def _closed_authorization(self, record: AuthorizationRecord) -> Authorization:
        """A closed authorization as the journal gives it back."""
        auth = Authorization.from_record(record)
        auth.closed_at = record.updated_at
        auth.identity = self._identity_of(record.reversal_fields)
        return auth

    def _can_rebuild_request(self, auth: Authorization) -> bool:
        """Its journaled fields tell its answer and its resends: not so for one closed, then
        reopened by its terminal's reversal (only DE 7 and the identity fields were
        journaled), nor for one closed by a version that kept no fields."""
        return not auth.reversal_fields.keys() <= self._kept_when_closed_set

    def _remember_request(self, auth: Authorization, phase: Phase, forget_at: float) -> None:
        """The request of an authorization read back from the journal lingers as it would
        have in the old process.

        Open (``phase`` TIMED_OUT): a resend or repeat of it is declined, never forwarded a
        second time, and its late answer is matched (hosts that answer by station send it on
        the new connection): an approval keeps its reversal going, or reopens it if the
        reversal was answered "original not found" meanwhile; a decline may cancel it.
        Answered (``phase`` ANSWERED): a resend gets its answer again, rebuilt from the
        journaled response code and approval code (``_on_duplicate``).
        """
        acquirer_fields = auth.reversal_fields  # DE 11 as the acquirer saw it
        info = classify(auth.mti)
        fields = dict(acquirer_fields)  # as the terminal sent them
        if auth.amount is not None:
            fields["4"] = auth.amount  # a closed one journaled the amount approved
        restore = _NO_REPLACE
        if auth.stan is not None:
            fields["11"] = auth.stan
            if self._rewrite:
                restore = {"11": auth.stan}
        owns_stan = bool(restore) and auth.acquirer_stan is not None
        if owns_stan:
            assert auth.acquirer_stan is not None
            self._stans.hold(auth.acquirer_stan)
        pending = Pending(
            mti=auth.mti,
            # The decline of a resend echoes no PAN: the journaled one may have come from
            # track 2, and a decline must not carry a PAN the terminal's message did not.
            fields=EchoFields(
                self._answer_fields, {k: fields[k] for k in fields.keys() - PAN_FIELDS}
            ),
            conns=[],
            link_id=_NO_LINK,
            index_key=(info.response_mti, acquirer_fields.get(self._index_field)),
            match_values=values_of(acquirer_fields, self._match_fields),
            dup_key=duplicate_key(info.base, fields, self._duplicate_fields),
            repeat_key=repeat_key(info.base, fields),
            terminal_stan=auth.stan,
            acquirer_stan=auth.acquirer_stan,
            owns_stan=owns_stan,
            restore=restore,
            tpdu=auth.tpdu,
            header=auth.header,
            auth=auth,
            phase=phase,
            forget_at=forget_at,
        )
        auth.pending = pending
        self._index_pending(pending)
        self._lingering += 1
        self._timers.arm(pending, pending.forget_at)

    def _restore_reversed(
        self,
        reversed_recently: Iterable[tuple[AuthorizationRecord, ReversalRecord]],
        now: float,
        closed: dict[int, Authorization],
    ) -> None:
        """Closed originals with a reversal, as a running gateway remembers them, so that a
        terminal's own reversal of one is never sent upstream as a second reversal:

        - reversal acknowledged less than ``history_window`` ago: the gateway answers the
          terminal (0410, ``00``);
        - reversal still open (a crash kept the original's closing record but not the
          reversal's): it was restored without its original; tied again, the terminal's
          reversal merges with it.
        """
        for record, saved in reversed_recently:
            if (
                record.state in OPEN_AUTH_STATES
                or saved.txn_id != record.txn_id
                # Nothing to tie a terminal's reversal by: journaled by a version that kept
                # none of it, or an original that carried none of it. With every identity
                # field unknown it would match another merchant's reversal.
                or not record.reversal_fields
            ):
                continue
            if saved.state in _MERGEABLE:
                rev = self._reversals.get(saved.reversal_id) or self._failed.get(saved.reversal_id)
                if rev is None or rev.auth is not None:
                    continue
            elif (
                saved.state is not ReversalState.ACKNOWLEDGED
                or record.updated_at + self.settings.history_window <= now  # as closed_at
                # "Original not found" released nothing: the terminal's reversal must go
                # upstream (the original may have been approved since).
                or saved.last_response_code in self._rules.not_found_codes
            ):
                continue
            else:
                rev = self._remembered_reversal(saved)
            auth = closed.get(record.txn_id)  # its request lingers (``_restore_closed``)
            # ``_restore_closed`` lists the delivered and declined ones it remembers.
            listed = auth is not None and auth.state is not AuthState.REVERSED
            if auth is None:
                auth = self._closed_authorization(record)
                auth.reversal_fields = NO_FIELDS
            candidates = self._by_terminal.setdefault((auth.terminal_id, auth.stan), [])
            if not listed and auth not in candidates:  # two reversals of it acknowledged
                candidates.append(auth)
            if auth.state is not AuthState.REVERSED and saved.state in _MERGEABLE:
                # Delivered or declined, and its terminal's reversal open: the crash kept that
                # reversal's record, not the authorization's REVERSING one. It is open again
                # (``recover`` journals it), and a resend of it is declined, not answered.
                auth.closed_at = None
                self._open_auths += 1
                auth.reversal_fields = dict(record.reversal_fields)  # no card data
                self._in_doubt.append(auth)
            auth.reversal = rev
            rev.auth = auth
            self._forget_auth_if_done(auth, now)  # an acknowledged one: end of history_window

    def _remembered_reversal(self, saved: ReversalRecord) -> Reversal:
        """An acknowledged reversal, for its original's history: never sent or matched again."""
        return Reversal.from_record(
            saved,
            auth=None,
            fields=NO_FIELDS,
            expires_at=saved.updated_at,
            index_key=(response_mti(saved.mti), None),  # never indexed: nothing to match
            match_values=(),
        )

    # terminal requests ---------------------------------------------------------------------------

    def _on_terminal_request(
        self, event: TerminalRequest, now: float, out: list[Command], *, looked_up: bool = False
    ) -> None:
        info = classify(event.mti)
        if not info.valid or info.response:
            out.append(
                Notify(notices.REQUEST_REJECTED, {"mti": event.mti, "reason": "not_a_request"})
            )
            return
        fields = event.fields
        if info.reversal:
            auth = self._find_original(fields)
            if auth is not None:
                self._on_terminal_reversal(event, auth, now, out)
                return
            if self._look_up_forgotten(event, out, looked_up):
                return
        dup_key = duplicate_key(info.base, fields, self._duplicate_fields)
        original = self._by_duplicate.get(dup_key)
        if original is None and info.repeat:
            original = self._by_repeat.get(repeat_key(info.base, fields))
            if original is not None and not self._is_repeat_of(original, fields, now):
                original = None
        if original is not None:
            self._on_duplicate(event, original, out)
        elif self._draining:
            self._decline_at_once(event, "shutting_down", out)
        elif len(self._awaiting) >= self.settings.max_in_flight:
            self._decline_at_once(event, "overloaded", out)
        elif self._primary is None:
            self._decline_at_once(event, "no_link", out)
        else:
            self._forward_request(event, info, dup_key, now, out)

    def _forward_request(
        self,
        event: TerminalRequest,
        info: MtiInfo,
        dup_key: DuplicateKey,
        now: float,
        out: list[Command],
    ) -> None:
        fields = event.fields
        base = info.base
        frame = event.frame
        link_id = self._next_link()
        terminal_stan = fields.get("11")
        acquirer_stan = terminal_stan
        replace = restore = _NO_REPLACE
        acquirer_fields = fields
        if self._rewrite and terminal_stan is not None:
            try:
                acquirer_stan = self._stans.allocate()
            except StanExhausted:
                self._decline_at_once(event, "no_stan", out)
                return
            replace = {"11": acquirer_stan}
            restore = {"11": terminal_stan}
            acquirer_fields = {**fields, **replace}
        pending = Pending(
            mti=event.mti,
            fields=fields,
            conns=[event.conn_id],
            link_id=link_id,
            index_key=(info.response_mti, acquirer_fields.get(self._index_field)),
            match_values=values_of(acquirer_fields, self._match_fields),
            dup_key=dup_key,
            repeat_key=repeat_key(base, fields),
            terminal_stan=terminal_stan,
            acquirer_stan=acquirer_stan,
            owns_stan=bool(restore),
            restore=restore,
            tpdu=frame.tpdu,
            header=frame.header,
        )
        if self.dialect.is_reversible(base, fields.get("3")):
            auth = Authorization(
                txn_id=self._next_txn_id,
                created_at=now,
                updated_at=now,
                state=AuthState.IN_FLIGHT,
                mti=event.mti,
                terminal_id=fields.get("41"),
                stan=terminal_stan,
                acquirer_stan=acquirer_stan,
                rrn=fields.get("37"),
                amount=fields.get("4"),
                transmission_time=fields.get("7"),
                tpdu=frame.tpdu,
                header=frame.header,
                reversal_fields=reversal_source_fields(
                    fields, self.dialect, acquirer_stan, self._source_fields
                ),
                pending=pending,
            )
            self._next_txn_id += 1
            self._open_auths += 1
            pending.auth = auth
            auth.identity = self._identity_of(fields)
            self._by_terminal.setdefault((auth.terminal_id, terminal_stan), []).append(auth)
            # Journal before you send: the shell holds the forward until this is durable.
            out.append(Persist(auth.record()))
        out.append(ForwardToAcquirer(link_id, frame, replace))
        self._index_pending(pending)
        self._awaiting[pending] = None
        self._wait_on_conn(event.conn_id, pending)
        self._timers.arm(pending, now + self.settings.acquirer_timeout)

    def _decline_at_once(self, event: TerminalRequest, outcome: str, out: list[Command]) -> None:
        """Answer a request the gateway does not forward: nothing sent, nothing owed."""
        frame = event.frame
        out.append(
            ReplyToTerminal(
                event.conn_id,
                response_mti(event.mti),
                self._decline_fields(event.fields),
                frame.tpdu,
                frame.header,
            )
        )
        data = notices.request_data(event.mti, event.fields, outcome)
        out.append(Notify(notices.TRANSACTION_COMPLETED, data))

    def _is_repeat_of(self, original: Pending, repeat: Mapping[str, str], now: float) -> bool:
        """A repeat names its original by DE 41 + DE 11; another amount makes it another sale.
        A repeat comes within its terminal's own timeout: within the duplicate window of its
        original's arrival the amount alone tells (a terminal may stamp DE 12 anew on a repeat,
        and a repeat forwarded as a new sale could be approved, then reversed, twice). Later the
        original is remembered only because its reversal is owed, and a "repeat" on its key is
        another day's sale on that STAN unless its local time and date (DE 12/13) agree too."""
        auth = original.auth
        if auth is not None and now - auth.created_at >= self.settings.duplicate_window:
            return not _contradicts(original.fields, repeat, ("4", "12", "13"))
        return not _contradicts(original.fields, repeat, ("4",))

    def _on_duplicate(self, event: TerminalRequest, original: Pending, out: list[Command]) -> None:
        """The same request again: never forwarded twice; it shares the one answer."""
        conn_id = event.conn_id
        auth = original.auth
        if original.phase is Phase.AWAITING:
            outcome = "waiting"
            if conn_id not in original.conns:
                original.conns.append(conn_id)
                self._wait_on_conn(conn_id, original)
        elif auth is not None and auth.state is AuthState.APPROVED:
            # The approval is being written to the first connection: this one gets it too,
            # and the approval is delivered if either write succeeds.
            outcome = "cached"
            self._deliver(auth, conn_id, original, out)
        elif original.phase is Phase.ANSWERED and (
            auth is None or auth.state in (AuthState.DELIVERED, AuthState.DECLINED)
        ):
            outcome = "cached"
            if original.answer is not None:
                out.append(ForwardToTerminal(conn_id, original.answer, original.restore))
            else:
                # Answered before a restart: the bytes went with the old process.
                assert auth is not None
                outcome = "rebuilt"
                out.append(
                    ReplyToTerminal(
                        conn_id,
                        response_mti(original.mti),
                        self._rebuilt_answer_fields(original, auth),
                        original.tpdu,
                        original.header,
                    )
                )
        else:
            # Timed out, abandoned or being reversed: the answer is the gateway's decline.
            outcome = "declined"
            out.append(
                ReplyToTerminal(
                    conn_id,
                    response_mti(original.mti),
                    self._decline_fields(original.fields),
                    original.tpdu,
                    original.header,
                )
            )
        data = notices.request_data(event.mti, event.fields, outcome, auth)
        out.append(Notify(notices.DUPLICATE_REQUEST, data))

    # acquirer responses --------------------------------------------------------------------------

    def _on_acquirer_response(
        self, event: AcquirerResponse, now: float, out: list[Command]
    ) -> None:
        info = classify(event.mti)
        target = (
            self._match(event.mti, event.fields, event.link_id)
            if info.valid and info.response
            else None
        )
        if target is None:
            reason = "no_request" if info.valid and info.response else "not_a_response"
            data = notices.response_data(event.mti, event.fields, event.link_id, reason)
            # An approval of nothing the gateway knows (sent before a restart, or later than
            # duplicates.window): funds may be held that no terminal was told about, and the
            # gateway has nothing to reverse them with. Operations must hear of it.
            data["may_hold"] = reason == "no_request" and self._holds_if_approved(event)
            out.append(Notify(notices.UNMATCHED_RESPONSE, data))
        elif isinstance(target, Reversal):
            self._on_reversal_response(target, event, now, out)
        elif target.phase is Phase.AWAITING:
            self._on_answer(target, event, now, out)
        elif target.phase is Phase.ANSWERED:
            reason = "already_answered"
            data = notices.response_data(event.mti, event.fields, event.link_id, reason)
            data["may_hold"] = False  # the acquirer repeated an answer: no second hold
            out.append(Notify(notices.UNMATCHED_RESPONSE, data))
        else:
            self._on_late_response(target, event, now, out)

    def _holds_if_approved(self, event: AcquirerResponse) -> bool:
        """An approval answering a request that holds funds (0110/0210, not a balance
        inquiry by DE 3, where the acquirer echoes it)."""
        if event.fields.get("39") not in self.settings.approval_codes:
            return False
        return self.dialect.is_reversible(request_mti(event.mti), event.fields.get("3"))

    def _match(self, mti: str, fields: Mapping[str, str], link_id: int) -> _Matchable | None:
        candidates = self._index.get((mti, fields.get(self._index_field)))
        if not candidates:
            return None
        values = values_of(fields, self._match_fields)
        # Those on its key: the index holds every terminal's requests on this STAN.
        agreeing = [c for c in candidates if values_agree(c.match_values, values)]
        # With one candidate in flight a contradiction changes nothing (it is taken all the
        # same: an acquirer may stamp its own DE 7): the echoed fields are read only when two
        # share the key, or for one no longer in flight (below).
        telling = len(agreeing) > 1
        # The echoed fields that would tell them apart cannot be read: the answer never goes to
        # the request in flight while one the gateway gave up on shares its key. A wrong guess
        # then costs a reversal (the one in flight times out), never a terminal given another
        # sale's answer.
        unreadable = telling and UNREADABLE in values_of(fields, _TELLING_FIELDS)
        # What tells apart one no longer in flight (a request that timed out or was answered,
        # a reversal not on the wire): the fields its dialect says come back as sent, and
        # alone on its key only the terminal's local time and date (DE 12/13): some acquirers
        # stamp their own DE 7 or assign their own RRN, and would leave every late answer
        # unmatched.
        settled_telling = self._telling_when_settled if telling else self._telling_alone
        # Requests no longer in flight (and reversals not on the wire), oldest first.
        others: list[_Matchable] = []
        # A request the answer's echoed times or RRN contradict: the answer is another
        # request's with the same key (a STAN reused while the first one's answer was late);
        # still taken if nothing else fits.
        contradicted: Pending | None = None
        # A reversal closed by a "25" that still listens for its other attempts' answers:
        # only when nothing open shares its key (an open one's answer must never settle it).
        listening: Reversal | None = None
        # The gateway's reversals on the wire with this key. Two at once: the same terminal and
        # STAN on two days (dialects whose reversals carry the original's STAN), both owed.
        sent: list[Reversal] = []
        for candidate in agreeing:
            if isinstance(candidate, Pending):
                if candidate.phase is Phase.AWAITING:
                    if telling and (
                        _contradicts(candidate.fields, fields, _TELLING_FIELDS) or unreadable
                    ):
                        contradicted = candidate
                        continue
                    if sent:
                        break  # a reversal on the wire came first, as before
                    return candidate
                if _contradicts(candidate.fields, fields, settled_telling):
                    # It waits only for a late answer of its own. Alone on its key, one from
                    # another day (DE 12/13) is another sale's, one the gateway no longer
                    # remembers (the terminal's STAN again): taken, it would settle or reopen
                    # this one's reversal; unmatched, an approval is alerted. With others on
                    # the key, still taken if nothing else fits (as one in flight).
                    if telling and contradicted is None:
                        contradicted = candidate
                    continue
            elif candidate.state is ReversalState.SENT:
                if not telling:
                    return candidate
                sent.append(candidate)
                continue
            elif _contradicts(candidate.fields, fields, settled_telling):
                # Not on the wire, it waits only for a late answer to an earlier attempt; one
                # that contradicts the DE 12/13/37 it copied from its original is another
                # reversal's with its key (the terminal's STAN on another day). Taken, it would
                # close this one with its sale's funds still held.
                continue
            elif candidate.state in _CLOSED_REVERSAL:
                if listening is None:
                    listening = candidate
                continue
            others.append(candidate)
        if sent:
            # The one its echoed fields (the original's DE 12, 13 or 37, where the dialect says
            # they come back) do not contradict and, of those, the one sent on the link the
            # answer came on: acquirers answer on the connection they were asked on (one that
            # answers elsewhere gets the first).
            fitting = [
                r for r in sent if not _contradicts(r.fields, fields, self._telling_when_settled)
            ] or sent
            return next((r for r in fitting if r.link_id == link_id), fitting[0])
        if len(others) > 1:
            # The acquirer repeating the answer one of them got goes to that one: a decline
            # taken for another request's would settle its reversal. Else the oldest not
            # answered yet: a late approval taken for a repeat would be neither alerted nor
            # keep a reversal going.
            for other in others:
                if _answered(other) and self._may_repeat(other, fields):
                    return other
            return next((other for other in others if not _answered(other)), others[0])
        # An acquirer that does not echo them as sent contradicts every request: as before.
        return (others[0] if others else None) or contradicted or listening

    def _may_repeat(self, answered: Pending, fields: Mapping[str, str]) -> bool:
        """Could this be the acquirer repeating the answer ``answered`` got: the same DE 3 as
        echoed, the same DE 39 and, for an approval, the same DE 38? When in doubt, yes: a
        decline taken for another request's would settle its reversal."""
        processing_code = fields.get("3")
        asked = answered.fields.get("3")
        if asked is not None and processing_code not in (None, UNREADABLE, asked):
            return False  # a sale's answer is no repeat of a balance inquiry's
        auth = answered.auth
        if auth is None:  # not journaled: its answer is not known
            return True
        code = fields.get("39")
        if code != auth.response_code:
            return False
        return code not in self.settings.approval_codes or fields.get("38") == auth.approval_code

    def _on_answer(
        self, pending: Pending, event: AcquirerResponse, now: float, out: list[Command]
    ) -> None:
        code = event.fields.get("39")
        approved = code in self.settings.approval_codes
        auth = pending.auth
        if auth is None and base_mti(pending.mti) not in self.dialect.reversible_mtis:
            outcome = "answered"
        else:
            outcome = "approved" if approved else "declined"
        data = notices.request_data(pending.mti, pending.fields, outcome, auth, code)
        out.append(Notify(notices.TRANSACTION_COMPLETED, data))
        self._settle(pending, Phase.ANSWERED, now)
        pending.answer = event.frame
        conns, pending.conns = pending.conns, []
        if auth is None:
            for conn_id in conns:
                out.append(ForwardToTerminal(conn_id, event.frame, pending.restore))
        elif approved:
            auth.state = AuthState.APPROVED
            auth.updated_at = now
            auth.response_code = code
            self._keep_approval_code(auth, event)
            if code != "00":  # "10": a partial approval names the amount it approves
                amount = event.fields.get("4")
                if amount is not None and amount not in (auth.amount, UNREADABLE):
                    auth.approved_amount = amount
            out.append(Persist(auth.record()))
            for conn_id in conns:
                self._deliver(auth, conn_id, pending, out)
            if not conns:
                undeliverable = notices.auth_data(auth, "closed")
                out.append(Notify(notices.UNDELIVERABLE_RESPONSE, undeliverable))
                self._owe_reversal(auth, ReversalReason.UNDELIVERABLE, now, out)
                if auth.reversal is not None:  # notices are read once this step returns
                    data["reversal_id"] = auth.reversal.reversal_id
        else:
            auth.response_code = code
            self._close_auth(auth, AuthState.DECLINED, now, out)
            for conn_id in conns:
                out.append(ForwardToTerminal(conn_id, event.frame, pending.restore))

    def _on_late_response(
        self, pending: Pending, event: AcquirerResponse, now: float, out: list[Command]
    ) -> None:
        """An answer after the gateway gave up on its request: never forwarded (the terminal
        has its decline). An approval keeps the reversal going; a decline may cancel it."""
        code = event.fields.get("39")
        data = notices.response_data(event.mti, event.fields, event.link_id, "late")
        out.append(Notify(notices.LATE_RESPONSE, data))
        auth = pending.auth
        if auth is None:
            return
        if auth.state is AuthState.REVERSED:
            if code in self.settings.approval_codes and auth.reversal is None:
                # Reversed before a restart, and that reversal was answered "original not
                # found" (``_restore_reversed`` keeps no such one): this approval may hold
                # funds, and a closed record keeps no PAN to reverse them with. Operations
                # must hear of it, as of an approval that matches nothing.
                data = notices.response_data(
                    event.mti, event.fields, event.link_id, "reversed_before_restart"
                )
                data["may_hold"] = self._holds_if_approved(event)
                out.append(Notify(notices.UNMATCHED_RESPONSE, data))
            elif code in self.settings.approval_codes:
                self._reverse_overtaken(auth, event, now, out)
            elif auth.response_code is None:
                self._note_late_decline(auth, code, now, out)
            return
        if auth.state is not AuthState.REVERSING:
            return
        rev = auth.reversal
        not_sent = rev is not None and rev.state is ReversalState.OWED and not rev.sent_before
        if code in self.settings.approval_codes:
            auth.response_code = code
            approval_code = None if auth.approval_code else self._keep_approval_code(auth, event)
            if approval_code and rev is not None and not_sent and self._rules.include_approval_code:
                rev.fields = {**rev.fields, "38": approval_code}
                rev.updated_at = now
                out.append(Persist(rev.record()))
            auth.updated_at = now
            # Urgent: lost in a crash, a restarted gateway would take a "25" to the reversal
            # for the end (the original unknown upstream), and the hold would stay.
            out.append(Persist(auth.record(), urgent=True))
        elif rev is not None and not_sent and self.settings.late_decline_cancels:
            auth.response_code = code
            self._close_auth(auth, AuthState.DECLINED, now, out)
            data = notices.reversal_data(rev)
            self._close_reversal(rev, ReversalState.CANCELLED, now, out)
            out.append(Notify(notices.REVERSAL_CANCELLED, {**data, "state": rev.state.value}))
            # A terminal that asked for this reversal is answered: nothing is held.
            self._answer_waiters(rev, APPROVED_BY_GATEWAY, out)
        elif auth.response_code is None:
            # Too late to cancel: the reversal goes on (the acquirer answers it "25" or
            # "00"), but no approval can follow it now.
            self._note_late_decline(auth, code, now, out)

    def _note_late_decline(
        self, auth: Authorization, code: str | None, now: float, out: list[Command]
    ) -> None:
        """The original was declined after all: a "25" to its reversal settles it for good."""
        rev = auth.reversal
        if rev is not None and rev.reopenable:
            self._drop_reopenable(rev)
        auth.response_code = code
        auth.updated_at = now
        if auth.closed_at is None:
            out.append(Persist(auth.record()))
        else:  # reversed: what it kept for a reopen goes
            auth.reversal_fields = self._fields_kept_when_closed(auth)
            out.append(Persist(auth.record(self._closed_record_fields(auth))))

    def _reverse_overtaken(
        self, auth: Authorization, event: AcquirerResponse, now: float, out: list[Command]
    ) -> None:
        """An approval came after the acquirer answered our reversal "original not found":
        the reversal overtook its original, and the funds are held now. Reverse again (the
        first reversal released nothing, so this is still one release per original)."""
        rev = auth.reversal
        # Still going: a crash kept this authorization's closing record, not its reversal's
        # acknowledgement (a commit inside one step: durability "power"), and the restart
        # resumed the reversal.
        resumed = rev is not None and rev.state in _MERGEABLE
        if rev is None or not (resumed or (rev.reopenable and rev.fields)):
            return  # not reopenable, or only listening (nothing to build it from)
        auth.response_code = event.fields.get("39")
        approval_code = self._keep_approval_code(auth, event)
        if resumed:
            # The approval is known now, so a "25" to it is not final: open again, journaled
            # at once (as a late approval's record is).
            self._reopen_auth(auth, now, out, urgent=True)
            return
        if approval_code and self._rules.include_approval_code:
            rev.fields = {**rev.fields, "38": approval_code}
        self._reopen_reversal(rev, auth, now, out)

    @staticmethod
    def _keep_approval_code(auth: Authorization, event: AcquirerResponse) -> str | None:
        """DE 38 of an approval, kept for the authorization's reversal; None if it has none."""
        approval_code = event.fields.get("38")
        if not approval_code:
            return None
        auth.approval_code = approval_code
        auth.reversal_fields = {**auth.reversal_fields, "38": approval_code}
        return approval_code

    def _reopen_reversal(
        self, rev: Reversal, auth: Authorization, now: float, out: list[Command]
    ) -> None:
        """The same reversal again (its id and STAN, repeated as 0401/0421), not a second
        one: attempts share a STAN, so the "25" may have answered an earlier attempt while a
        later one released the hold. The acquirer answers such a repeat "already reversed"."""
        rev.reopenable = False  # open again: its STAN stays held, it stays indexed
        rev.state = ReversalState.OWED
        rev.attempts = 0
        rev.last_response_code = None
        rev.expires_at = now + self.settings.reversal_expiry
        rev.updated_at = now
        self._reversals[rev.reversal_id] = rev
        out.append(Persist(rev.record()))
        self._reopen_auth(auth, now, out)
        out.append(Notify(notices.REVERSAL_OWED, notices.reversal_data(rev)))
        if self._primary is None:
            self._park(rev)
        else:
            self._send_attempt(rev, now, out)

    # delivery of approvals -----------------------------------------------------------------------

    def _deliver(
        self, auth: Authorization, conn_id: int, pending: Pending, out: list[Command]
    ) -> None:
        """Write an approval to a terminal and ask the shell how the write went."""
        assert pending.answer is not None
        ref = self._next_delivery_ref
        self._next_delivery_ref += 1
        self._deliveries[ref] = (auth, conn_id)
        auth.deliveries[ref] = None
        self._wait_on_conn(conn_id, ref)
        out.append(ForwardToTerminal(conn_id, pending.answer, pending.restore, ref))

    def _on_delivery_result(self, event: DeliveryResult, now: float, out: list[Command]) -> None:
        entry = self._deliveries.pop(event.delivery_ref, None)
        if entry is None:
            return  # its connection closed first, or the authorization was settled otherwise
        auth, conn_id = entry
        waits = self._conn_waits.get(conn_id)
        if waits is not None:
            waits.pop(event.delivery_ref, None)
        self._delivery_done(auth, event.delivery_ref, event.ok, now, out)

    def _delivery_done(
        self, auth: Authorization, ref: int, ok: bool, now: float, out: list[Command]
    ) -> None:
        auth.deliveries.pop(ref, None)
        if auth.state is not AuthState.APPROVED:
            return
        if ok:
            self._drop_deliveries(auth)
            self._close_auth(auth, AuthState.DELIVERED, now, out)
        elif not auth.deliveries:
            data = notices.auth_data(auth, "write_failed")
            out.append(Notify(notices.UNDELIVERABLE_RESPONSE, data))
            self._owe_reversal(auth, ReversalReason.UNDELIVERABLE, now, out)

    def _drop_deliveries(self, auth: Authorization) -> None:
        """Writes still unreported no longer matter: their results will be ignored."""
        for ref in auth.deliveries:
            entry = self._deliveries.pop(ref, None)
            if entry is not None:
                waits = self._conn_waits.get(entry[1])
                if waits is not None:
                    waits.pop(ref, None)
        auth.deliveries.clear()

    # timeouts, links and connections -------------------------------------------------------------

    def _on_pending_timer(self, pending: Pending, now: float, out: list[Command]) -> None:
        if pending.phase is Phase.AWAITING:
            self._give_up(pending, ReversalReason.TIMEOUT, now, out)
        elif now < pending.forget_at:
            self._timers.arm(pending, pending.forget_at)
        elif pending.auth is None or pending.auth.closed_at is not None:
            self._forget(pending, now)
        # else: its authorization is still open (being reversed): a resend must still be
        # recognised as a duplicate, never forwarded. Closing the authorization re-arms it.

    def _give_up(
        self, pending: Pending, reason: ReversalReason, now: float, out: list[Command]
    ) -> None:
        """No answer in time, or its link broke: the request may have reached the acquirer,
        so a reversible one is reversed; the terminal gets a decline."""
        outcome = "timeout" if reason is ReversalReason.TIMEOUT else "link_down"
        auth = pending.auth
        data = notices.request_data(pending.mti, pending.fields, outcome, auth)
        out.append(Notify(notices.TRANSACTION_COMPLETED, data))
        declines = auth is not None or base_mti(pending.mti) in self.dialect.reversible_mtis
        if declines:
            decline = self._decline_fields(pending.fields)
            resp_mti = response_mti(pending.mti)
            for conn_id in pending.conns:
                out.append(
                    ReplyToTerminal(conn_id, resp_mti, decline, pending.tpdu, pending.header)
                )
        self._settle(pending, Phase.TIMED_OUT, now)
        pending.conns = []
        if not declines:
            # Advices, network management, ...: nothing to answer, nothing held. Forget it
            # so that the terminal's own retry goes through.
            self._forget(pending, now)
        elif auth is not None:
            self._owe_reversal(auth, reason, now, out)
            if auth.reversal is not None:  # notices are read once this step returns
                data["reversal_id"] = auth.reversal.reversal_id

    def _on_draining(self, event: Draining, now: float, out: list[Command]) -> None:
        self._draining = True
        if event.final:  # the grace period is over: the terminal hears now, not never
            for pending in list(self._awaiting):
                self._give_up(pending, ReversalReason.TIMEOUT, now, out)

    def _next_link(self) -> int:
        """The link for the next message (one must be up): see ``CoreSettings.link_strategy``."""
        assert self._primary is not None
        if not self._round_robin:
            return self._primary
        self._turn += 1
        return self._turns[self._turn % len(self._turns)]

    def _links_changed(self) -> None:
        self._turns = tuple(sorted(self._links_up))
        self._primary = self._turns[0] if self._turns else None

    def _on_link_up(self, event: LinkUp, now: float) -> None:
        self._links_up.add(event.link_id)
        self._links_changed()
        self._drain(now)

    def _on_link_down(self, event: LinkDown, now: float, out: list[Command]) -> None:
        link_id = event.link_id
        self._links_up.discard(link_id)
        self._links_changed()
        for pending in [p for p in self._awaiting if p.link_id == link_id]:
            self._give_up(pending, ReversalReason.LINK_LOST, now, out)
        for rev in list(self._reversals.values()):
            if rev.state is ReversalState.SENT and rev.link_id == link_id:
                # Not a failed attempt: it goes again, as a repeat, on the next link.
                rev.state = ReversalState.OWED
                rev.link_id = None
                rev.forwarded = None
                self._note_unanswered(rev)
                self._schedule_soon(rev, now)

    def _wait_on_conn(self, conn_id: int, item: _ConnWait) -> None:
        self._conn_waits.setdefault(conn_id, {})[item] = None

    def _on_terminal_closed(self, event: TerminalClosed, now: float, out: list[Command]) -> None:
        """What the connection waited for stays owned by the core; only the answer has
        nowhere to go (an approval arriving later is reversed as undeliverable)."""
        conn_id = event.conn_id
        if any(r.conn_id == conn_id for waiting in self._finding.values() for r in waiting):
            self._closed_while_finding.add(conn_id)
        for item in self._conn_waits.pop(conn_id, ()):
            if isinstance(item, int):
                entry = self._deliveries.pop(item, None)
                if entry is not None:
                    self._delivery_done(entry[0], item, False, now, out)
            elif isinstance(item, Pending):
                if conn_id in item.conns:
                    item.conns.remove(conn_id)
            else:
                item.waiters.pop(conn_id, None)
                if item.forwarded is not None and item.forwarded[0] == conn_id:
                    item.forwarded = None

    # terminal-initiated reversals ----------------------------------------------------------------

    def _find_original(self, fields: Mapping[str, str]) -> Authorization | None:
        """The authorization a terminal's reversal refers to: by DE 90 (original MTI, STAN,
        DE 7) and DE 41 when it carries DE 90, else by DE 41 + DE 11 + DE 4 (CUP terminals
        resend the original's STAN)."""
        return self._original_among(self._by_terminal.get(_original_key(fields), ()), fields)

    def _original_among(
        self, candidates: Sequence[Authorization], fields: Mapping[str, str]
    ) -> Authorization | None:
        """The newest of ``candidates`` (oldest first, all of the terminal and STAN the
        reversal names) that a terminal's reversal with ``fields`` refers to."""
        identity = self._identity_of(fields)
        original_data = _original_data(fields)
        if original_data is not None:
            original_mti = original_data[:4]
            if not is_valid_mti(original_mti):
                return None
            sent_at = original_data[10:20]
            base = base_mti(original_mti)
            for auth in reversed(candidates):
                if (
                    (auth.transmission_time or "0000000000") == sent_at
                    and base_mti(auth.mti) == base
                    and _same_identity(identity, auth.identity)
                ):
                    return auth
            return None
        amount = fields.get("4")
        for auth in reversed(candidates):
            if (amount is None or auth.amount is None or auth.amount == amount) and (
                _same_identity(identity, auth.identity)
            ):
                return auth
        return None

    def _look_up_forgotten(
        self, event: TerminalRequest, out: list[Command], looked_up: bool
    ) -> bool:
        """Under STAN rewrite, a terminal's reversal of a sale no longer remembered (its
        duplicate window is over) names it by the terminal's STAN, which the acquirer never
        saw: forwarded as it is, it would be answered "original not found" and the hold would
        stay. The journal still has the sale's delivered record, its acquirer STAN among it:
        the reversal waits for the terminal's authorizations on that STAN
        (``FindAuthorizations``, answered by ``AuthorizationsFound``)."""
        terminal_id, stan = _original_key(event.fields)
        if looked_up or not self._rewrite or terminal_id is None or stan is None:
            return False
        waiting = self._finding.get((terminal_id, stan))
        if waiting is None:
            self._finding[(terminal_id, stan)] = [event]
            out.append(FindAuthorizations(terminal_id, stan))
        else:  # its repeat, or another reversal of the same sale: one lookup for all
            waiting.append(event)
        return True

    def _on_authorizations_found(
        self, event: AuthorizationsFound, now: float, out: list[Command]
    ) -> None:
        """The journal's authorizations on the terminal and STAN that reversals wait for. The
        one a reversal names is remembered again (closed, its request no longer lingering)
        when it is a delivered sale it may be tied to (``_may_tie_forgotten``): the reversal
        then goes upstream as *the* reversal of that sale, naming it by its acquirer STAN.
        Otherwise the reversal goes upstream as it is."""
        key = (event.terminal_id, event.stan)
        waiting = self._finding.pop(key, [])
        known = {auth.txn_id for auth in self._by_terminal.get(key, ())}
        newest = max((*known, *(record.txn_id for record in event.records)), default=0)
        candidates = [
            self._closed_authorization(record)
            for record in sorted(event.records, key=lambda record: record.txn_id)
            if record.state not in OPEN_AUTH_STATES and record.txn_id not in known
        ]
        for request in waiting:
            if self._find_original(request.fields) is None:
                auth = self._original_among(candidates, request.fields)
                if auth is not None and self._may_tie_forgotten(auth, request, newest, now):
                    candidates.remove(auth)
                    remembered = self._by_terminal.setdefault(key, [])
                    remembered.append(auth)
                    remembered.sort(key=_txn_id)
            self._on_terminal_request(request, now, out, looked_up=True)
            if request.conn_id in self._closed_while_finding:
                # Its terminal hung up meanwhile: what it would wait for is let go at once.
                self._on_terminal_closed(TerminalClosed(request.conn_id), now, out)
        still_waiting = {
            request.conn_id for pending in self._finding.values() for request in pending
        }
        self._closed_while_finding &= still_waiting

    def _may_tie_forgotten(
        self, auth: Authorization, request: TerminalRequest, newest: int, now: float
    ) -> bool:
        """Only a delivered sale (a declined or reversed one holds nothing the terminal knows
        of), with the fields to tie it by. DE 90 names one sale by its transmission time.
        Without DE 90 the reversal names the newest authorization on its STAN by amount
        alone, and a terminal that starts its STANs again each day has a sale a day on each:
        only the newest is tied, and only within ``history_window`` of its delivery, never an
        older day's sale because today's on that STAN was declined or never arrived."""
        if auth.state is not AuthState.DELIVERED or not auth.reversal_fields:
            return False
        if _original_data(request.fields) is not None:
            return True
        # A candidate read back closed: its record's updated_at is when it closed.
        return auth.txn_id == newest and now - auth.updated_at < self.settings.history_window

    def _may_hold_unknown(self, auth: Authorization) -> bool:
        """Its reversal was answered "original not found" (it released nothing) and its
        request is forgotten (or was read back after a restart), so an approval that came
        since went unmatched (or went to the connection that died with the old process) and
        may hold funds: the terminal's reversal is not answered by the gateway but goes
        upstream, as the reversal of this original (repeated until acknowledged). No late
        answer can come for it any more, so nothing else can reverse it again."""
        rev = auth.reversal
        pending = auth.pending
        return (
            # A request read back after a restart: its late answer can come only from a host
            # that answers by station; one that answers on the connection it was asked on has
            # nowhere to send it any more.
            (pending is None or pending.link_id == _NO_LINK)
            and rev is not None
            and rev.state is ReversalState.ACKNOWLEDGED
            and rev.last_response_code in self._rules.not_found_codes
            and not self._decline_known(auth)
        )

    def _identity_of(self, fields: Mapping[str, str]) -> tuple[str | None, ...]:
        """The identity match fields of a request, its journaled fields or a reversal."""
        return tuple(fields.get(name) for name in self._identity_fields)

    def _on_terminal_reversal(
        self, event: TerminalRequest, auth: Authorization, now: float, out: list[Command]
    ) -> None:
        """Exactly one reversal per original, whoever asks for it."""
        rev = auth.reversal
        if (
            rev is not None
            and rev.state is ReversalState.ACKNOWLEDGED
            and not self._may_hold_unknown(auth)
        ):
            outcome = "answered"
            self._answer(self._waiter(event), APPROVED_BY_GATEWAY, out)
        elif rev is not None and rev.state in _MERGEABLE:
            outcome = "merged"
            if event.conn_id not in rev.waiters:
                rev.waiters[event.conn_id] = self._waiter(event)
                self._wait_on_conn(event.conn_id, rev)
            if rev.state is ReversalState.FAILED:
                self._requeue(rev, now, out)
        elif self._primary is None:
            # Owed from now on, sent when a link is up. The terminal gets a decline now; its
            # own repeat will find this reversal.
            outcome = "no_link"
            rev = self._open_terminal_reversal(event, auth, now, out)
            self._park(rev)
            frame = event.frame
            decline = self._decline_fields(event.fields)
            out.append(
                ReplyToTerminal(
                    event.conn_id, response_mti(event.mti), decline, frame.tpdu, frame.header
                )
            )
        else:
            outcome = "forwarded"
            rev = self._forward_terminal_reversal(event, auth, now, out)
        data = notices.request_data(event.mti, event.fields, outcome, auth)
        if rev is not None:
            data["reversal_id"] = rev.reversal_id
        out.append(Notify(notices.TERMINAL_REVERSAL, data))

    def _forward_terminal_reversal(
        self, event: TerminalRequest, auth: Authorization, now: float, out: list[Command]
    ) -> Reversal:
        """The terminal's own reversal goes upstream and becomes THE reversal of its original;
        if it is not acknowledged the gateway repeats it like one of its own."""
        link_id = self._next_link()
        fields = event.fields
        rev = self._open_terminal_reversal(event, auth, now, out)
        replace: dict[str, str] = {}
        restore: dict[str, str] = {}
        terminal_stan = fields.get("11")
        if terminal_stan is not None and terminal_stan != rev.stan:
            replace["11"] = rev.stan
            restore["11"] = terminal_stan
        if "90" in fields and rev.fields.get("90") != fields["90"]:
            replace["90"] = rev.fields["90"]
        rev.waiters[event.conn_id] = self._waiter(event)
        self._wait_on_conn(event.conn_id, rev)
        rev.forwarded = (event.conn_id, restore)
        self._mark_sent(rev, link_id, now, out)
        out.append(ForwardToAcquirer(link_id, event.frame, replace))
        return rev

    def _open_terminal_reversal(
        self, event: TerminalRequest, auth: Authorization, now: float, out: list[Command]
    ) -> Reversal:
        """Journal the terminal's reversal as THE reversal of ``auth``; repeats resend it."""
        self._abandon_original(auth, now)
        fields = event.fields
        stan = fields.get("11")
        if self._rewrite or stan is None:
            stan = self._reversal_stan(auth)
        else:
            self._stans.hold(stan)
        original_data: str | None = None
        if self._rewrite and "90" in fields and auth.acquirer_stan is not None:
            # DE 90 names the original by the STAN the acquirer saw, not the terminal's.
            original_data = fields["90"][:4] + auth.acquirer_stan + fields["90"][10:]
        message = terminal_reversal_fields(
            fields,
            self.dialect,
            stan=stan,
            reason_code=self._reason_code(ReversalReason.TERMINAL),
            original_data=original_data,
        )
        return self._open_reversal(
            auth,
            ReversalReason.TERMINAL,
            now,
            out,
            mti=base_mti(event.mti),
            stan=stan,
            fields=message,
        )

    def _abandon_original(self, auth: Authorization, now: float) -> None:
        """The terminal reversed an authorization in flight or being delivered: it gave up
        on it, so its answer is never forwarded."""
        pending = auth.pending
        if pending is not None and pending.phase is Phase.AWAITING:
            self._settle(pending, Phase.ABANDONED, now)
            pending.conns = []
        self._drop_deliveries(auth)

    def _waiter(self, event: TerminalRequest) -> Waiter:
        fields = event.fields
        echo = {name: fields[name] for name in self._echo_fields if name in fields}
        return Waiter(event.conn_id, event.mti, echo, event.frame.tpdu, event.frame.header)

    def _answer(self, waiter: Waiter, code: str, out: list[Command]) -> None:
        """The gateway's own 0410/0430 to a terminal's reversal."""
        fields = {**waiter.fields, "39": code}
        resp_mti = response_mti(waiter.mti)
        out.append(ReplyToTerminal(waiter.conn_id, resp_mti, fields, waiter.tpdu, waiter.header))

    def _answer_waiters(self, rev: Reversal, code: str, out: list[Command]) -> None:
        for waiter in rev.waiters.values():
            self._answer(waiter, code, out)
            waits = self._conn_waits.get(waiter.conn_id)
            if waits is not None:
                waits.pop(rev, None)
        rev.waiters = {}

    # reversals -----------------------------------------------------------------------------------

    def _owe_reversal(
        self, auth: Authorization, reason: ReversalReason, now: float, out: list[Command]
    ) -> None:
        """A reversal is owed: journal it, then send it now or as soon as a link is up."""
        stan = self._reversal_stan(auth)
        message = reversal_message_fields(
            auth.mti,
            auth.reversal_fields,
            self._rules,
            stan=stan,
            reason_code=self._reason_code(reason),
            approval_code=auth.approval_code,
        )
        rev = self._open_reversal(
            auth, reason, now, out, mti=self._rules.mti, stan=stan, fields=message
        )
        if self._primary is None:
            self._park(rev)
        else:
            self._send_attempt(rev, now, out)

    def _reason_code(self, reason: ReversalReason) -> str:
        codes = self._rules.reason_codes
        return codes.get(reason.value) or codes.get("other") or "06"

    def _reversal_stan(self, auth: Authorization) -> str:
        """DE 11 of a reversal: the original's (as the acquirer saw it) where the dialect says
        so, else a new one. Held by the allocator until the reversal closes."""
        if self._rules.stan == "original" and auth.acquirer_stan is not None:
            self._stans.hold(auth.acquirer_stan)
            return auth.acquirer_stan
        return self._stans.allocate()

    def _open_reversal(
        self,
        auth: Authorization,
        reason: ReversalReason,
        now: float,
        out: list[Command],
        *,
        mti: str,
        stan: str,
        fields: Mapping[str, str],
    ) -> Reversal:
        """Track and journal a new reversal (OWED); its authorization turns REVERSING."""
        rev = self._track_reversal(
            reversal_id=self._next_reversal_id,
            auth=auth,
            txn_id=auth.txn_id,
            created_at=now,
            reason=reason,
            mti=mti,
            stan=stan,
            fields=fields,
            tpdu=auth.tpdu,
            header=auth.header,
            expires_at=now + self.settings.reversal_expiry,
        )
        self._next_reversal_id += 1
        self._reversals[rev.reversal_id] = rev
        auth.reversal = rev
        out.append(Persist(rev.record()))
        self._reopen_auth(auth, now, out)
        out.append(Notify(notices.REVERSAL_OWED, notices.reversal_data(rev)))
        return rev

    def _reopen_auth(
        self, auth: Authorization, now: float, out: list[Command], *, urgent: bool = False
    ) -> None:
        """Its reversal is owed (again): the authorization is REVERSING."""
        if auth.state is AuthState.REVERSING:
            return
        if auth.closed_at is not None:  # delivered, declined or reversed, and reversed now
            auth.closed_at = None
            self._open_auths += 1
            # What went when it closed (the reversal has its own) comes back to the journal:
            # what ties a terminal's reversal to it after a restart, and what finds its resends
            # while its request lingers. What it still holds (all of it, while a reopen may
            # come; DE 38 of a late approval) wins.
            auth.reversal_fields = {
                **self._identity_fields_of(auth),
                **self._closed_record_fields(auth),
                **auth.reversal_fields,
            }
        auth.state = AuthState.REVERSING
        auth.updated_at = now
        out.append(Persist(auth.record(), urgent=urgent))

    def _track_reversal(
        self,
        *,
        reversal_id: int,
        auth: Authorization | None,
        txn_id: int,
        created_at: float,
        reason: ReversalReason,
        mti: str,
        stan: str,
        fields: Mapping[str, str],
        tpdu: bytes,
        header: bytes,
        expires_at: float,
    ) -> Reversal:
        rev = Reversal(
            reversal_id=reversal_id,
            txn_id=txn_id,
            auth=auth,
            created_at=created_at,
            updated_at=created_at,
            state=ReversalState.OWED,
            reason=reason,
            mti=mti,
            stan=stan,
            fields=fields,
            tpdu=tpdu,
            header=header,
            expires_at=expires_at,
            **self._matched_by(mti, stan, fields),
        )
        self._index.setdefault(rev.index_key, []).append(rev)
        return rev

    def _matched_by(self, mti: str, stan: str, fields: Mapping[str, str]) -> _MatchedBy:
        """What finds a reversal's answer: its response MTI and the acquirer-side values of
        the dialect's match fields (DE 11 is its own STAN)."""
        acquirer_fields = {**fields, "11": stan}
        return {
            "index_key": (response_mti(mti), acquirer_fields.get(self._index_field)),
            "match_values": values_of(acquirer_fields, self._match_fields),
        }

    def _send_attempt(self, rev: Reversal, now: float, out: list[Command]) -> None:
        link_id = self._next_link()
        # A repeat (0401/0421) whenever one went out before, also after an operator's
        # requeue restarted the attempt count.
        mti = attempt_mti(rev.mti, 2 if rev.sent_before else 1)
        self._mark_sent(rev, link_id, now, out)
        message = dict(rev.fields)
        if self._rules.transmission_time:
            message["7"] = transmission_time(now)
        out.append(SendToAcquirer(link_id, mti, message, rev.tpdu, rev.header))

    def _mark_sent(self, rev: Reversal, link_id: int, now: float, out: list[Command]) -> None:
        """Journal the attempt (SENT) before its bytes can leave, then wait for the answer."""
        self._parked.pop(rev, None)
        rev.state = ReversalState.SENT
        rev.sent_before = True
        rev.answer_may_have_come = False
        rev.last_chance = False
        rev.attempts += 1
        rev.link_id = link_id
        rev.next_attempt_at = None
        rev.updated_at = now
        out.append(Persist(rev.record()))
        out.append(Notify(notices.REVERSAL_SENT, notices.reversal_data(rev)))
        self._timers.arm(rev, now + self.settings.reversal_timeout)

    def _on_reversal_response(
        self, rev: Reversal, event: AcquirerResponse, now: float, out: list[Command]
    ) -> None:
        code = event.fields.get("39")
        forwarded = rev.forwarded if rev.state is ReversalState.SENT else None
        if forwarded is not None:
            # The attempt on the wire was the terminal's own message: it gets the answer.
            conn_id, restore = forwarded
            rev.forwarded = None
            if rev.waiters.pop(conn_id, None) is not None:
                out.append(ForwardToTerminal(conn_id, event.frame, restore))
                waits = self._conn_waits.get(conn_id)
                if waits is not None:
                    waits.pop(rev, None)
        if rev.state in _CLOSED_REVERSAL:
            if (
                rev.reopenable
                and code in self._rules.resolved_codes
                and code not in self._rules.not_found_codes
            ):
                # Another attempt's answer, after the "25" that closed it: that attempt found
                # the original and released it. Nothing is left to reopen.
                rev.last_response_code = code
                rev.updated_at = now
                out.append(Persist(rev.record()))
                self._drop_reopenable(rev)
            return
        rev.last_response_code = code
        maybe_late = self._one_less_unanswered(rev)
        not_found = code in self._rules.not_found_codes
        if not_found and self._approval_known(rev):
            # "Original not found", yet the acquirer approved it: this attempt overtook the
            # original there, and the hold came after it. Not done: the next repeat (same
            # reversal, same STAN) finds the original, or is answered "already reversed".
            if rev.state is ReversalState.SENT:
                self._attempt_failed(rev, now, out)
        elif not_found and maybe_late and (rev.state is ReversalState.SENT or rev.unanswered):
            # Attempts share a STAN: this 25 may be the late answer of an attempt that went
            # unanswered, while the one on the wire (or another unanswered one) released the
            # hold. Wait for what the schedule brings: that attempt's answer, or its timeout
            # and a repeat (answered "already reversed", or "25" again, which then settles).
            if rev.state is ReversalState.SENT:
                rev.answer_may_have_come = True
        elif code is not None and code in self._rules.resolved_codes:
            auth = rev.auth
            not_found = overtaken = False
            if auth is not None and auth.reversal is rev:
                kept = auth.reversal_fields
                pending = auth.pending
                not_found = code in self._rules.not_found_codes and not self._decline_known(auth)
                overtaken = not_found and pending is not None
                if overtaken:
                    # "Original not found" while the original's answer may still come: the
                    # reversal may have overtaken it, and the original may still wait in
                    # the acquirer's queue. Listen for its answer for another window.
                    assert pending is not None
                    window_end = now + self.settings.duplicate_window
                    pending.forget_at = max(pending.forget_at, window_end)
                self._close_auth(auth, AuthState.REVERSED, now, out)
                if overtaken:
                    auth.reversal_fields = kept  # in memory only: the journal has none
            data = notices.reversal_data(rev)
            fields = rev.fields
            self._close_reversal(rev, ReversalState.ACKNOWLEDGED, now, out)
            if not_found:
                # Not final yet. It keeps its STAN (no other message may take it meanwhile)
                # and its place in the index: another attempt's answer may still say it
                # released the hold (the 25 may have answered an earlier attempt).
                rev.reopenable = True
                self._stans.hold(rev.stan)
                self._index.setdefault(rev.index_key, []).append(rev)
                if overtaken:
                    # Until the request is forgotten, an approval reopens it: its fields too.
                    rev.fields = fields
                else:
                    # No approval can be matched any more (the request is forgotten, or was
                    # sent before a restart): listen for its other attempts' answers only.
                    self._timers.arm(rev, now + self.settings.reversal_timeout)
            out.append(Notify(notices.REVERSAL_ACKNOWLEDGED, {**data, "state": rev.state.value}))
            self._answer_waiters(rev, APPROVED_BY_GATEWAY, out)
        elif rev.state is ReversalState.SENT:
            self._attempt_failed(rev, now, out)
        # else: the answer to an earlier attempt says "not yet": the schedule stands

    def _note_unanswered(self, rev: Reversal) -> None:
        """The attempt on the wire got no answer (timeout, link lost): one may still come."""
        if not rev.answer_may_have_come:
            rev.unanswered = min(rev.unanswered + 1, UNANSWERED_KEPT)

    def _one_less_unanswered(self, rev: Reversal) -> bool:
        """An answer came: if attempts went unanswered, it may be the late answer of one of
        them (True), which is then waited for no longer."""
        if not rev.unanswered:
            return False
        rev.unanswered -= 1
        return True

    def _drop_reopenable(self, rev: Reversal) -> None:
        """Its "25" is final: its fields, STAN, index entry and listening timer go."""
        rev.reopenable = False
        rev.fields = {}
        self._timers.cancel(rev)
        self._stans.release(rev.stan)
        self._unindex(rev.index_key, rev)

    def _decline_known(self, auth: Authorization) -> bool:
        """The acquirer declined the original: nothing is held, no approval can follow."""
        return auth.response_code is not None and (
            auth.response_code not in self.settings.approval_codes
        )

    def _approval_known(self, rev: Reversal) -> bool:
        """The acquirer's approval of the reversal's original reached the gateway (in time,
        late, or read back from the journal after a restart)."""
        auth = rev.auth
        return (
            auth is not None
            and auth.reversal is rev
            and auth.response_code in self.settings.approval_codes
        )

    def _on_reversal_timer(self, rev: Reversal, now: float, out: list[Command]) -> None:
        if rev.state is ReversalState.SENT:  # no answer within reversal_timeout
            rev.forwarded = None
            self._note_unanswered(rev)
            self._attempt_failed(rev, now, out)
        elif rev.state is ReversalState.OWED:  # its next attempt is due, or it expired
            if now >= rev.expires_at and not rev.last_chance:
                self._fail(rev, now, out)
            elif self._primary is None:
                self._park(rev)
            else:
                self._send_attempt(rev, now, out)
        elif rev.reopenable:  # answered "25" and nothing came since: final now
            self._drop_reopenable(rev)

    def _attempt_failed(self, rev: Reversal, now: float, out: list[Command]) -> None:
        if rev.attempts >= self.settings.max_attempts or now >= rev.expires_at:
            self._fail(rev, now, out)
            return
        due = now + retry_delay(self.settings.retry_delays, rev.attempts)
        rev.state = ReversalState.OWED
        rev.link_id = None
        rev.next_attempt_at = due
        rev.updated_at = now
        out.append(Persist(rev.record()))
        self._timers.arm(rev, due)

    def _fail(self, rev: Reversal, now: float, out: list[Command]) -> None:
        """Given up: kept (FAILED, retryable by an operator) and alerted on, never dropped.
        It stays matchable, so a late acknowledgement still settles it."""
        self._reversals.pop(rev.reversal_id, None)
        self._parked.pop(rev, None)
        self._timers.cancel(rev)
        rev.state = ReversalState.FAILED
        rev.link_id = None
        rev.next_attempt_at = None
        rev.updated_at = now
        self._failed[rev.reversal_id] = rev
        out.append(Persist(rev.record()))
        out.append(Notify(notices.REVERSAL_FAILED, notices.reversal_data(rev)))
        self._answer_waiters(rev, self.dialect.decline_code, out)

    def _on_reversal_requeued(
        self, event: ReversalRequeued, now: float, out: list[Command]
    ) -> None:
        rev = self._failed.get(event.reversal_id)
        if rev is not None:
            self._requeue(rev, now, out)

    def _requeue(self, rev: Reversal, now: float, out: list[Command]) -> None:
        """FAILED -> OWED with a fresh count of attempts and a fresh expiry."""
        del self._failed[rev.reversal_id]
        rev.state = ReversalState.OWED
        rev.attempts = 0
        rev.expires_at = now + self.settings.reversal_expiry
        rev.updated_at = now
        self._reversals[rev.reversal_id] = rev
        out.append(Persist(rev.record()))
        out.append(Notify(notices.REVERSAL_REQUEUED, notices.reversal_data(rev)))
        self._schedule_soon(rev, now)

    def _schedule_soon(self, rev: Reversal, now: float) -> None:
        """Send at the next drain slot if a link is up, else wait for one."""
        if self._primary is None:
            self._park(rev)
        else:
            rev.next_attempt_at = self._pacer.next_slot(now)
            self._timers.arm(rev, rev.next_attempt_at)

    def _park(self, rev: Reversal) -> None:
        """No link: the reversal waits (no attempt counted) and fails only at its expiry (one
        recovered past its expiry waits for its last attempt: no timer until a link is up)."""
        self._parked[rev] = None
        if rev.last_chance:
            self._timers.cancel(rev)
        else:
            self._timers.arm(rev, rev.expires_at)

    def _drain(self, now: float) -> None:
        """A link is up: the reversals that waited for one leave at the drain rate."""
        if self._primary is None or not self._parked:
            return
        parked = sorted(self._parked, key=_drain_order)
        self._parked.clear()
        for rev in parked:
            rev.next_attempt_at = self._pacer.next_slot(now)
            self._timers.arm(rev, rev.next_attempt_at)

    def _close_reversal(
        self, rev: Reversal, state: ReversalState, now: float, out: list[Command]
    ) -> None:
        """ACKNOWLEDGED or CANCELLED: journaled without its fields (the PAN goes)."""
        self._reversals.pop(rev.reversal_id, None)
        self._failed.pop(rev.reversal_id, None)
        self._parked.pop(rev, None)
        self._timers.cancel(rev)
        rev.state = state
        rev.link_id = None
        rev.next_attempt_at = None
        rev.updated_at = now
        self._unindex(rev.index_key, rev)
        self._stans.release(rev.stan)
        out.append(Persist(rev.record()))
        rev.fields = {}
        if rev.auth is not None:
            self._forget_auth_if_done(rev.auth, now)

    # authorizations and pending requests ---------------------------------------------------------

    def _close_auth(
        self, auth: Authorization, state: AuthState, now: float, out: list[Command]
    ) -> None:
        """Nothing can be owed any more: the reversal fields (the PAN among them) go."""
        if auth.closed_at is None:
            self._open_auths -= 1
        auth.state = state
        auth.updated_at = now
        auth.closed_at = now
        auth.reversal_fields = self._fields_kept_when_closed(auth)
        out.append(Persist(auth.record(self._closed_record_fields(auth))))
        pending = auth.pending
        if pending is None:
            self._forget_auth_if_done(auth, now)
        elif pending.phase is not Phase.AWAITING and not pending.timer_seq:
            self._timers.arm(pending, max(now, pending.forget_at))

    def _closed_record_fields(self, auth: Authorization) -> Mapping[str, str]:
        """What the journal keeps of a closed authorization (never card data): while its
        request lingers, what finds a resend of it after a restart (``_restore_closed``): the
        request's match, duplicate and echo fields, DE 11 as the acquirer saw it, DE 4 as
        approved; and, of a reversed one, what ties its terminal's reversal
        (``_fields_kept_when_closed``)."""
        kept = self._fields_kept_when_closed(auth)
        pending = auth.pending
        if pending is None:
            return kept
        fields = pending.fields
        if isinstance(fields, EchoFields):  # settled
            journaled = fields.to_dict()
            if not self._lingering_is_journaled:  # the echo fields hold DE 2
                names = self._answer_field_set
                journaled = {name: value for name, value in journaled.items() if name in names}
        else:  # still awaiting its answer: the terminal's fields
            journaled = {
                name: value
                for name in self._answer_fields
                if (value := fields.get(name)) is not None
            }
        if "11" in journaled and pending.acquirer_stan is not None:
            journaled["11"] = pending.acquirer_stan
        if auth.approved_amount is not None:
            journaled["4"] = auth.approved_amount
        journaled.update(kept)
        return journaled

    def _fields_kept_when_closed(self, auth: Authorization) -> Mapping[str, str]:
        """The reversal fields (the PAN among them) go. Of a reversed original, DE 7 and the
        identity fields stay, for the terminal's reversal after a restart
        (``_restore_reversed``)."""
        if auth.state is not AuthState.REVERSED:
            return NO_FIELDS
        return self._identity_fields_of(auth)

    def _identity_fields_of(self, auth: Authorization) -> Mapping[str, str]:
        """What finds ``auth`` for a terminal's reversal (DE 7 for DE 90, the identity
        fields), as journaled fields: ``Authorization.from_record`` reads them back."""
        values = dict(zip(self._identity_fields, auth.identity, strict=False))
        values["7"] = auth.transmission_time
        return {name: value for name in self._kept_when_closed if (value := values.get(name))}

    def _forget_auth_if_done(self, auth: Authorization, now: float) -> None:
        """Drop a closed authorization from the lookup of terminal reversals once its request
        is forgotten and, if it had a reversal, ``history_window`` after it closed (so the
        terminal's own reversal of it is answered, not sent again)."""
        if auth.closed_at is None or auth.pending is not None:
            return
        rev = auth.reversal
        if rev is not None:
            if rev.state in _MERGEABLE:
                return
            until = auth.closed_at + self.settings.history_window
            if now < until:
                if not auth.timer_seq:
                    self._timers.arm(auth, until)
                return
        key = (auth.terminal_id, auth.stan)
        by_terminal = self._by_terminal.shard(key)
        candidates = by_terminal.get(key)
        if candidates is not None and auth in candidates:
            candidates.remove(auth)
            if not candidates:
                del by_terminal[key]
        auth.reversal = None  # let it go
        self._timers.cancel(auth)

    def _settle(self, pending: Pending, phase: Phase, now: float) -> None:
        """No longer awaiting the acquirer: linger ``duplicate_window`` seconds (and while its
        authorization is open), then forget. Only the echo fields are kept (no PAN, no track
        data) for the decline of duplicates."""
        pending.phase = phase
        self._awaiting.pop(pending, None)
        self._lingering += 1
        for conn_id in pending.conns:
            waits = self._conn_waits.get(conn_id)
            if waits is not None:
                waits.pop(pending, None)
        pending.fields = EchoFields(self._lingering_fields, pending.fields)
        pending.forget_at = now + self.settings.duplicate_window
        if not pending.timer_seq:
            self._timers.arm(pending, pending.forget_at)
        # else: the acquirer timeout is still armed; when it fires it re-arms for forget_at

    def _index_pending(self, pending: Pending) -> None:
        """Findable by its answer, its duplicates and its repeats (``_forget`` undoes it)."""
        self._index.setdefault(pending.index_key, []).append(pending)
        self._by_duplicate[pending.dup_key] = pending
        self._by_repeat[pending.repeat_key] = pending

    def _forget(self, pending: Pending, now: float) -> None:
        self._lingering -= 1
        self._timers.cancel(pending)
        self._unindex(pending.index_key, pending)
        by_duplicate = self._by_duplicate.shard(pending.dup_key)
        if by_duplicate.get(pending.dup_key) is pending:
            del by_duplicate[pending.dup_key]
        by_repeat = self._by_repeat.shard(pending.repeat_key)
        if by_repeat.get(pending.repeat_key) is pending:
            del by_repeat[pending.repeat_key]
        if pending.owns_stan and pending.acquirer_stan is not None:
            self._stans.release(pending.acquirer_stan)
        auth = pending.auth
        if auth is not None:
            auth.pending = None
            if auth.closed_at is not None:  # no late answer can come any more
                auth.reversal_fields = self._fields_kept_when_closed(auth)
                rev = auth.reversal
                if rev is not None and rev.reopenable:
                    self._drop_reopenable(rev)
            self._forget_auth_if_done(auth, now)

    def _unindex(self, key: IndexKey, item: _Matchable) -> None:
        index = self._index.shard(key)
        candidates = index.get(key)
        if candidates is not None:
            candidates.remove(item)
            if not candidates:
                del index[key]

    def _rebuilt_answer_fields(self, pending: Pending, auth: Authorization) -> dict[str, str]:
        """The answer to a request answered before a restart: its echo fields, the acquirer's
        response code and approval code as journaled."""
        answer = self._decline_fields(pending.fields)
        if auth.response_code:
            answer["39"] = auth.response_code
        if auth.approval_code:
            answer["38"] = auth.approval_code
        if auth.approved_amount is not None:
            answer["4"] = auth.approved_amount
        return answer

    def _decline_fields(self, fields: Mapping[str, str]) -> dict[str, str]:
        decline = {name: fields[name] for name in self._echo_fields if name in fields}
        decline["39"] = self.dialect.decline_code
        return decline


# Echoed as the terminal sent them: they tell two requests with one key apart.
_TELLING_FIELDS = ("7", "12", "13", "37")


def _answered(item: _Matchable) -> TypeGuard[Pending]:
    return isinstance(item, Pending) and item.phase is Phase.ANSWERED


def _contradicts(
    request: Mapping[str, str], response: Mapping[str, str], names: tuple[str, ...]
) -> bool:
    for name in names:
        sent, echoed = request.get(name), response.get(name)
        if sent and echoed and echoed not in (sent, UNREADABLE):
            return True
    return False


def _txn_id(auth: Authorization) -> int:
    return auth.txn_id


def _original_data(fields: Mapping[str, str]) -> str | None:
    """DE 90 of a terminal's reversal, when it carries one that names an original (MTI, STAN,
    DE 7)."""
    original_data = fields.get("90")
    return original_data if original_data and len(original_data) >= 20 else None


def _original_key(fields: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(DE 41, STAN) of the original a terminal's reversal names: the STAN in DE 90 when it
    carries one, else its own DE 11 (CUP terminals resend the original's)."""
    original_data = _original_data(fields)
    if original_data is not None:
        return fields.get("41"), original_data[4:10]
    return fields.get("41"), fields.get("11")


def _same_identity(asked: tuple[str | None, ...], known: tuple[str | None, ...]) -> bool:
    """A field either side lacks cannot tell them apart; one both carry must agree."""
    return all(a is None or b is None or a == b for a, b in zip(asked, known, strict=False))


def _drain_order(rev: Reversal) -> tuple[float, int]:
    return (rev.next_attempt_at or rev.created_at, rev.reversal_id)


def _expiry_of(saved: ReversalRecord, reversal_expiry: float) -> float:
    """When a journaled reversal expires: as journaled. Without one (``saf retry`` while no
    gateway ran, or a journal from before expiries were kept): ``reversal_expiry`` after its
    last update, the retry itself for a retried one; never earlier than the original rule."""
    if saved.expires_at is not None:
        return saved.expires_at
    return max(saved.created_at, saved.updated_at) + reversal_expiry
