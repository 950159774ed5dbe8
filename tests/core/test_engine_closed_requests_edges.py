"""Closed requests remembered across a restart: the rarer paths (found by review).

A reversed original reopened by its late approval after one restart, then a second restart;
the decline of a resend in a running gateway (it still echoes the terminal's own PAN where the
dialect echoes DE 2); an original with two acknowledged reversals; a dialect that names the
PAN among its duplicate fields. (Answers on a key two requests share:
test_engine_shared_key_answers.py.)
"""

from __future__ import annotations

import dataclasses

from gateway.core.records import AuthState, ReversalRecord
from gateway.wire.dialect import get_dialect

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
from .test_engine_closed_requests import restart, restart_on, restarted_without_the_acknowledgement
from .test_engine_recovery import latest
from .test_engine_terminal_reversal import terminal_reversal

# A restored REVERSED original reopened by its late approval keeps its journaled fields.


def _reopened_by_its_approval_after_a_restart(
    rules_mode: str = "rewrite",
) -> tuple[Harness, Harness, dict[str, str]]:
    """Process 1: the sale times out, the gateway's reversal is acknowledged; the journal kept
    the original's REVERSED record but not the reversal's ACKNOWLEDGED one (crash between the
    two records of one step). Process 2: the reversal goes again and is answered "original
    not found" (twice: the first 25 is taken as the late answer of the attempt lost with the
    old process), then the original's approval arrives by station: the reversal reopens and the
    original is REVERSING again. Returns (process 1, process 2, the sale)."""
    request = sale()
    h, second = restarted_without_the_acknowledgement(request, stan_mode=rules_mode)
    [forward] = forwards(h.log)
    acquirer_stan = forward.replace.get("11", request["11"])
    for _ in range(40):  # answer every attempt "25" until the reversal settles
        for attempt in sent_reversals(second.advance(5)):
            second.respond(reversal_answer(attempt, "25"), mti="0410")
        if notices(second.log, "reversal_acknowledged"):
            break
    assert notices(second.log, "reversal_acknowledged")
    out = second.respond(answer({**request, "11": acquirer_stan}))  # the approval, by station
    [reopened] = auth_records(out)
    assert reopened.state is AuthState.REVERSING
    return h, second, request


def test_a_restored_reversed_original_reopened_by_its_approval_keeps_its_journaled_fields() -> None:
    """``_reverse_overtaken`` calls ``_keep_approval_code`` first, which turns the restored
    authorization's empty ``reversal_fields`` into {"38": ...}; ``_reopen_auth`` then sees
    non-empty fields and does not journal the identity and closed-record fields. The REVERSING
    record keeps DE 38 alone: no DE 7, no DE 11, no match/duplicate fields."""
    _, second, request = _reopened_by_its_approval_after_a_restart()
    [reopened] = [a for a in auth_records(second.log) if a.state is AuthState.REVERSING]
    fields = dict(reopened.reversal_fields)
    assert fields.get("7") == request["7"], f"REVERSING record journaled {fields}"
    assert "11" in fields and "41" in fields


def test_after_another_restart_a_repeat_of_that_original_is_not_forwarded_again() -> None:
    """Third process (restart while the reopened reversal is still going): the open record
    has only DE 38, so the request rebuilt from it has DE 41/7/12/13 unknown and no DE 11 in
    its index key; the terminal's repeat (0201) no longer finds it and goes upstream. Under
    STAN rewrite the acquirer sees a new STAN: a new sale, a second hold, while the first is
    being reversed."""
    first, second, request = _reopened_by_its_approval_after_a_restart("rewrite")
    carrier = Harness(links=(), now=second.now)
    carrier.log = first.log + second.log  # the journal of both processes
    third = restart(carrier, settings=settings(stan_mode="rewrite"))
    assert third.core.stats()["authorizations_open"] == 1
    out = third.request(request, conn=9, mti="0201")
    assert not forwards(out), "a repeat of a sale being reversed was forwarded upstream again"


