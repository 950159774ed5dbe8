"""An answer that tells nothing apart, on a key two or three lingering requests share.

The acquirer repeating the answer one of them got goes to that one, whichever its place: a
decline taken for another sale's late decline would cancel that sale's reversal (not sent yet)
or make a "25" to it final, and the sale's real approval, when it comes, would leave a hold
nobody is told about. A sale's late approval is never taken for the repeat of a balance
inquiry's answer (DE 3 tells them apart). A request no longer in flight is told apart by the
fields its dialect echoes, whatever else it keeps for a restart.
"""

from __future__ import annotations

from gateway.core.commands import Command, SendToAcquirer
from gateway.core.records import AuthState, ReversalState
from gateway.wire.dialect import ReversalRules, get_dialect

from .helpers import (
    Harness,
    answer,
    auth_records,
    forwards,
    make_dialect,
    notices,
    reversal_answer,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)
from .test_engine_recovery import latest


def _alerted(out: list[Command]) -> bool:
    return any(n.data.get("may_hold") for n in notices(out, "unmatched_response"))


def assert_its_approval_after_a_25_is_not_left_held(
    h: Harness,
    repeated: dict[str, str],
    sent: SendToAcquirer,
    timed_out: dict[str, str],
    txn_id: int,
    **approval: str,
) -> None:
    """The acquirer repeats the "51" it gave ``repeated``; the reversal of ``timed_out``
    (``sent``) is answered "25" (it overtook its original there); then its approval comes.
    Taken for its late decline, the repeat would make that "25" final: a hold, no alert."""
    h.respond(answer(repeated, "51"))  # the acquirer repeats its answer
    auths, _ = latest(h.log)
    assert auths[txn_id].response_code is None, "another request's repeated decline taken"
    h.respond(reversal_answer(sent, "25"), mti="0410")
    out = h.respond(answer(timed_out, **approval))  # its approval: a hold upstream
    assert sent_reversals(out) or _alerted(out), (
        "its approval after a '25' left a hold: no reversal again, no alert"
    )


# The acquirer repeating the answer it gave an older request (same DE 41 + DE 11, echoing none
# of DE 7/12/13/37) is not taken for a newer request's late answer.


def _declined_then_same_stan_timed_out(h: Harness) -> tuple[dict[str, str], dict[str, str]]:
    """txn 1 declined ("51") and answered; txn 2, a new sale by the same terminal with the same
    STAN (new DE 7/12, passthrough STANs), forwarded. Returns (txn 1, txn 2)."""
    first = sale("000001")
    h.request(first)
    [declined] = to_terminal(h.respond(answer(first, "51")))
    assert declined.conn_id == 1
    second = sale("000001", de7="0908064530", de12="064530")
    assert forwards(h.request(second, conn=2))
    return first, second


def test_a_repeated_decline_of_the_answered_request_does_not_cancel_the_others_reversal() -> None:
    """The link breaks with txn 2 on the wire: the terminal gets its decline, a reversal is
    owed (parked: no link). The link is back; the reversal waits for its drain slot. The
    acquirer repeats its "51" to txn 1 (echoing DE 11 and 41 only, as before). 8fda38b sends it
    to txn 2 ("not answered yet"): a late decline with the reversal not sent, so the reversal is
    CANCELLED and txn 2 closed DECLINED. txn 2 may well be approved upstream: when its real
    approval comes, txn 2 is DECLINED and it is dropped as a late response. A hold no terminal
    was told about, no reversal, no alert."""
    h = Harness()
    first, second = _declined_then_same_stan_timed_out(h)
    h.link_down(1)  # txn 2: link_lost, declined to its terminal, reversal parked
    h.link_up(1)  # the reversal waits for its drain slot (not sent yet)
    out = h.respond(answer(first, "51"))  # the acquirer repeats its answer to txn 1
    assert not notices(out, "reversal_cancelled"), (
        "the acquirer's repeat of txn 1's decline cancelled txn 2's reversal"
    )
    # What it leads to: txn 2's own approval, then, is neither reversed nor alerted.
    out = h.respond(answer(second)) + h.advance(1)
    auths, _ = latest(h.log)
    assert auths[2].state is not AuthState.DECLINED
    assert sent_reversals(out) or _alerted(out), (
        "txn 2's approval left a hold: no reversal, no alert"
    )


def test_a_repeated_decline_does_not_make_a_25_to_the_others_reversal_final() -> None:
    """Same two requests, link up. txn 2 times out; its reversal is sent. The acquirer repeats
    txn 1's "51": 8fda38b records it as txn 2's decline (``_note_late_decline``), so the "25"
    that txn 2's reversal gets (it overtook txn 2 at the acquirer) is final: the reversal is not
    kept reopenable. txn 2's approval then arrives: ``_reverse_overtaken`` finds nothing to
    reopen and returns. Only a ``late_response`` notice: the hold stays, no alert."""
    h = Harness()
    first, second = _declined_then_same_stan_timed_out(h)
    [sent] = sent_reversals(h.advance(15))  # txn 2 timed out
    assert_its_approval_after_a_25_is_not_left_held(h, first, sent, second, 2)


