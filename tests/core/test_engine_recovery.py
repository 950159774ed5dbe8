"""Crash recovery: the core rebuilt from the open records the journal kept."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.core.commands import Command, SendToAcquirer
from gateway.core.engine import GatewayCore
from gateway.core.records import (
    OPEN_AUTH_STATES,
    OPEN_REVERSAL_STATES,
    AuthorizationRecord,
    AuthState,
    ReversalReason,
    ReversalRecord,
    ReversalState,
)
from gateway.core.settings import CoreSettings
from gateway.wire.dialect import ReversalRules

from .helpers import (
    Harness,
    answer,
    auth_records,
    forwards,
    make_dialect,
    notices,
    records,
    replies,
    reversal_answer,
    reversal_records,
    reversed_by_the_gateway,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)
from .test_engine_terminal_reversal import cup_reversal, terminal_reversal


def latest(
    commands: Iterable[Command],
) -> tuple[dict[int, AuthorizationRecord], dict[int, ReversalRecord]]:
    """The latest snapshot of each authorization and reversal, by id."""
    auths: dict[int, AuthorizationRecord] = {}
    revs: dict[int, ReversalRecord] = {}
    for record in records(commands):
        if isinstance(record, AuthorizationRecord):
            auths[record.txn_id] = record
        else:
            revs[record.reversal_id] = record
    return auths, revs


def journal(commands: Iterable[Command]) -> tuple[list[AuthorizationRecord], list[ReversalRecord]]:
    """The open ones only: what the journal hands a restarted core."""
    auths, revs = latest(commands)
    return (
        [a for a in auths.values() if a.state in OPEN_AUTH_STATES],
        [r for r in revs.values() if r.state in OPEN_REVERSAL_STATES],
    )


def restart(h: Harness, *, link: bool = True, **overrides: object) -> tuple[Harness, list[Command]]:
    auths, revs = journal(h.log)
    ids = [a.txn_id for a in auths] + [0]
    rids = [r.reversal_id for r in revs] + [0]
    fresh = Harness(
        links=(),
        now=h.now + 5,
        open_authorizations=auths,
        open_reversals=revs,
        next_txn_id=max(ids) + 1,
        next_reversal_id=max(rids) + 1,
        **overrides,  # type: ignore[arg-type]
    )
    out = fresh.core.recover(fresh.now)
    fresh.log.extend(out)
    if link:
        fresh.link_up(1)
    return fresh, out


def in_doubt_reversal_after_restart(request: dict[str, str]) -> tuple[Harness, SendToAcquirer]:
    """``request`` is in flight when the gateway restarts; the new process sends its in-doubt
    reversal at the first drain slot."""
    h = Harness()
    h.request(request)
    fresh, _ = restart(h)
    [sent] = sent_reversals(fresh.run_until(fresh.now + 1))
    return fresh, sent


def test_in_flight_and_approved_authorizations_are_in_doubt_and_reversed() -> None:
    h = Harness()
    h.request(sale("000001"))
    approved = sale("000002")
    h.request(approved)
    h.respond(answer(approved))  # delivery result never came
    delivered = sale("000003")
    h.approve(delivered)
    fresh, out = restart(h)
    revs = reversal_records(out)
    assert [(r.txn_id, r.reason, r.state) for r in revs] == [
        (1, ReversalReason.IN_DOUBT, ReversalState.OWED),
        (2, ReversalReason.IN_DOUBT, ReversalState.OWED),
    ]
    assert [(a.txn_id, a.state) for a in auth_records(out)] == [
        (1, AuthState.REVERSING),
        (2, AuthState.REVERSING),
    ]
    sends = sent_reversals(fresh.run_until(fresh.now + 1))
    assert len(sends) == 2
    assert sends[1].fields["38"] == "A1B2C3"  # the approval code was journaled
    assert {s.fields["39"] for s in sends} == {"68"}


def test_open_reversals_resume_and_a_sent_one_goes_again_as_a_repeat() -> None:
    h = Harness()
    h.request(sale("000001"))
    h.advance(15)  # SENT
    h.request(sale("000002"))
    h.link_down(1)  # second one OWED, never sent
    fresh, out = restart(h)
    assert not reversal_records(out)  # nothing new owed
    sends = sent_reversals(fresh.run_until(fresh.now + 1))
    assert sorted(s.mti for s in sends) == ["0400", "0401"]
    for sent in sends:
        done = fresh.respond({"11": sent.fields["11"], "41": "TERM0001", "39": "00"}, mti="0410")
        assert [type(r).__name__ for r in records(done)] == [
            "AuthorizationRecord",
            "ReversalRecord",
        ]
        assert auth_records(done)[0].state is AuthState.REVERSED
    assert fresh.core.stats()["reversals_owed"] == 0
    assert fresh.core.stats()["authorizations_open"] == 0


def test_failed_reversals_stay_failed_until_requeued() -> None:
    h = Harness(settings(max_attempts=1))
    h.request(sale())
    h.run_until(h.now + 30)
    fresh, out = restart(h, settings=settings(max_attempts=1))
    assert not out and fresh.core.stats()["reversals_failed"] == 1
    assert not sent_reversals(fresh.run_until(fresh.now + 1000))
    fresh.requeue(1)
    assert sent_reversals(fresh.advance(0))


def test_ids_continue_after_restart() -> None:
    h = Harness()
    h.request(sale("000001"))
    fresh, out = restart(h)
    assert reversal_records(out)[0].reversal_id == 1
    request = sale("000009")
    assert auth_records(fresh.request(request))[0].txn_id == 2


def test_reversal_whose_authorization_closed_before_the_crash_still_completes() -> None:
    h = Harness()
    h.request(sale())
    [sent] = sent_reversals(h.advance(15))
    auths, revs = journal(h.log)
    # the crash came after the authorization's REVERSED was durable, before the reversal's
    auths = []
    core = GatewayCore(
        h.core.dialect, settings(), now=h.now, open_authorizations=auths, open_reversals=revs,
        next_txn_id=2, next_reversal_id=2,
    )  # fmt: skip
    assert not core.recover(h.now)
    fresh = Harness(links=())
    fresh.core = core
    fresh.now = h.now
    fresh.link_up(1)
    [again] = sent_reversals(fresh.advance(0))
    assert again.mti == "0401" and again.fields["11"] == sent.fields["11"]
    out = fresh.respond({"11": again.fields["11"], "39": "00"}, mti="0410")
    assert [type(r).__name__ for r in records(out)] == ["ReversalRecord"]


def test_recovered_reversals_wait_for_a_link_and_drain_at_the_rate() -> None:
    h = Harness()
    for n in range(20):
        h.request(sale(f"{n + 1:06d}"), conn=n + 1)
    fresh, _ = restart(h, link=False, settings=settings(reversal_drain_rate=5.0))
    assert not sent_reversals(fresh.advance(60))
    fresh.link_up(1)
    out = fresh.advance(0.99)
    assert len(sent_reversals(out)) == 5  # slots at 0, 0.2, ..., 0.8
    assert len(sent_reversals(fresh.advance(1.0))) == 5


def test_a_journaled_delivered_approval_is_not_in_doubt() -> None:
    h = Harness()
    request = sale()
    h.approve(request)
    fresh, out = restart(h)
    assert not out and not sent_reversals(fresh.run_until(fresh.now + 100))


def test_an_answer_after_the_restored_request_is_forgotten_is_unmatched() -> None:
    request = sale()
    fresh, sent = in_doubt_reversal_after_restart(request)
    fresh.respond(reversal_answer(sent), mti="0410")
    fresh.run_until(fresh.now + CoreSettings().duplicate_window + 1)
    out = fresh.respond(answer(request))
    assert not to_terminal(out)
    [unmatched] = notices(out, "unmatched_response")
    # An approval of an authorization nobody knows of: funds may be held (an alert).
    assert unmatched.data["reason"] == "no_request" and unmatched.data["may_hold"] is True


@pytest.mark.parametrize(
    ("mti", "fields", "may_hold"),
    [
        ("0210", {"39": "05"}, False),  # a decline holds nothing
        ("0110", {"3": "310000", "39": "00"}, False),  # a balance inquiry holds nothing
        ("0410", {"39": "00"}, False),  # a reversal's answer
        ("0110", {"3": "000000", "39": "00"}, True),
    ],
)
def test_which_unmatched_answers_may_hold_funds(
    mti: str, fields: dict[str, str], may_hold: bool
) -> None:
    h = Harness()
    out = h.respond({"11": "777777", "41": "TERM0001", **fields}, mti=mti)
    [unmatched] = notices(out, "unmatched_response")
    assert unmatched.data["may_hold"] is may_hold


def _failed_long_ago() -> tuple[Harness, CoreSettings]:
    """A reversal that failed after its attempts, then sat failed past its first expiry."""
    rules = settings(max_attempts=2, reversal_expiry=100.0)
    h = Harness(rules)
    h.request(sale())
    h.run_until(h.now + 100)
    assert h.core.stats()["reversals_failed"] == 1
    h.advance(1000)
    return h, rules


def test_a_retried_reversal_keeps_its_renewed_expiry_across_a_restart() -> None:
    # `saf retry` while the gateway runs: the core renews the expiry and journals it, so a
    # restart before the reversal is through does not take the renewal back.
    h, rules = _failed_long_ago()
    h.requeue(1)
    [requeued] = reversal_records(h.log[-3:])
    assert requeued.expires_at == h.now + 100.0
    fresh, _ = restart(h, settings=rules)
    assert len(sent_reversals(fresh.run_until(fresh.now + 90))) == 2  # a full budget again


def test_a_reversal_retried_while_no_gateway_ran_gets_a_full_budget_at_start() -> None:
    # `saf retry` on a stopped gateway's journal: OWED, no attempts, expiry unknown (NULL).
    h, rules = _failed_long_ago()
    auths, revs = journal(h.log)
    retried = dataclasses.replace(
        revs[0],
        state=ReversalState.OWED,
        attempts=0,
        next_attempt_at=h.now,
        updated_at=h.now,
        expires_at=None,
    )
    fresh = Harness(
        rules, links=(), now=h.now + 5, open_authorizations=auths, open_reversals=[retried]
    )
    fresh.log.extend(fresh.core.recover(fresh.now))
    fresh.link_up(1)
    assert len(sent_reversals(fresh.run_until(fresh.now + 90))) == 2


def test_a_reversal_past_its_expiry_at_restart_gets_one_more_attempt() -> None:
    # Owed, its expiry passed while the gateway was down: one attempt, then failed.
    rules = settings(reversal_expiry=100.0, max_attempts=20)
    h = Harness(rules)
    h.request(sale())
    h.run_until(h.now + 40)  # timed out; its reversal sent, unanswered, repeated
    assert sent_reversals(h.log)
    auths, revs = journal(h.log)
    assert [r.state for r in revs] == [ReversalState.OWED]
    # The gateway was down for 1,000 s meanwhile: past its expiry when it starts again.
    fresh = Harness(
        rules, links=(), now=h.now + 1000, open_authorizations=auths, open_reversals=revs
    )
    fresh.core.recover(fresh.now)
    fresh.link_up(1)
    out = fresh.run_until(fresh.now + 1)
    [attempt] = sent_reversals(out)
    assert attempt.mti == "0401"  # the host saw it before
    assert not [r for r in reversal_records(out) if r.state is ReversalState.FAILED]
    out = fresh.run_until(fresh.now + 60)  # unanswered again: now it fails
    assert [r.state for r in reversal_records(out)][-1] is ReversalState.FAILED


def reversed_recently(
    commands: Iterable[Command],
) -> list[tuple[AuthorizationRecord, ReversalRecord]]:
    """What ``Journal.load_reversed_since`` hands a restarted core: closed originals with their
    acknowledged or still open reversal (the latest snapshot of each)."""
    auths, revs = latest(commands)
    return [
        (auths[rev.txn_id], rev)
        for rev in revs.values()
        if rev.state in (ReversalState.ACKNOWLEDGED, *OPEN_REVERSAL_STATES)
        and auths[rev.txn_id].state not in OPEN_AUTH_STATES
    ]


def restart_remembering(h: Harness, after: float, **core_args: Any) -> Harness:
    fresh = Harness(
        now=h.now + after,
        reversed_recently=reversed_recently(h.log),
        next_txn_id=10,
        next_reversal_id=10,
        **core_args,
    )
    fresh.log.extend(fresh.core.recover(fresh.now))
    return fresh


def test_a_terminal_reversal_after_a_restart_finds_the_original_the_gateway_reversed() -> None:
    """Exactly once across a restart: the original's acknowledged reversal is remembered
    (``history_window``), so the terminal's own 0400 is answered by the gateway, not sent
    upstream as a second reversal of one hold."""
    h = Harness()
    original = sale()
    reversed_by_the_gateway(h, original)
    fresh = restart_remembering(h, 60)
    out = fresh.request(terminal_reversal(original), conn=5, mti="0400")
    assert not forwards(out) and not sent_reversals(out) and not records(out)
    [reply] = replies(out)
    assert (reply.conn_id, reply.mti, reply.fields["39"]) == (5, "0410", "00")
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "answered"
    assert fresh.core.stats()["authorizations_open"] == 0


def test_a_reversed_original_is_forgotten_history_window_after_its_reversal() -> None:
    h = Harness(settings(history_window=600))
    original = sale()
    reversed_by_the_gateway(h, original)
    fresh = restart_remembering(h, 300, settings=settings(history_window=600))
    fresh.run_until(fresh.now + 301)  # its timer: history_window after it closed
    out = fresh.request(terminal_reversal(original), conn=5, mti="0400")
    assert forwards(out) and not replies(out)  # an unknown original: passed through as it is
    # and one restarted past the window is not remembered at all
    late = restart_remembering(h, 601, settings=settings(history_window=600))
    out = late.request(terminal_reversal(original), conn=5, mti="0400")
    assert forwards(out) and not replies(out)


def test_after_a_restart_a_shared_terminal_id_still_ties_each_reversal_to_its_own() -> None:
    """CUP: the merchant (DE 42) is kept with the reversed original, so another merchant's
    terminal with the same id and STAN is not answered in its place."""
    rules = ReversalRules(stan="original")
    cup_like = make_dialect(
        reversal=rules, match_fields=("41", "42", "11"), duplicate_fields=("41", "42", "11", "4")
    )
    h = Harness(dialect=cup_like)
    ours = {**sale("000403"), "42": "850100082410999"}
    reversed_by_the_gateway(h, ours)
    [closed] = [a for a in auth_records(h.log) if a.state is AuthState.REVERSED]
    kept = closed.reversal_fields
    assert kept["7"] == ours["7"] and kept["42"] == ours["42"] and "2" not in kept  # no card data
    fresh = restart_remembering(h, 60, dialect=cup_like)
    theirs = {**cup_reversal(ours), "42": "850100082410002"}
    out = fresh.request(theirs, conn=1, mti="0400")
    assert forwards(out) and not replies(out)
    out = fresh.request(cup_reversal(ours), conn=2, mti="0400")
    assert not forwards(out) and replies(out)[0].fields["39"] == "00"


def test_a_delivered_original_reopened_by_its_terminal_is_found_after_a_restart() -> None:
    """A delivered approval's fields are gone; the terminal's 0400 reopens it. The reopened
    record must still carry DE 7, or after a restart the terminal's repeat (0401, DE 90) is
    passed upstream as a reversal of an unknown original: a second reversal of one hold."""
    h = Harness()
    original = sale()
    h.approve(original)
    h.request(terminal_reversal(original), conn=1, mti="0400")  # forwarded, unanswered
    [reopened] = [a for a in auth_records(h.log) if a.state is AuthState.REVERSING]
    kept = reopened.reversal_fields
    assert kept["7"] == original["7"] and "2" not in kept  # and no card data
    fresh, _ = restart(h)
    out = fresh.request(terminal_reversal(original), conn=2, mti="0401")
    assert not forwards(out)  # merged with the restored reversal, which goes again
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "merged"


CUP_LIKE = make_dialect(
    reversal=ReversalRules(stan="original"),
    match_fields=("41", "42", "11"),
    duplicate_fields=("41", "42", "11", "4"),
)


def test_a_reversal_answered_original_not_found_is_not_remembered() -> None:
    """A "25" released nothing, and the original may be approved after it: the terminal's own
    reversal must reach the acquirer, not be answered by the gateway."""
    h = Harness()
    original = sale()
    reversed_by_the_gateway(h, original, "25")
    fresh = restart_remembering(h, 30)
    assert notices(fresh.respond(answer(original)), "unmatched_response")  # now it holds
    out = fresh.request(terminal_reversal(original), conn=5, mti="0400")
    assert forwards(out) and not replies(out)


def test_a_reversed_original_journaled_without_its_fields_is_not_remembered() -> None:
    """Rows of an older version (or of an original with none of DE 7 and the identity fields)
    hold nothing to tie by: remembered, they would match another merchant's reversal."""
    h = Harness(dialect=CUP_LIKE)
    ours = {**sale("000403"), "42": "850100082410999"}
    reversed_by_the_gateway(h, ours)
    older = [(dataclasses.replace(a, reversal_fields={}), r) for a, r in reversed_recently(h.log)]
    fresh = Harness(dialect=CUP_LIKE, now=h.now + 60, reversed_recently=older, next_txn_id=10)
    theirs = {**cup_reversal(ours), "42": "850100082410002"}
    out = fresh.request(theirs, conn=1, mti="0400")
    assert forwards(out) and not replies(out)


