"""Forwarding, journaling, matching and answering requests (no reversals yet)."""

from __future__ import annotations

from gateway.core.commands import (
    ForwardToAcquirer,
    ForwardToTerminal,
    Notify,
    Persist,
    ReserveStans,
)
from gateway.core.events import Draining
from gateway.core.records import AuthorizationRecord, AuthState
from gateway.core.stan import RESERVATION_BLOCK

from .helpers import (
    PAN,
    TRACK2,
    Harness,
    answer,
    auth_records,
    forwards,
    make_dialect,
    notices,
    of_type,
    records,
    replies,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)


def test_reversible_request_is_journaled_before_it_is_forwarded() -> None:
    h = Harness()
    out = h.request(sale())
    assert [type(c) for c in out] == [Persist, ForwardToAcquirer]
    record = out[0].record  # type: ignore[union-attr]
    assert isinstance(record, AuthorizationRecord)
    assert record.state is AuthState.IN_FLIGHT
    assert (record.mti, record.terminal_id, record.stan, record.amount) == (
        "0200", "TERM0001", "003316", "000000001000",
    )  # fmt: skip
    assert record.reversal_fields["2"] == PAN and record.reversal_fields["11"] == "003316"
    forward = out[1]
    assert isinstance(forward, ForwardToAcquirer)
    assert forward.link_id == 1 and forward.replace == {}
    assert h.core.stats()["in_flight"] == 1


def test_approval_is_delivered_and_the_record_closes_without_card_data() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    out = h.respond(answer(request))
    approved = auth_records(out)
    assert [r.state for r in approved] == [AuthState.APPROVED]
    assert approved[0].approval_code == "A1B2C3" and approved[0].response_code == "00"
    assert approved[0].reversal_fields["38"] == "A1B2C3"
    delivery = to_terminal(out)
    assert len(delivery) == 1 and delivery[0].conn_id == 1 and delivery[0].delivery_ref
    done = h.delivered(delivery[0].delivery_ref)
    assert [r.state for r in auth_records(done)] == [AuthState.DELIVERED]
    # What finds a resend after a restart (duplicate, match and echo fields), no card data.
    kept = auth_records(done)[0].reversal_fields
    assert sorted(kept, key=int) == ["3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"]
    assert PAN not in kept.values()
    completed = notices(out, "transaction_completed")
    assert completed[0].data["outcome"] == "approved"
    assert h.core.stats()["in_flight"] == 0 and h.core.stats()["authorizations_open"] == 0


def test_decline_is_forwarded_and_closes_without_delivery_tracking() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    out = h.respond(answer(request, "05"))
    assert [r.state for r in auth_records(out)] == [AuthState.DECLINED]
    assert "2" not in auth_records(out)[0].reversal_fields
    delivery = to_terminal(out)
    assert len(delivery) == 1 and delivery[0].delivery_ref is None
    assert notices(out, "transaction_completed")[0].data["outcome"] == "declined"


def test_no_link_up_declines_at_once_and_journals_nothing() -> None:
    h = Harness(links=())
    out = h.request(sale())
    assert not records(out) and not forwards(out)
    [reply] = replies(out)
    assert reply.mti == "0210" and reply.fields["39"] == "91"
    assert reply.fields["11"] == "003316" and reply.fields["41"] == "TERM0001"
    assert "2" not in reply.fields and "52" not in reply.fields
    assert notices(out, "transaction_completed")[0].data["outcome"] == "no_link"
    assert not h.advance(3600)  # nothing owed, nothing timed


def test_dialect_decline_code_is_used() -> None:
    h = Harness(dialect=make_dialect(decline_code="96"), links=())
    assert replies(h.request(sale()))[0].fields["39"] == "96"


def test_primary_link_is_the_lowest_up() -> None:
    h = Harness(links=(2, 1, 3))
    assert forwards(h.request(sale("000001")))[0].link_id == 1
    h.link_down(1)
    assert forwards(h.request(sale("000002")))[0].link_id == 2
    h.link_up(1)
    assert forwards(h.request(sale("000003")))[0].link_id == 1


