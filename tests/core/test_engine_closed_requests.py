"""After a restart, requests closed less than ``duplicates.window`` ago are still known.

The journal gives a restarted core the authorizations closed within the window (delivered,
declined, reversed) with the fields that find a resend of them, never card data. A resend or
a repeat (0201) is then answered as the old process would have answered it, never forwarded
a second time: under STAN rewrite the acquirer would take it for a new sale and approve it
again, a second hold for one purchase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from gateway.core.commands import Command, Persist
from gateway.core.records import (
    OPEN_AUTH_STATES,
    AuthorizationRecord,
    AuthState,
    ReversalRecord,
    ReversalState,
)

from .helpers import (
    PAN,
    Harness,
    answer,
    auth_records,
    forwards,
    notices,
    replies,
    reversal_answer,
    reversed_by_the_gateway,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)
from .test_engine_recovery import journal, latest, reversed_recently
from .test_engine_terminal_reversal import cup_reversal, terminal_reversal

WINDOW = 60.0  # CoreSettings().duplicate_window


def closed_recently(commands: Iterable[Command], now: float) -> list[AuthorizationRecord]:
    """What ``Journal.load_closed_since(now - window)`` hands a restarted core."""
    auths, _ = latest(commands)
    return [
        a
        for a in auths.values()
        if a.state not in OPEN_AUTH_STATES and a.updated_at >= now - WINDOW
    ]


def restart(h: Harness, after: float = 5.0, **core_args: Any) -> Harness:
    now = h.now + after
    auths, revs = journal(h.log)
    fresh = Harness(
        now=now,
        open_authorizations=auths,
        open_reversals=revs,
        reversed_recently=reversed_recently(h.log),
        closed_recently=closed_recently(h.log, now),
        next_txn_id=100,
        next_reversal_id=100,
        **core_args,
    )
    fresh.log.extend(fresh.core.recover(fresh.now))
    return fresh


def test_a_resend_of_a_delivered_approval_gets_the_approval_again_not_a_second_sale() -> None:
    h = Harness()
    request = sale()
    h.approve(request)
    fresh = restart(h)
    for mti in ("0200", "0201"):  # a resend, a repeat
        out = fresh.request(request, conn=7, mti=mti)
        assert not forwards(out) and not to_terminal(out)
        [reply] = replies(out)
        assert (reply.conn_id, reply.mti) == (7, "0210")
        assert (reply.fields["39"], reply.fields["38"]) == ("00", "A1B2C3")
        assert {reply.fields[k] for k in ("4", "7", "11", "41")} == {
            request[k] for k in ("4", "7", "11", "41")
        }
        assert "2" not in reply.fields and PAN not in repr(out)
        [seen] = notices(out, "duplicate_request")
        assert seen.data["outcome"] == "rebuilt" and seen.data["txn_id"] == 1
    assert fresh.core.stats()["authorizations_open"] == 0


def test_a_resend_of_a_declined_request_gets_its_decline_again() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    h.respond(answer(request, "51"))
    fresh = restart(h)
    out = fresh.request(request, conn=7)
    assert not forwards(out)
    [reply] = replies(out)
    assert reply.fields["39"] == "51" and "38" not in reply.fields


def test_a_resend_of_a_reversed_request_is_declined_and_its_history_kept() -> None:
    h = Harness()
    request = sale()
    reversed_by_the_gateway(h, request)
    fresh = restart(h)
    out = fresh.request(request, conn=7, mti="0201")
    assert not forwards(out) and not sent_reversals(out)
    [decline] = replies(out)
    assert decline.fields["39"] == "91"
    # One authorization for both: its terminal's reversal is still answered by the gateway.
    out = fresh.request(terminal_reversal(request), conn=8, mti="0400")
    assert not forwards(out) and not sent_reversals(out)
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "answered"


def delivered_under_stan_rewrite_then_restart(request: dict[str, str]) -> tuple[Harness, str]:
    """``request`` is approved and delivered under STAN rewrite, then the gateway restarts;
    returns the new process and the STAN the acquirer saw."""
    rules = settings(stan_mode="rewrite")
    h = Harness(rules)
    [forward] = forwards(h.request(request))
    acquirer_stan = forward.replace["11"]
    delivery = to_terminal(h.respond(answer({**request, "11": acquirer_stan})))
    h.delivered(delivery[0].delivery_ref)
    return restart(h, settings=rules), acquirer_stan


def test_under_stan_rewrite_the_answer_carries_the_terminals_stan() -> None:
    request = sale("000042")
    fresh, acquirer_stan = delivered_under_stan_rewrite_then_restart(request)
    [reply] = replies(fresh.request(request, conn=7))
    assert reply.fields["11"] == "000042" and reply.fields["39"] == "00"
    # The acquirer repeating its answer holds nothing more: no alert.
    out = fresh.respond(answer({**request, "11": acquirer_stan}))
    [unmatched] = notices(out, "unmatched_response")
    assert unmatched.data["reason"] == "already_answered" and not unmatched.data["may_hold"]
    # The acquirer STAN stays taken while the old answer may still come.
    [new] = forwards(fresh.request(sale("000043"), conn=8))
    assert new.replace["11"] != acquirer_stan


def test_a_terminals_reversal_of_a_delivered_sale_names_the_stan_the_acquirer_saw() -> None:
    request = sale("000042")
    fresh, acquirer_stan = delivered_under_stan_rewrite_then_restart(request)
    out = fresh.request(terminal_reversal(request), conn=8, mti="0400")
    [upstream] = forwards(out)
    assert upstream.replace["90"][4:10] == acquirer_stan
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "forwarded"


def test_a_new_sale_reusing_the_stan_and_a_resend_after_the_window_are_forwarded() -> None:
    h = Harness()
    request = sale()
    h.approve(request)
    fresh = restart(h)
    assert forwards(fresh.request({**request, "7": "0908070000"}, conn=7))  # another sale
    fresh.advance(WINDOW)
    assert forwards(fresh.request(request, conn=8))  # forgotten, as by a running gateway


def test_records_closed_before_the_window_or_without_fields_are_not_remembered() -> None:
    h = Harness()
    request = sale()
    h.approve(request)
    assert forwards(restart(h, after=WINDOW + 1).request(request, conn=7))
    # journaled by a version that kept no fields of a closed authorization
    [closed] = [a for a in auth_records(h.log) if a.state is AuthState.DELIVERED]
    bare = dataclasses.replace(closed, reversal_fields={})
    older = Harness(now=h.now + 5, closed_recently=[bare], next_txn_id=100)
    assert forwards(older.request(request, conn=7))


def test_an_approval_of_an_original_reversed_not_found_before_the_restart_is_alerted() -> None:
    """The reversal overtook its original ("25") before the restart; the approval reaches the
    new process. The closed record keeps no PAN to reverse with: operations must hear of it
    (``UnmatchedApproval``), as when it matched nothing."""
    h = Harness()
    request = sale()
    h.request(request)
    [sent] = sent_reversals(h.advance(15))
    h.respond(reversal_answer(sent, "25"), mti="0410")
    fresh = restart(h)
    out = fresh.respond(answer(request))
    assert not to_terminal(out) and not sent_reversals(out)
    [alert] = notices(out, "unmatched_response")
    assert alert.data["reason"] == "reversed_before_restart" and alert.data["may_hold"]


# Findings of a review (restarts with a sale in doubt beside a closed one, partial approvals,
# a restart twice, a crash between two records of one step).

APPROVALS = settings().approval_codes


def _delivered_then_same_stan_in_flight(h: Harness) -> tuple[dict[str, str], dict[str, str]]:
    """txn 1 approved and delivered; txn 2, a new sale by the same terminal with the same STAN
    and amount (new DE 7/12), is in flight when the process dies."""
    first = sale("000001")
    h.approve(first)
    second = sale("000001", de7="0908064530", de12="064530")
    assert forwards(h.request(second, conn=2))  # another sale: forwarded (as the commit's test)
    return first, second


def test_repeat_of_the_sale_in_doubt_is_not_given_the_approval_of_an_older_closed_one() -> None:
    """Old process: the repeat (0201, new DE 7) of txn 2 finds txn 2 (the newest request with
    that DE 41 + DE 11) and is declined while txn 2 is being reversed. After the restart the
    closed txn 1 is indexed after the open txn 2 and wins ``_by_repeat``: the terminal gets
    txn 1's approval for txn 2, hands the goods over, and txn 2 is reversed."""
    h = Harness()
    _, second = _delivered_then_same_stan_in_flight(h)
    fresh = restart(h)  # txn 2 in doubt: its reversal is owed
    repeat = {**second, "7": "0908064545"}  # a repeat carries a new transmission time
    out = fresh.request(repeat, conn=7, mti="0201")
    assert not forwards(out)
    [reply] = replies(out)
    [seen] = notices(out, "duplicate_request")
    assert seen.data["txn_id"] == 2
    assert reply.fields["39"] not in APPROVALS