def test_a_remembered_original_never_hides_a_newer_open_one() -> None:
    """A CUP terminal whose STAN counter restarted: an older reversed original and a newer one
    whose reversal failed share DE 41/42/11/4. After a restart the terminal's reversal is tied
    to the newer one (merged, its reversal requeued), as without the restart."""
    slow = settings(max_attempts=1)
    h = Harness(slow, dialect=CUP_LIKE)
    older = {**sale("000403"), "7": "0908064519"}
    reversed_by_the_gateway(h, older)
    h.advance(120)
    newer = {**sale("000403"), "7": "0908064719", "12": "064719", "37": "325106000002"}
    h.request(newer)
    h.advance(15)  # timed out: its reversal is sent
    h.advance(10)  # unanswered, one attempt allowed: failed
    auths, revs = journal(h.log)
    assert [r.state for r in revs] == [ReversalState.FAILED]
    fresh = Harness(
        slow,
        dialect=CUP_LIKE,
        now=h.now + 5,
        open_authorizations=auths,
        open_reversals=revs,
        reversed_recently=reversed_recently(h.log),
        next_txn_id=10,
        next_reversal_id=10,
    )
    fresh.log.extend(fresh.core.recover(fresh.now))
    out = fresh.request(cup_reversal(newer), conn=3, mti="0400")
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "merged"