def test_a_repeated_approval_of_the_answered_request_is_not_taken_for_the_others() -> None:
    """The approval side of the same guess (lower stakes). txn 1 approved ("A1B2C3") and
    delivered; txn 2 (same STAN) times out, its reversal is sent. The acquirer repeats txn 1's
    approval, DE 38 and all: 8fda38b gives it to txn 2, which now "has" txn 1's approval code.
    txn 2 never reached the acquirer, so its reversal is answered "25", and with an approval
    known a "25" is never final: 20 attempts, FAILED, an operator alert, for a sale that holds
    nothing. The gateway knows txn 1's approval code: an answer carrying it is txn 1's repeat
    (a late approval of txn 2 carries its own)."""
    h = Harness()
    first = sale("000001")
    h.approve(first)
    second = sale("000001", de7="0908064530", de12="064530")
    h.request(second, conn=2)
    [sent] = sent_reversals(h.advance(15))
    out = h.respond(answer(first))  # txn 1's approval again: DE 11, 41, 38 "A1B2C3", 39
    [repeat] = notices(out, "unmatched_response") or [None]
    assert repeat is not None and repeat.data["reason"] == "already_answered", (
        "the acquirer's repeat of txn 1's approval taken for txn 2's late approval"
    )
    out = h.respond(reversal_answer(sent, "25"), mti="0410")
    assert notices(out, "reversal_acknowledged"), "txn 2's reversal can no longer settle"


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
    assert_its_approval_after_a_25_is_not_left_held(h, second, sent, first, 1)


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
    assert_its_approval_after_a_25_is_not_left_held(h, second, sent, third, 3, de38="C3D4E5")


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


# Reversals carry the original's STAN, no DE 90: two sales on one STAN have one reversal key.
CUP_STYLE = make_dialect(
    ReversalRules(stan="original", original_data="none"),
    match_fields=("41", "42", "11"),
    duplicate_fields=("41", "42", "11", "4", "7"),
)


def two_reversals_on_one_key() -> tuple[Harness, SendToAcquirer, SendToAcquirer]:
    """A CUP-style terminal (its reversals carry the original's STAN) that started its STANs
    again on a new day: yesterday's sale and today's, both on STAN 000001, both timed out,
    their reversals on the wire at once on two links."""
    h = Harness(settings(link_strategy="round_robin", reversal_timeout=60), CUP_STYLE, links=(1, 2))
    h.request(sale("000001", de7="0907101010", de13="0907", de37="325006000001"))
    h.advance(15)
    h.request(sale("000001"))
    h.request(sale("000002", terminal="TERM0002", de3="310000"))  # the next turn of the links
    h.advance(15)
    attempts = sent_reversals(h.log)
    [yesterdays] = [a for a in attempts if a.fields["13"] == "0907"][-1:]
    [todays] = [a for a in attempts if a.fields["13"] == "0908"][-1:]
    assert yesterdays.fields["11"] == todays.fields["11"] == "000001"
    assert yesterdays.link_id != todays.link_id
    return h, yesterdays, todays


def reversed_txn(out: list[Command]) -> list[int]:
    return [r.txn_id for r in auth_records(out) if r.state is AuthState.REVERSED]


def test_of_two_reversals_on_one_key_the_answer_goes_to_the_one_sent_on_its_link() -> None:
    h, yesterdays, todays = two_reversals_on_one_key()
    [yesterday, today] = sorted({r.txn_id for r in auth_records(h.log)})
    ack = {"11": "000001", "41": "TERM0001", "42": "MERCHANT0000001", "39": "00"}
    assert reversed_txn(h.respond(ack, mti="0410", link=todays.link_id)) == [today]
    assert reversed_txn(h.respond(ack, mti="0410", link=yesterdays.link_id)) == [yesterday]


def test_of_two_reversals_on_one_key_echoed_fields_outweigh_the_link() -> None:
    """An acquirer that echoes the original's DE 13 or DE 37 names the reversal it answers."""
    h, yesterdays, todays = two_reversals_on_one_key()
    [yesterday, today] = sorted({r.txn_id for r in auth_records(h.log)})
    ack = {"11": "000001", "41": "TERM0001", "39": "00", "13": "0908"}
    assert reversed_txn(h.respond(ack, mti="0410", link=yesterdays.link_id)) == [today]
    ack = {"11": "000001", "41": "TERM0001", "39": "00", "13": "0907", "37": "325006000001"}
    assert reversed_txn(h.respond(ack, mti="0410", link=todays.link_id)) == [yesterday]