def test_terminal_reversal_without_de90_after_restart_ties_to_the_newest_original() -> None:
    """``_find_original`` walks ``_by_terminal`` newest first. ``_restore`` appends the open
    txn 2, ``_restore_closed`` then appends the older closed txn 1 (nothing sorts them), so a
    CUP-style 0400 (DE 41 + DE 11 + DE 4, no DE 90) is tied to the DELIVERED txn 1 and
    forwarded as its reversal (releasing a completed sale) instead of merging with txn 2's
    in-doubt reversal: two reversals upstream for one terminal reversal."""
    h = Harness()
    _, second = _delivered_then_same_stan_in_flight(h)
    fresh = restart(h)
    out = fresh.request(cup_reversal(second), conn=8, mti="0400")
    [seen] = notices(out, "terminal_reversal")
    assert seen.data["txn_id"] == 2
    assert seen.data["outcome"] == "merged"
    assert not forwards(out)


def test_rebuilt_partial_approval_does_not_claim_the_requested_amount() -> None:
    """DE 39 ``10`` (partial approval, one of ``approval_codes``): the acquirer's DE 4 is the
    amount approved. Rebuilt with the request's DE 4, the answer would tell the terminal the
    full amount was approved (the old process's cached bytes carried the acquirer's DE 4)."""
    h = Harness()
    request = sale()
    h.request(request)
    [delivery] = to_terminal(h.respond(answer(request, "10", de4="000000000500", de38="P12345")))
    h.delivered(delivery.delivery_ref)
    fresh = restart(h)
    [reply] = replies(fresh.request(request, conn=7))
    assert reply.fields["39"] == "10"
    assert reply.fields["4"] == "000000000500", "partial approval rebuilt with the full amount"


