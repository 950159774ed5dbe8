"""Duplicates: never forwarded twice, share the one answer, cached answer within the window."""

from __future__ import annotations

from gateway.core.records import AuthState

from .helpers import (
    Harness,
    answer,
    auth_records,
    forwards,
    notices,
    records,
    replies,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)


def test_duplicate_in_flight_waits_for_the_one_answer_on_both_connections() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    out = h.request(request, conn=2)
    assert not forwards(out) and not records(out)
    assert notices(out, "duplicate_request")[0].data["outcome"] == "waiting"
    answer_frame = h.frame("approval")
    out = h.respond(answer(request), frame=answer_frame)
    deliveries = to_terminal(out)
    assert [(d.conn_id, d.frame) for d in deliveries] == [(1, answer_frame), (2, answer_frame)]
    # one write failing is enough to be undeliverable only if the other failed too
    h.delivered(deliveries[0].delivery_ref, False)
    done = h.delivered(deliveries[1].delivery_ref, True)
    assert [r.state for r in auth_records(done)] == [AuthState.DELIVERED]
    assert not sent_reversals(h.log)


def test_duplicate_on_the_same_connection_gets_one_answer() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    h.request(request, conn=1)
    assert len(to_terminal(h.respond(answer(request, "05")))) == 1


def test_repeat_mti_is_a_duplicate_even_with_a_new_transmission_time() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    out = h.request({**request, "7": "0908064600"}, conn=1, mti="0201")
    assert not forwards(out)
    assert notices(out, "duplicate_request")


def test_repeat_with_another_amount_is_not_a_duplicate() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    out = h.request({**request, "4": "000000009999"}, mti="0201")
    assert forwards(out)


def test_repeat_of_another_days_sale_on_the_stan_is_not_its_duplicate() -> None:
    """A repeat (0201) is the same message again: only DE 7 is new. One with the STAN and
    amount of a sale still remembered (its reversal owed) but another local date or time is
    the repeat of another sale on that STAN (the terminal started its STANs again today): it
    must not get the old sale's decline, with the old sale's DE 7."""
    yesterday = sale(de7="0907101010", de12="101010", de13="0907")
    for changed in ({"13": "0908"}, {"12": "064519"}):
        h = Harness()
        h.request(yesterday)
        h.advance(15)  # timed out: its reversal is owed
        h.advance(61)  # past its duplicate window: remembered only while its reversal is owed
        out = h.request({**yesterday, **changed, "7": "0908064519"}, mti="0201")
        assert len(forwards(out)) == 1 and not replies(out), changed


def test_a_repeat_with_its_local_time_stamped_anew_is_still_a_repeat() -> None:
    """Within its original's duplicate window, in flight or answered, a repeat (0201) with a
    new DE 12 (and DE 7) is a repeat: never forwarded a second time (an acquirer could take it
    as the same sale, and its own reversal would reverse the sale the terminal was given)."""
    h = Harness()
    in_flight = sale("000042")
    h.request(in_flight, conn=1)
    h.advance(5)
    out = h.request({**in_flight, "7": "0908064524", "12": "064524"}, conn=1, mti="0201")
    assert not forwards(out) and notices(out, "duplicate_request")
    for delivery in to_terminal(h.respond(answer(in_flight))):  # one answer, both get it
        h.delivered(delivery.delivery_ref, True)
    answered = sale("000043")
    h.request(answered, conn=1)
    [delivery] = to_terminal(h.respond(answer(answered)))
    h.delivered(delivery.delivery_ref, True)
    h.advance(20)
    out = h.request({**answered, "7": "0908064544", "12": "064544"}, conn=2, mti="0201")
    assert not forwards(out) and [d.conn_id for d in to_terminal(out)] == [2]  # the answer
    assert not sent_reversals(h.advance(15) + h.advance(30))


def test_stan_reuse_for_another_transaction_is_not_a_duplicate() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    h.respond(answer(request, "05"))
    for changed in ({"4": "000000002000"}, {"7": "0908070000"}, {"12": "070000"}, {"13": "0909"}):
        out = h.request({**request, **changed})
        assert len(forwards(out)) == 1, changed