def test_after_another_restart_the_terminals_reversal_of_that_original_is_not_a_second_one() -> (
    None
):
    """Same third process: DE 7 was not journaled, so ``_find_original`` cannot tie the
    terminal's 0400 (DE 90 names DE 7) to the original being reversed; it is forwarded as a
    pass-through reversal while the gateway's reopened reversal goes on: two reversals
    upstream for one original."""
    first, second, request = _reopened_by_its_approval_after_a_restart("passthrough")
    third = restart_on(first.log + second.log, second)
    out = third.request(terminal_reversal(request), conn=10, mti="0400")
    assert not forwards(out), "the terminal's reversal went upstream beside the gateway's"
    [seen] = notices(out, "terminal_reversal")
    assert seen.data["outcome"] == "merged" and seen.data["txn_id"] == 1


# In process: the decline of a duplicate echoes the terminal's own DE 2, as before.


def test_in_process_the_decline_of_a_resend_still_echoes_the_pan_the_terminal_sent() -> None:
    """``_settle`` now keeps ``_answer_fields`` (card data removed) instead of
    ``_echo_fields``: under cup-pos (and visa-base1), whose responses echo DE 2, the decline of
    a resend of a timed-out sale lost DE 2, while the first decline (built before ``_settle``)
    still has it. No restart is involved: the terminal's own message carried DE 2. Behaviour
    of 32cc57c: both declines echo it."""
    h = Harness(dialect=get_dialect("cup-pos"))
    request = sale()
    [first] = replies(h.request(request) + h.advance(15))  # timeout: the gateway's decline
    assert first.fields.get("2") == PAN
    [again] = replies(h.request(request, conn=7))  # the terminal's resend, same process
    assert again.fields.get("39") == "91"
    assert again.fields.get("2") == PAN, "the duplicate's decline dropped the echoed DE 2"
    # In memory only: the original, closed, journals no PAN.
    for visa_or_cup in ("cup-pos", "visa-base1"):
        h = Harness(dialect=get_dialect(visa_or_cup))
        h.approve(request)
        [closed] = [a for a in auth_records(h.log) if a.state is AuthState.DELIVERED]
        assert closed.reversal_fields and "2" not in closed.reversal_fields
        assert PAN not in repr(dict(closed.reversal_fields))


# One authorization, two acknowledged reversals: listed once, released.


def test_a_reversed_original_with_two_acknowledged_reversals_is_forgotten_after_a_restart() -> None:
    """Process 1 (after a restart of its own) reverses an in-doubt sale: its reversal is
    answered "25", the terminal's own 0400 goes upstream as a second reversal (the restored
    request cannot hear the approval) and is acknowledged "00", then the first one's other
    attempt is answered "00". The journal holds one REVERSED original with two acknowledged
    reversals. ``_restore_reversed`` now ties both to the one object ``_restore_closed``
    built and appends it to ``_by_terminal`` once per reversal; ``_forget_auth_if_done``
    removes one entry: the other stays for the life of the process (and keeps being found
    by terminal reversals after ``history_window``)."""
    h = Harness()
    request = sale()
    h.request(request)  # in flight when the process dies
    p1 = restart(h)
    [first] = sent_reversals(p1.log)  # the in-doubt reversal, sent at recover
    p1.respond(reversal_answer(first, "25"), mti="0410")
    [upstream] = forwards(p1.request(terminal_reversal(request), conn=5, mti="0400"))
    acknowledgement = {"11": upstream.replace.get("11", "009001"), "41": request["41"]}
    p1.respond({**acknowledgement, "39": "00"}, mti="0410")
    p1.respond(reversal_answer(first, "00"), mti="0410")  # another attempt: it released it
    auths, revs = latest(h.log + p1.log)
    assert [a.state for a in auths.values()] == [AuthState.REVERSED]
    assert [r.last_response_code for r in revs.values()] == ["00", "00"]
    p2 = restart_on(h.log + p1.log, p1)
    p2.run_until(p2.now + settings().history_window + 120)
    assert p2.core.stats()["timers"] == 0
    assert not p2.core._by_terminal, f"left in _by_terminal: {p2.core._by_terminal}"