def test_round_robin_spreads_requests_and_reversals_over_the_links_up() -> None:
    h = Harness(settings(link_strategy="round_robin"), links=(2, 1, 3))
    links = [forwards(h.request(sale(f"{n:06d}")))[0].link_id for n in range(1, 7)]
    assert sorted(links[:3]) == [1, 2, 3] and links[3:] == links[:3]
    out = h.link_down(2)  # what was sent on it is given up and reversed on the others
    lost = sent_reversals(out)
    assert len(lost) == 2 and {c.link_id for c in lost} <= {1, 3}
    links = [forwards(h.request(sale(f"{n:06d}")))[0].link_id for n in range(7, 11)]
    assert set(links) == {1, 3}


def test_overload_declines_without_forwarding_or_reversing() -> None:
    h = Harness(settings(max_in_flight=2))
    h.request(sale("000001"))
    h.request(sale("000002"))
    out = h.request(sale("000003"))
    assert not forwards(out) and not records(out)
    assert replies(out)[0].fields["39"] == "91"
    assert notices(out, "transaction_completed")[0].data["outcome"] == "overloaded"


def test_response_matches_on_mti_and_match_fields() -> None:
    h = Harness()
    one, two = sale("000001", "T1"), sale("000001", "T2")
    h.request(one, conn=1)
    h.request(two, conn=2)
    # wrong MTI class: a 0110 does not answer a 0200
    assert notices(h.respond(answer(two), mti="0110"), "unmatched_response")
    out = h.respond(answer(two))
    assert [d.conn_id for d in to_terminal(out)] == [2]
    out = h.respond(answer(one))
    assert [d.conn_id for d in to_terminal(out)] == [1]


def test_untidy_response_without_de41_matches_on_stan() -> None:
    h = Harness()
    request = sale("000777")
    h.request(request)
    out = h.respond(answer(request, de41=None))
    assert [d.conn_id for d in to_terminal(out)] == [1]


def test_request_without_de41_or_de7_still_works_end_to_end() -> None:
    h = Harness()
    request = sale("000778", de41=None, de7=None)
    out = h.request(request)
    assert auth_records(out)[0].terminal_id is None
    out = h.respond(answer(request))
    assert to_terminal(out)


def test_repeat_request_is_answered_by_the_base_response() -> None:
    h = Harness()
    request = sale("000779")
    h.request(request, mti="0201")
    assert to_terminal(h.respond(answer(request), mti="0210"))


def test_unmatched_response_is_notified_not_forwarded() -> None:
    h = Harness()
    out = h.respond(answer(sale("123456")))
    assert not to_terminal(out)
    [notice] = notices(out, "unmatched_response")
    assert notice.data["stan"] == "123456" and notice.data["reason"] == "no_request"


def test_pass_through_request_is_not_journaled() -> None:
    h = Harness()
    inquiry = sale("000010", de3="310000")  # balance inquiry: holds nothing
    out = h.request(inquiry)
    assert not records(out) and len(forwards(out)) == 1
    out = h.respond(answer(inquiry))
    assert not records(out) and [d.delivery_ref for d in to_terminal(out)] == [None]


def test_network_management_from_terminal_is_passed_through() -> None:
    h = Harness()
    echo = {"11": "000011", "41": "TERM0001", "70": "301"}
    out = h.request(echo, mti="0800")
    assert not records(out) and forwards(out)
    out = h.respond({"11": "000011", "41": "TERM0001", "39": "00"}, mti="0810")
    assert to_terminal(out)
    assert notices(out, "transaction_completed")[0].data["outcome"] == "answered"


def test_non_reversible_authorization_gets_a_decline_on_timeout() -> None:
    h = Harness()
    h.request(sale("000012", de3="310000"))
    out = h.advance(15.0)
    assert replies(out)[0].fields["39"] == "91" and not records(out)


def test_other_pass_through_requests_are_forgotten_on_timeout() -> None:
    h = Harness()
    advice = sale("000013")
    h.request(advice, mti="0220")
    out = h.advance(15.0)
    assert not replies(out) and not records(out)
    # forgotten: the terminal's retry goes through again
    assert forwards(h.request(advice, mti="0221"))