def cut_before_reversal_acknowledged(log: list[Command]) -> list[Command]:
    """The journal kept a prefix: the original's REVERSED record but not its reversal's
    ACKNOWLEDGED one (an authorization is closed before its reversal)."""
    for i, command in enumerate(log):
        record = getattr(command, "record", None)
        if isinstance(record, ReversalRecord) and record.state is ReversalState.ACKNOWLEDGED:
            return log[:i]
    raise AssertionError("no acknowledged reversal")


def restarted_without_the_acknowledgement(
    request: dict[str, str], **settings_: Any
) -> tuple[Harness, Harness]:
    """The sale times out and its reversal is acknowledged; a crash keeps the sale's REVERSED
    record but not the acknowledgement (``cut_before_reversal_acknowledged``). Returns (the
    old process, the restarted one)."""
    rules = settings(**settings_)
    h = Harness(rules)
    h.request(request)
    [sent] = sent_reversals(h.advance(15))
    h.respond(reversal_answer(sent, "00"), mti="0410")
    h.log[:] = cut_before_reversal_acknowledged(h.log)
    return h, restart(h, settings=rules)


def test_second_restart_still_remembers_a_request_reversed_after_the_first() -> None:
    """Restart 1 finds a REVERSED original whose reversal is still open (crash between the two
    records); the reversal goes again and is acknowledged, and ``_close_auth`` journals the
    original again from ``reversal_fields`` that ``_restore_closed`` emptied: only DE 7 and the
    identity fields. Restart 2, within the window: the request is no longer rebuilt and the
    terminal's repeat goes upstream (under STAN rewrite: a new sale)."""
    request = sale()
    h, first = restarted_without_the_acknowledgement(request)
    out = first.request(request, conn=7, mti="0201")  # remembered after restart 1
    assert not forwards(out)
    [again] = sent_reversals(first.advance(1))
    first.respond(reversal_answer(again, "00"), mti="0410")
    closing = [
        c.record
        for c in first.log
        if isinstance(c, Persist) and getattr(c.record, "state", None) is AuthState.REVERSED
    ]
    assert closing, "the original is journaled again when its reversal is acknowledged"
    second = restart_on(h.log + first.log, first)
    out = second.request(request, conn=9, mti="0201")
    assert not forwards(out), "a repeat of a reversed request forwarded after a second restart"


