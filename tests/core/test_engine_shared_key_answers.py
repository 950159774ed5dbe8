"""An answer that tells nothing apart, on a key two or three lingering requests share.

The acquirer repeating the answer one of them got goes to that one, whichever its place: a
decline taken for another sale's late decline would cancel that sale's reversal (not sent yet)
or make a "25" to it final, and the sale's real approval, when it comes, would leave a hold
nobody is told about. A sale's late approval is never taken for the repeat of a balance
inquiry's answer (DE 3 tells them apart). A request no longer in flight is told apart by the
fields its dialect echoes, whatever else it keeps for a restart.
"""

from __future__ import annotations

from gateway.core.commands import Command
from gateway.core.records import AuthState

from .helpers import (
    Harness,
    answer,
    forwards,
    make_dialect,
    notices,
    reversal_answer,
    sale,
    sent_reversals,
    to_terminal,
)
from .test_engine_recovery import latest


def _alerted(out: list[Command]) -> bool:
    return any(n.data.get("may_hold") for n in notices(out, "unmatched_response"))


# The request without an answer is the older one.


def test_repeated_decline_of_a_newer_answered_sale_does_not_cancel_the_older_ones_reversal() -> (
    None
):
    """txn 1 (STAN 000001) is on the wire when the link breaks: declined to its terminal, its
    reversal owed (parked). The link is back; the reversal waits for its drain slot. The same
    terminal reuses STAN 000001 for txn 2 (new DE 7/12), declined "51". The acquirer repeats
    txn 2's "51" (DE 11/41/39 only). It may be txn 2's repeat (same DE 39), so per the new
    rule/docs it must not be taken for txn 1's late decline, yet txn 1 is the oldest
    candidate and the fallback: txn 1 closed DECLINED, its reversal CANCELLED. The mirror of
    ``test_a_repeated_decline_of_the_answered_request_does_not_cancel_the_others_reversal``
    with the two sales in the other order."""
    h = Harness()
    first = sale("000001")
    assert forwards(h.request(first))
    h.link_down(1)  # txn 1: link lost, declined to its terminal, reversal parked
    h.link_up(1)
    second = sale("000001", de7="0908064530", de12="064530")
    assert forwards(h.request(second, conn=2))
    [declined] = to_terminal(h.respond(answer(second, "51")))
    assert declined.conn_id == 2
    assert not sent_reversals(h.log), "txn 1's reversal already sent"
    out = h.respond(answer(second, "51"))  # the acquirer repeats its answer to txn 2
    assert not notices(out, "reversal_cancelled"), (
        "the acquirer's repeat of txn 2's decline cancelled txn 1's reversal"
    )
    out = h.respond(answer(first)) + h.advance(1)  # txn 1's own approval
    auths, _ = latest(h.log)
    assert auths[1].state is not AuthState.DECLINED
    assert sent_reversals(out) or _alerted(out), (
        "txn 1's approval left a hold: no reversal, no alert"
    )


def test_repeated_decline_of_a_newer_answered_sale_does_not_make_a_25_final() -> None:
    """txn 1 times out, its reversal is sent. txn 2 (same STAN, new DE 7/12) is declined "51".
    The acquirer repeats txn 2's "51": recorded as txn 1's late decline, so the "25" txn 1's
    reversal gets (it overtook txn 1) is final; txn 1's approval then finds nothing to reopen:
    a hold, only a ``late_response`` notice."""
    h = Harness()
    first = sale("000001")
    h.request(first)
    [sent] = sent_reversals(h.advance(15))  # txn 1 timed out
    second = sale("000001", de7="0908064530", de12="064530")
    assert forwards(h.request(second, conn=2))
    assert to_terminal(h.respond(answer(second, "51")))
    h.respond(answer(second, "51"))  # the acquirer repeats its answer to txn 2
    auths, _ = latest(h.log)
    assert auths[1].response_code is None, "txn 2's repeated decline recorded as txn 1's"
    h.respond(reversal_answer(sent, "25"), mti="0410")  # the reversal overtook txn 1
    out = h.respond(answer(first))  # txn 1's approval: a hold upstream
    assert sent_reversals(out) or _alerted(out), (
        "txn 1's approval after a '25' left a hold: no reversal again, no alert"
    )


# Three candidates: the answer repeats the second one's.