def test_after_the_answer_the_cached_response_is_sent_again_within_the_window() -> None:
    h = Harness(settings(duplicate_window=60))
    request = sale()
    h.request(request)
    approval = h.frame("approval")
    delivery = to_terminal(h.respond(answer(request), frame=approval))[0]
    h.delivered(delivery.delivery_ref)
    h.advance(30)
    out = h.request(request, conn=7)
    assert not forwards(out)
    [again] = to_terminal(out)
    assert (again.conn_id, again.frame, again.delivery_ref) == (7, approval, None)
    assert notices(out, "duplicate_request")[0].data["outcome"] == "cached"
    h.advance(31)  # window over: forgotten, a new request
    assert forwards(h.request(request, conn=7))


def test_duplicate_while_the_approval_is_being_delivered_joins_the_delivery() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    first = to_terminal(h.respond(answer(request)))[0]
    out = h.request(request, conn=2)
    [second] = to_terminal(out)
    assert second.conn_id == 2 and second.delivery_ref not in (None, first.delivery_ref)
    h.delivered(first.delivery_ref, False)
    done = h.delivered(second.delivery_ref, True)
    assert [r.state for r in auth_records(done)] == [AuthState.DELIVERED]


def test_duplicate_after_timeout_gets_the_decline_again_and_is_never_forwarded() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    h.advance(15)
    out = h.request(request, conn=2)
    assert not forwards(out) and not records(out)
    assert replies(out)[0].fields["39"] == "91" and replies(out)[0].mti == "0210"


def test_duplicate_of_an_undeliverable_approval_is_declined_not_approved() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    delivery = to_terminal(h.respond(answer(request)))[0]
    h.delivered(delivery.delivery_ref, False)  # reversal owed now
    out = h.request(request, conn=2)
    assert not to_terminal(out)
    assert replies(out)[0].fields["39"] == "91"


def test_a_request_is_never_forwarded_twice_under_any_resend() -> None:
    h = Harness()
    request = sale()
    sends = len(forwards(h.request(request)))
    for conn, mti in ((1, "0200"), (2, "0201"), (3, "0200"), (1, "0201")):
        sends += len(forwards(h.request(request, conn=conn, mti=mti)))
    h.respond(answer(request, "05"))
    sends += len(forwards(h.request(request, conn=4, mti="0201")))
    assert sends == 1


def test_a_request_being_reversed_is_remembered_beyond_the_window() -> None:
    h = Harness(settings(duplicate_window=1.0))
    request = sale()
    h.request(request)
    h.advance(15)  # timed out, reversal sent, never answered
    h.advance(5)
    out = h.request(request, conn=2, mti="0201")
    assert not forwards(out) and replies(out)[0].fields["39"] == "91"
    # once the reversal is settled and the window is over, it is forgotten
    [sent] = sent_reversals(h.log)[-1:]
    h.respond({"11": sent.fields["11"], "41": "TERM0001", "39": "00"}, mti="0410")
    h.advance(1.5)
    assert h.core.stats()["lingering"] == 0


def test_the_late_answer_of_a_timed_out_request_is_not_taken_for_its_stans_next_user() -> None:
    """A STAN reused by a new sale while the first one's answer is late: the answers echo
    DE 7 (and 12, 13, 37) as sent, which tells them apart by more than the key."""
    h = Harness()
    first = sale("003316")
    h.request(first)
    h.advance(15)  # timed out: declined, reversed
    second = sale("003316", de4="000000005000", de7="0908064600", de12="064600")
    assert forwards(h.request(second))
    out = h.respond(answer(first, "51", de7=first["7"]))  # the first one's late decline
    assert notices(out, "late_response") and not to_terminal(out)
    out = h.respond(answer(second, de7=second["7"]))
    [approved] = auth_records(out)
    assert approved.txn_id == 2 and approved.state is AuthState.APPROVED
    assert to_terminal(out)  # the second sale's approval reaches its terminal