def restart_with_the_acknowledgement_lost(original: dict[str, str]) -> Harness:
    """``original`` times out and its reversal is acknowledged, but the crash kept the
    original's closing record (REVERSED) and not the reversal's (still SENT): the restarted
    core has the reversal without its request."""
    h = Harness()
    h.request(original)
    [sent] = sent_reversals(h.advance(15))
    h.respond(reversal_answer(sent), mti="0410")
    [closed] = [a for a in auth_records(h.log) if a.state is AuthState.REVERSED]
    [still_sent] = [r for r in reversal_records(h.log) if r.state is ReversalState.SENT]
    fresh = Harness(
        now=h.now + 5,
        open_reversals=[still_sent],
        reversed_recently=[(closed, still_sent)],
        next_txn_id=10,
        next_reversal_id=10,
    )
    fresh.log.extend(fresh.core.recover(fresh.now))
    return fresh


def test_an_open_reversal_whose_original_closed_is_tied_again_after_a_restart() -> None:
    """A crash kept the original's closing record (REVERSED) but not its reversal's (still
    SENT): the reversal goes again, and the terminal's own reversal merges with it instead of
    going upstream as a second reversal."""
    original = sale()
    fresh = restart_with_the_acknowledgement_lost(original)
    out = fresh.request(terminal_reversal(original), conn=5, mti="0400")
    assert not forwards(out)
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "merged"
    [again] = sent_reversals(fresh.advance(1))  # the restored reversal, at the drain rate
    out = fresh.respond({"11": again.fields["11"], "41": original["41"], "39": "00"}, mti="0410")
    assert [(r.conn_id, r.fields["39"]) for r in replies(out)] == [(5, "00")]