def test_repeat_of_the_second_answered_sales_decline_is_not_taken_for_the_third() -> None:
    """txn 1 declined "05", txn 2 declined "51", txn 3 timed out (reversal sent); all three
    STAN 000001 within the window. The acquirer repeats txn 2's "51". ``_may_repeat`` compares
    it with txn 1's "05" only (the fallback), finds it cannot be a repeat, and gives it to
    txn 3 as its late decline: the "25" to txn 3's reversal is then final and txn 3's approval
    leaves a hold unalerted."""
    h = Harness()
    first = sale("000001")
    h.request(first)
    assert to_terminal(h.respond(answer(first, "05")))
    second = sale("000001", de7="0908064530", de12="064530")
    h.request(second, conn=2)
    assert to_terminal(h.respond(answer(second, "51")))
    third = sale("000001", de7="0908064540", de12="064540")
    assert forwards(h.request(third, conn=3))
    [sent] = sent_reversals(h.advance(15))  # txn 3 timed out
    h.respond(answer(second, "51"))  # the acquirer repeats its answer to txn 2
    auths, _ = latest(h.log)
    assert auths[3].response_code is None, "txn 2's repeated decline recorded as txn 3's"
    h.respond(reversal_answer(sent, "25"), mti="0410")
    out = h.respond(answer(third, de38="C3D4E5"))  # txn 3's approval
    assert sent_reversals(out) or _alerted(out), (
        "txn 3's approval after a '25' left a hold: no reversal again, no alert"
    )


# An answered request the journal does not know (a balance inquiry: no authorization).


def test_late_approval_of_a_sale_is_not_taken_for_a_balance_inquirys_repeat() -> None:
    """txn 1 is a balance inquiry (DE 3 "31": holds nothing, no authorization journaled),
    answered "00". The terminal's next request, a sale, reuses STAN 000001 and times out; its
    reversal is sent. The sale's late approval arrives, echoing DE 3 "000000" (a purchase)
    and its own DE 38. 8fda38b gave it to the sale; 9233e16 asks ``_may_repeat`` about the
    inquiry, whose ``auth`` is None, answers "may be a repeat", and drops it as
    ``already_answered`` (``may_hold`` False): no alert, and the "25" the reversal then gets
    (it overtook the sale) is final. A repeat of the inquiry's answer cannot carry a
    purchase's DE 3: ``_holds_if_approved`` already tells them apart."""
    h = Harness()
    inquiry = sale("000001", de3="310000", de4=None)
    assert forwards(h.request(inquiry))
    assert to_terminal(h.respond(answer(inquiry, de3="310000", de38=None)))
    second = sale("000001", de7="0908064530", de12="064530")
    assert forwards(h.request(second, conn=2))
    [sent] = sent_reversals(h.advance(15))  # the sale timed out
    out = h.respond(answer(second, de3="000000", de38="B2C3D4"))
    assert notices(out, "late_response") or _alerted(out), (
        "the sale's late approval dropped as a repeat of the balance inquiry's answer"
    )
    out = h.respond(reversal_answer(sent, "25"), mti="0410")
    assert not notices(out, "reversal_acknowledged"), "a '25' after an approval was final"


# A settled request is told apart by the fields its dialect echoes, as before it kept DE 7 for
# a restart: an acquirer stamping its own DE 7 must not send its late answer to the request in
# flight.

# A dialect that matches and de-duplicates on DE 7 but does not echo it in the gateway's own
# answers (as cup-pos, whose requests carry no DE 7; here the requests do).
NO_DE7_ECHO = make_dialect(
    duplicate_fields=("41", "11", "4", "7"),
    response_echo_fields=("3", "4", "11", "41", "42", "49"),
)


def test_answer_with_acquirers_own_de7_still_goes_to_the_request_given_up_on() -> None:
    """On 32cc57c the timed-out sale A takes the answer (a late approval keeps its reversal
    going; the in-flight sale B times out and is reversed: a reversal, never a terminal given
    another sale's answer). On HEAD sale B's terminal is sent the answer."""
    h = Harness(dialect=NO_DE7_ECHO)
    first = sale()
    assert forwards(h.request(first, conn=1))
    assert sent_reversals(h.advance(15))  # A timed out, its reversal on the wire
    second = sale(de7="0908064600", de4="000000002000")  # same terminal, STAN reused
    assert forwards(h.request(second, conn=2))
    out = h.respond(answer(first, de7="0908064620"))  # the acquirer's own DE 7
    assert not [f for f in to_terminal(out) if f.conn_id == 2], (
        "the in-flight sale's terminal was given an answer the acquirer may have meant for the"
        " sale the gateway gave up on"
    )