def test_two_acknowledged_reversals_of_one_restored_original_list_it_once() -> None:
    """The same, from journal records as ``load_reversed_since``/``load_closed_since`` return
    them (the second reversal a copy of the first with its own id and STAN)."""
    h = Harness()
    request = sale()
    reversed_by_the_gateway(h, request)
    auths, revs = latest(h.log)
    [original] = auths.values()
    [rev] = revs.values()
    other: ReversalRecord = dataclasses.replace(rev, reversal_id=rev.reversal_id + 1, stan="000777")
    fresh = Harness(
        now=h.now + 5,
        reversed_recently=[(original, rev), (original, other)],
        closed_recently=[original],
        next_txn_id=100,
        next_reversal_id=100,
    )
    [listed] = fresh.core._by_terminal.values()
    assert len(listed) == 1, "one authorization listed twice"


# A dialect that names the PAN among its duplicate fields: the journal keeps no card data, so a
# request rebuilt after a restart is never taken for another card's sale.

OTHER_PAN = "5413330089020011"


def test_another_cards_sale_after_a_restart_is_not_approved_with_an_old_sales_approval() -> None:
    """The dialect names DE 2 among its duplicate fields (as 8fda38b's own test): what tells
    two sales apart there is the card. Card 1's sale is approved and delivered; the gateway
    restarts. Card 2's sale arrives with the same terminal, STAN, amount and times (terminals
    sharing a DE 41, a STAN counter reset: the case DE 2 was named for). In the old process it
    was forwarded (another PAN, another key). Now ``_find_restored_duplicate`` drops DE 2 from
    the key, finds card 1's request and rebuilds card 1's approval for card 2: the terminal
    prints "approved", the goods go, and the acquirer never saw the sale (nothing captured)."""
    with_pan = dataclasses.replace(
        get_dialect("iso87-binary"), duplicate_fields=("2", "41", "11", "4", "7", "12", "13")
    )
    rules = settings(stan_mode="rewrite")
    h = Harness(rules, with_pan)
    card1 = sale()
    [forward] = forwards(h.request(card1))
    [delivery] = to_terminal(h.respond(answer({**card1, "11": forward.replace["11"]})))
    h.delivered(delivery.delivery_ref)
    # Same process: card 2's sale is another request (forwarded), as it should be.
    same_process = Harness(rules, with_pan)
    [first] = forwards(same_process.request(card1))
    answered = same_process.respond(answer({**card1, "11": first.replace["11"]}))
    same_process.delivered(to_terminal(answered)[0].delivery_ref)
    assert forwards(same_process.request({**card1, "2": OTHER_PAN}, conn=7))
    # After a restart:
    fresh = restart(h, settings=rules, dialect=with_pan)
    card2 = {**card1, "2": OTHER_PAN}
    out = fresh.request(card2, conn=7)
    approved = [r for r in replies(out) if r.fields.get("39") in settings().approval_codes]
    assert not approved, "card 2's sale answered with card 1's rebuilt approval"
    assert forwards(out), "card 2's sale never reached the acquirer"


def test_an_approval_while_the_resumed_reversal_is_on_the_wire_makes_its_25_not_final() -> None:
    """The crash kept the original's REVERSED record, not its reversal's acknowledgement: the
    restarted gateway sends the reversal again. The original's approval comes (by station)
    while that attempt is on the wire, then the attempt's answer: "25" (it overtook the
    original at the acquirer). The funds are held now: the 25 is not final, the reversal goes
    on (found in the simulation: slow_drain seed 72145)."""
    request = sale()
    _, second = restarted_without_the_acknowledgement(request)
    [attempt] = sent_reversals(second.advance(5))
    out = second.respond(answer(request))  # the approval, while the attempt is on the wire
    assert [a.state for a in auth_records(out)][-1:] == [AuthState.REVERSING]
    out = second.respond(reversal_answer(attempt, "25"), mti="0410")
    assert not notices(out, "reversal_acknowledged"), "a 25 taken as final: the hold stays"
    repeats = sent_reversals(second.run_until(second.now + 60))
    assert repeats and all(r.fields["11"] == attempt.fields["11"] for r in repeats)