def test_a_failed_reversal_never_takes_another_days_acknowledgement_for_its_own() -> None:
    """Yesterday's reversal failed (it waits for an operator, and for a late answer to its
    attempts). Today's sale on the STAN is reversed and acknowledged twice (a repeat). The
    second acknowledgement echoes today's DE 13: taken for yesterday's, it would close it with
    yesterday's funds still held."""
    h = Harness(settings(max_attempts=1), CUP_STYLE)
    h.request(sale("000001", de7="0907101010", de13="0907"))
    h.advance(15)
    h.advance(10)  # its one attempt unanswered: failed
    [yesterday] = [r.txn_id for r in auth_records(h.log)][:1]
    h.request(sale("000001"))
    h.advance(15)
    [today] = [r.txn_id for r in auth_records(h.log) if r.txn_id != yesterday][:1]
    ack = {"11": "000001", "41": "TERM0001", "39": "00", "13": "0908"}
    assert reversed_txn(h.respond(ack, mti="0410")) == [today]
    out = h.respond(ack, mti="0410")  # the acquirer repeats it
    assert not reversed_txn(out) and notices(out, "unmatched_response")
    assert [r.state for r in h.core._failed.values()] == [ReversalState.FAILED]


def test_a_late_approval_of_a_forgotten_sale_is_not_taken_for_another_days_on_its_stan() -> None:
    """Yesterday's sale on STAN 000001 timed out; its reversal is still owed, so its request is
    remembered. Today's sale on the STAN timed out too, was reversed, and is forgotten. Today's
    late approval, echoing today's DE 12/13, is the only answer on the key: taken for yesterday's,
    it would make yesterday's "25" look overtaken (repeated forever) and hide today's approval.
    Unmatched, it is alerted."""
    h = Harness()
    yesterday = sale("000001", de7="0907101010", de12="101010", de13="0907")
    h.request(yesterday)
    [first] = sent_reversals(h.advance(15))
    today = sale("000001")
    h.request(today)
    [todays] = [s for s in sent_reversals(h.advance(15)) if s.fields.get("13") == "0908"]
    h.respond(reversal_answer(todays), mti="0410")
    h.advance(61)  # today's request is forgotten; yesterday's lingers while its reversal is owed
    out = h.respond(answer(today, de7=today["7"], de12=today["12"], de13=today["13"]))
    [unmatched] = notices(out, "unmatched_response")
    assert unmatched.data["may_hold"] is True
    assert not auth_records(out) and not notices(out, "late_response")
    assert first.fields["13"] == "0907"
    # an acquirer that stamps its own DE 7 (and echoes nothing else) still has yesterday's
    # late approval taken for yesterday's
    out = h.respond(answer(yesterday, de7="0908070000"))
    assert notices(out, "late_response") and not notices(out, "unmatched_response")


def test_another_terminals_request_on_the_stan_leaves_a_lone_request_alone() -> None:
    """The index holds every terminal's requests on a STAN: another terminal's sale on it is
    not on this one's key. An acquirer that stamps its own DE 7: the late approval of this
    terminal's sale, whose reversal was answered 25, still reopens that reversal."""
    h = Harness()
    mine = sale("000001")
    h.request(mine, conn=1)
    [rev] = sent_reversals(h.advance(15))
    h.respond(reversal_answer(rev, "25"), mti="0410")  # overtaken: waits for the approval
    h.request(sale("000001", terminal="TERM0002", de7="0908064600", de12="064600"), conn=2)
    out = h.respond(answer(mine, de7="0908064620"))  # the acquirer's own DE 7
    assert not notices(out, "unmatched_response")
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSING]


def test_a_failed_cup_reversal_takes_its_late_acknowledgement_with_the_hosts_own_rrn() -> None:
    """cup-pos does not say DE 37 comes back as sent: a host that answers with its own RRN
    still acknowledges the reversal that waits for it."""
    h = Harness(settings(max_attempts=1), get_dialect("cup-pos"))
    void = sale("000007", de3="200000", de7=None, de12=None, de13=None, de37="325106000001")
    h.request(void)
    [attempt] = sent_reversals(h.advance(15))
    assert attempt.fields.get("37") == "325106000001"
    h.advance(10)
    assert [r.state for r in h.core._failed.values()] == [ReversalState.FAILED]
    ack = {"11": "000007", "41": "TERM0001", "42": "MERCHANT0000001", "39": "00"}
    out = h.respond({**ack, "37": "409912345678"}, mti="0410")
    assert not notices(out, "unmatched_response") and not h.core._failed