def test_stan_rewrite_allocates_and_restores() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=500)
    one, two = sale("000001", "T1"), sale("000001", "T2")
    first = h.request(one, conn=1)
    second = h.request(two, conn=2)
    assert forwards(first)[0].replace == {"11": "000500"}
    assert forwards(second)[0].replace == {"11": "000501"}
    record = auth_records(first)[0]
    assert (record.stan, record.acquirer_stan) == ("000001", "000500")
    assert record.reversal_fields["11"] == "000500"
    # the acquirer matches on STAN alone: answers carry the gateway's STANs
    out = h.respond({"11": "000501", "39": "05"})
    [reply] = to_terminal(out)
    assert reply.conn_id == 2 and reply.replace == {"11": "000001"}
    out = h.respond({"11": "000500", "39": "00", "38": "X"})
    assert to_terminal(out)[0].conn_id == 1 and to_terminal(out)[0].replace == {"11": "000001"}


def test_a_new_block_of_stans_is_journaled_before_its_first_send() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=500)
    out = h.request(sale("000001"))
    kinds = [type(command) for command in out]
    assert kinds.index(ReserveStans) < kinds.index(ForwardToAcquirer)
    assert of_type(out, ReserveStans) == [ReserveStans(f"{500 + RESERVATION_BLOCK - 1:06d}")]
    assert not of_type(h.request(sale("000002")), ReserveStans)  # inside the block


def test_stan_rewrite_wraps_after_999999() -> None:
    h = Harness(settings(stan_mode="rewrite", duplicate_window=60), stan_seed=999_999)
    a = h.request(sale("000001"))
    assert forwards(a)[0].replace == {"11": "999999"}
    b = h.request(sale("000002"))
    assert forwards(b)[0].replace == {"11": "000001"}


def test_track2_only_request_journals_the_pan_and_not_the_track() -> None:
    h = Harness()
    request = sale(de2=None)
    request["35"] = TRACK2
    out = h.request(request)
    record = auth_records(out)[0]
    assert record.reversal_fields["2"] == PAN
    assert "35" not in record.reversal_fields
    assert all(TRACK2 not in v for v in record.reversal_fields.values())


def test_notifications_carry_only_masked_pans() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    out = h.respond(answer(request))
    [completed] = notices(out, "transaction_completed")
    assert completed.data["masked_pan"] == "476173******0119"
    for notice in (c for c in h.log if isinstance(c, Notify)):
        assert PAN not in repr(notice.data)


def test_invalid_mtis_are_rejected_not_crashing() -> None:
    h = Harness()
    assert notices(h.request(sale(), mti="02X0"), "request_rejected")
    assert notices(h.request(sale(), mti="0210"), "request_rejected")
    assert notices(h.respond(answer(sale()), mti="0200"), "unmatched_response")


def test_delivery_refs_are_distinct_per_write() -> None:
    h = Harness()
    refs = []
    for n in range(3):
        request = sale(f"00010{n}")
        h.request(request)
        refs.append(to_terminal(h.respond(answer(request)))[0].delivery_ref)
    assert len(set(refs)) == 3


def test_forward_to_terminal_of_a_decline_has_the_acquirer_frame() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    frame = h.frame("decline")
    out = h.respond(answer(request, "51"), frame=frame)
    assert to_terminal(out) == [ForwardToTerminal(1, frame, {})]


def test_draining_declines_new_requests_then_gives_up_on_those_in_flight() -> None:
    h = Harness()
    waiting = h.request(sale("000001"), conn=1)
    assert forwards(waiting)
    out = h.core.handle(Draining(), h.now)
    assert out == []  # nothing in flight is touched yet
    out = h.request(sale("000002"), conn=2)
    assert not forwards(out) and not records(out)
    assert replies(out)[0].fields["39"] == "91"
    assert notices(out, "transaction_completed")[0].data["outcome"] == "shutting_down"
    out = h.core.handle(Draining(final=True), h.now)  # the grace is over
    assert replies(out)[0].conn_id == 1 and replies(out)[0].fields["39"] == "91"
    assert notices(out, "transaction_completed")[0].data["outcome"] == "timeout"
    assert sent_reversals(out)  # owed and sent while a link is still up