def test_restart_still_remembers_a_reversed_request_after_its_late_decline() -> None:
    """Same loss through ``_note_late_decline``: the original's late decline re-journals the
    REVERSED record with DE 7 and the identity fields only."""
    h = Harness()
    request = sale()
    h.request(request)
    [sent] = sent_reversals(h.advance(15))
    h.respond(reversal_answer(sent, "00"), mti="0410")
    h.respond(answer(request, "05"))  # the original's late decline
    fresh = restart(h)
    out = fresh.request(request, conn=9, mti="0201")
    assert not forwards(out), "a repeat of a reversed request forwarded after a restart"


def restart_on(log: list[Command], h: Harness) -> Harness:
    """Restart from the whole journal history ``log`` (both incarnations), 5 s after ``h``."""
    carrier = Harness(links=(), now=h.now)
    carrier.log = log
    return restart(carrier)


def test_repeat_of_the_sale_in_doubt_is_not_forwarded_once_the_older_closed_one_is_forgotten() -> (
    None
):
    """Same root cause, other side: txn 1 (restored after txn 2) took txn 2's ``_by_repeat``
    entry, and forgetting txn 1 at the end of its window deletes it. txn 2 is still being
    reversed, yet its repeat is forwarded upstream: a second forward of one sale."""
    h = Harness()
    _, second = _delivered_then_same_stan_in_flight(h)
    fresh = restart(h)
    fresh.run_until(fresh.now + 70)  # txn 1's window is over; txn 2's reversal still unanswered
    assert fresh.core.stats()["authorizations_open"] == 1
    repeat = {**second, "7": "0908064645"}
    out = fresh.request(repeat, conn=7, mti="0201")
    assert not forwards(out), "the repeat of a sale being reversed was forwarded again"


def test_resend_of_a_delivered_sale_whose_terminal_reversal_was_open_at_restart_is_declined() -> (
    None
):
    """The terminal reversed its delivered sale (0400 forwarded); the journal kept the new
    reversal (OWED) but not yet the original's REVERSING record (a reversal is journaled
    before its authorization turns REVERSING). After the restart ``_restore_closed`` rebuilds
    the DELIVERED request (reversal None) and ``_restore_reversed`` ties the open reversal to a
    second Authorization object for the same txn. A resend of the sale then gets the approval
    rebuilt, although the sale is being reversed: goods handed over, payment released. The old
    process declined it (its authorization was REVERSING)."""
    h = Harness()
    request = sale()
    h.approve(request)
    h.request(terminal_reversal(request), conn=8, mti="0400")
    cut = next(
        i
        for i, c in enumerate(h.log)
        if isinstance(c, Persist) and getattr(c.record, "state", None) is AuthState.REVERSING
    )
    h.log[:] = h.log[:cut]
    fresh = restart(h)
    out = fresh.request(request, conn=7)
    assert not forwards(out)
    [reply] = replies(out)
    assert reply.fields["39"] not in APPROVALS, "approval rebuilt for a sale being reversed"


def test_an_answer_telling_nothing_goes_to_the_request_still_without_one() -> None:
    """Two lingering requests share a key (the STAN reused within the window), and the answer
    echoes none of DE 7/12/13/37. It cannot be the acquirer repeating the answered one's (its
    approval code differs): it is the other's late answer. Taken for a repeat, a late approval
    would be neither alerted nor keep the other's reversal going."""
    h = Harness()
    first = sale("000001")
    h.approve(first)
    second = sale("000001", de7="0908064530", de12="064530")
    h.request(second, conn=2)
    assert sent_reversals(h.advance(15))  # the second timed out: its reversal goes
    out = h.respond(answer(second, de38="B2C3D4"))  # DE 11, 38, 39 and 41 only
    assert notices(out, "late_response") and not notices(out, "unmatched_response")
    [auth] = auth_records(out)
    assert auth.txn_id == 2 and auth.approval_code == "B2C3D4"
    assert h.core.stats()["reversals_owed"] == 1  # the reversal goes on
