"""When the gateway reverses, how the reversal is built, repeated, failed and requeued."""

from __future__ import annotations

import pytest

from gateway.core.commands import Persist, SendToAcquirer
from gateway.core.records import AuthState, ReversalReason, ReversalState
from gateway.wire.dialect import ReversalRules

from .helpers import (
    PAN,
    T0,
    Harness,
    answer,
    auth_records,
    forwards,
    make_dialect,
    notices,
    replies,
    reversal_answer,
    reversal_records,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)


def timed_out(h: Harness, request: dict[str, str] | None = None) -> SendToAcquirer:
    h.request(request or sale())
    [sent] = sent_reversals(h.advance(15.0))
    return sent


def test_timeout_declines_the_terminal_and_reverses_at_once() -> None:
    h = Harness()
    h.request(sale())
    out = h.advance(14.9)
    assert not out
    out = h.advance(0.1)
    [reply] = replies(out)
    assert (reply.conn_id, reply.mti, reply.fields["39"]) == (1, "0210", "91")
    revs = reversal_records(out)
    assert [r.state for r in revs] == [ReversalState.OWED, ReversalState.SENT]
    assert revs[0].reason is ReversalReason.TIMEOUT
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSING]
    [sent] = sent_reversals(out)
    assert sent.mti == "0400" and sent.link_id == 1
    # journal before you send: the OWED record comes before the send
    persists = [i for i, c in enumerate(out) if isinstance(c, Persist)]
    assert max(persists) < out.index(sent)
    assert notices(out, "transaction_completed")[0].data["outcome"] == "timeout"
    assert notices(out, "reversal_owed")[0].data["reason"] == "timeout"


def test_reversal_is_built_from_the_original() -> None:
    h = Harness()
    sent = timed_out(h)
    f = sent.fields
    assert f["2"] == PAN and f["3"] == "000000" and f["4"] == "000000001000"
    assert f["41"] == "TERM0001" and f["42"] == "MERCHANT0000001" and f["49"] == "978"
    assert f["39"] == "68"  # dialect reason code for timeout
    assert f["11"] != "003316"  # a new STAN by default
    # DE 90 as in the public vector (original 0200, STAN 003316, DE 7 0908064519, DE 32 200)
    assert f["90"] == "020000331609080645190000000020000000000000"
    # DE 7 is the send time: T0 + 15 s, in UTC
    assert f["7"] == "0908064534"
    assert not {"35", "52", "55"} & set(f)
    assert "38" not in f  # no approval known


def test_a_dialect_without_de7_gets_reversals_without_it() -> None:
    """CUP POS messages carry no DE 7: each attempt of its reversals goes without one."""
    rules = ReversalRules(original_data="none", transmission_time=False)
    h = Harness(dialect=make_dialect(rules))
    first = timed_out(h)
    assert "7" not in first.fields
    h.advance(10.0)  # unanswered: repeated
    [repeat] = sent_reversals(h.advance(5.0))
    assert repeat.mti == "0401" and "7" not in repeat.fields


def test_acknowledged_reversal_closes_both_records_and_clears_card_data() -> None:
    h = Harness()
    sent = timed_out(h)
    out = h.respond(reversal_answer(sent), mti="0410")
    [auth] = auth_records(out)
    [rev] = reversal_records(out)
    # Of the original's fields DE 7 stays (DE 90 names it): after a restart, a terminal's
    # reversal of it is still answered by the gateway. So do the fields that find a resend
    # of it (DE 11, 12, 13...). No card data.
    assert auth.state is AuthState.REVERSED and auth.reversal_fields["7"] == "0908064519"
    assert sorted(auth.reversal_fields, key=int) == [
        "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"
    ]  # fmt: skip
    assert rev.state is ReversalState.ACKNOWLEDGED and rev.fields == {}
    # the authorization closes first: an open reversal always finds its authorization
    persisted = [c.record for c in out if isinstance(c, Persist)]
    assert [type(r).__name__ for r in persisted] == ["AuthorizationRecord", "ReversalRecord"]
    assert notices(out, "reversal_acknowledged")
    assert h.core.stats()["reversals_owed"] == 0
    assert h.core.next_deadline() is not None  # the original's linger, nothing else owed


@pytest.mark.parametrize("code", ["25", "94"])
def test_not_found_and_already_reversed_count_as_resolved(code: str) -> None:
    h = Harness()
    sent = timed_out(h)
    out = h.respond(reversal_answer(sent, code), mti="0410")
    assert reversal_records(out)[0].state is ReversalState.ACKNOWLEDGED


def test_repeats_go_as_0401_with_growing_delays() -> None:
    h = Harness(settings(retry_delays=(5.0, 10.0, 30.0), max_attempts=10))
    first = timed_out(h)
    start = h.now
    times = []
    while len(times) < 5:
        deadline = h.core.next_deadline()
        assert deadline is not None
        h.now = deadline
        for sent in sent_reversals(h.core.on_timer(deadline)):
            times.append((round(deadline - start, 6), sent.mti, sent.fields["11"]))
    # attempt n+1 goes reversal_timeout (10 s) + delay(n) after attempt n
    assert [t for t, _, _ in times] == [15.0, 35.0, 75.0, 115.0, 155.0]
    assert {mti for _, mti, _ in times} == {"0401"}
    assert {stan for _, _, stan in times} == {first.fields["11"]}  # a repeat keeps its STAN


def test_non_resolving_answer_schedules_a_repeat() -> None:
    h = Harness()
    sent = timed_out(h)
    out = h.respond(reversal_answer(sent, "91"), mti="0410")
    [rev] = reversal_records(out)
    assert rev.state is ReversalState.OWED and rev.last_response_code == "91"
    assert rev.next_attempt_at == h.now + 5.0
    [again] = sent_reversals(h.advance(5.0))
    assert again.mti == "0401"


def test_answer_to_an_earlier_attempt_still_acknowledges() -> None:
    h = Harness()
    sent = timed_out(h)
    h.advance(10.0)  # attempt 1 timed out, waiting 5 s for attempt 2
    out = h.respond(reversal_answer(sent), mti="0410")
    assert reversal_records(out)[0].state is ReversalState.ACKNOWLEDGED
    assert not sent_reversals(h.advance(100))


def test_max_attempts_then_failed_then_requeued() -> None:
    h = Harness(settings(max_attempts=3, retry_delays=(1.0,)))
    timed_out(h)
    out = h.run_until(h.now + 100)
    assert len(sent_reversals(out)) == 2  # attempts 2 and 3
    [failed] = [r for r in reversal_records(out) if r.state is ReversalState.FAILED]
    assert failed.attempts == 3 and failed.fields  # kept, fields kept to retry
    assert notices(out, "reversal_failed")
    assert h.core.stats()["reversals_failed"] == 1 and h.core.stats()["reversals_owed"] == 0
    assert not sent_reversals(h.run_until(h.now + 10_000))  # failed stays failed
    out = h.requeue(failed.reversal_id)
    assert [r.state for r in reversal_records(out)] == [ReversalState.OWED]
    assert reversal_records(out)[0].attempts == 0
    out = h.advance(0)
    [again] = sent_reversals(out)
    assert again.mti == "0401"  # attempts start over, but the host saw this reversal: a repeat
    out = h.respond(reversal_answer(again), mti="0410")
    assert reversal_records(out)[0].state is ReversalState.ACKNOWLEDGED
    assert h.core.stats()["reversals_failed"] == 0


def test_requeue_of_an_unknown_or_open_reversal_does_nothing() -> None:
    h = Harness()
    timed_out(h)
    assert not h.requeue(1)  # it is SENT, not FAILED
    assert not h.requeue(99)


def test_expiry_fails_a_reversal_that_never_got_an_answer() -> None:
    h = Harness(settings(reversal_expiry=100.0, retry_delays=(30.0,), max_attempts=1000))
    timed_out(h)
    out = h.run_until(h.now + 200)
    failed = [r for r in reversal_records(out) if r.state is ReversalState.FAILED]
    assert len(failed) == 1 and failed[0].updated_at <= T0 + 15 + 100 + 40


def test_expiry_while_waiting_for_a_link() -> None:
    h = Harness(settings(reversal_expiry=100.0))
    h.request(sale())
    h.link_down(1)
    out = h.run_until(h.now + 99)
    assert not [r for r in reversal_records(out) if r.state is ReversalState.FAILED]
    out = h.run_until(h.now + 2)
    assert [r.state for r in reversal_records(out)] == [ReversalState.FAILED]


def test_link_down_times_out_what_was_sent_on_it_at_once() -> None:
    h = Harness(links=(1, 2))
    h.request(sale("000001"), conn=1)
    h.link_down(2)
    assert not replies(h.log)  # nothing was on link 2
    out = h.link_down(1)
    assert replies(out)[0].fields["39"] == "91"
    revs = reversal_records(out)
    assert revs[0].reason is ReversalReason.LINK_LOST
    assert not sent_reversals(out)  # no link: the reversal waits
    assert notices(out, "transaction_completed")[0].data["outcome"] == "link_down"
    assert h.core.stats()["reversals_waiting_for_link"] == 1
    assert not sent_reversals(h.advance(3600))  # waits, no attempt counted
    h.link_up(2)
    [sent] = sent_reversals(h.advance(0))
    assert sent.link_id == 2 and sent.mti == "0400"


def test_reversal_sent_on_a_lost_link_goes_again_without_counting_as_failed() -> None:
    h = Harness(settings(max_attempts=1), links=(1,))
    timed_out(h)
    h.link_down(1)
    h.link_up(1)
    out = h.advance(0)
    [again] = sent_reversals(out)
    assert again.mti == "0401"  # it may have reached the acquirer
    assert not [r for r in reversal_records(out) if r.state is ReversalState.FAILED]


def test_owed_reversals_drain_at_the_rate_after_link_up() -> None:
    h = Harness(settings(reversal_drain_rate=10.0), links=(1,))
    for n in range(30):
        h.request(sale(f"{n + 1:06d}"), conn=n + 1)
    h.link_down(1)
    assert h.core.stats()["reversals_waiting_for_link"] == 30
    h.advance(60)
    h.link_up(1)
    start = h.now
    sends = []
    while len(sends) < 30:
        deadline = h.core.next_deadline()
        assert deadline is not None
        h.now = deadline
        sends += [round(deadline - start, 5) for _ in sent_reversals(h.core.on_timer(deadline))]
    assert sends == pytest.approx([n / 10.0 for n in range(30)])
    for second in range(3):
        assert sum(1 for t in sends if second <= t < second + 1) <= 10


def test_one_stuck_reversal_never_blocks_another() -> None:
    h = Harness()
    stuck = timed_out(h, sale("000001"))
    other = timed_out(h, sale("000002"))
    out = h.respond(reversal_answer(other), mti="0410")
    assert reversal_records(out)[0].state is ReversalState.ACKNOWLEDGED
    assert stuck.fields["11"] != other.fields["11"]
    assert h.core.stats()["reversals_owed"] == 1


def test_undeliverable_approval_is_reversed_with_its_approval_code() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    delivery = to_terminal(h.respond(answer(request)))[0]
    out = h.delivered(delivery.delivery_ref, False)
    assert notices(out, "undeliverable_response")
    rev = reversal_records(out)[0]
    assert rev.reason is ReversalReason.UNDELIVERABLE
    [sent] = sent_reversals(out)
    assert sent.fields["39"] == "22" and sent.fields["38"] == "A1B2C3"


def test_terminal_closed_before_the_answer_makes_an_approval_undeliverable() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    assert not h.closed(1)  # the request stays owned by the core
    out = h.respond(answer(request))
    assert not to_terminal(out)
    assert reversal_records(out)[0].reason is ReversalReason.UNDELIVERABLE
    assert sent_reversals(out)


def test_terminal_closed_before_the_answer_and_a_decline_just_completes() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    h.closed(1)
    out = h.respond(answer(request, "05"))
    assert not to_terminal(out) and not reversal_records(out)
    assert [r.state for r in auth_records(out)] == [AuthState.DECLINED]


def test_terminal_closed_before_the_delivery_result_is_undeliverable() -> None:
    h = Harness()
    request = sale()
    h.request(request, conn=1)
    delivery = to_terminal(h.respond(answer(request)))[0]
    out = h.closed(1)
    assert reversal_records(out)[0].reason is ReversalReason.UNDELIVERABLE
    assert not h.delivered(delivery.delivery_ref, True)  # too late: already reversing


def test_terminal_closed_after_timeout_gets_no_decline() -> None:
    h = Harness()
    h.request(sale(), conn=1)
    h.closed(1)
    out = h.advance(15)
    assert not replies(out) and sent_reversals(out)


def test_late_approval_is_not_forwarded_and_the_reversal_goes_on() -> None:
    h = Harness()
    request = sale()
    sent = timed_out(h, request)
    out = h.respond(answer(request))
    assert not to_terminal(out)
    assert notices(out, "late_response")
    [auth] = auth_records(out)
    assert auth.state is AuthState.REVERSING and auth.approval_code == "A1B2C3"
    assert h.core.stats()["reversals_owed"] == 1
    assert sent.fields["11"] != request["11"]
    # Committed at once: lost in a crash, a "25" to the reversal after the restart would
    # look final, and the hold would stay (simulation, fail_fast profile, seed 2841).
    [persist] = [c for c in out if isinstance(c, Persist)]
    assert persist.urgent


def test_late_approval_before_the_reversal_was_sent_adds_de38() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    h.link_down(1)  # link lost: reversal owed, cannot be sent
    out = h.respond(answer(request), link=1)
    assert notices(out, "late_response")
    [rev] = reversal_records(out)
    assert rev.state is ReversalState.OWED and rev.fields["38"] == "A1B2C3"
    h.link_up(1)
    [sent] = sent_reversals(h.advance(0))
    assert sent.fields["38"] == "A1B2C3"


def test_late_decline_cancels_a_reversal_not_yet_sent() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    h.link_down(1)
    out = h.respond(answer(request, "05"))
    [auth] = auth_records(out)
    [rev] = reversal_records(out)
    assert auth.state is AuthState.DECLINED and rev.state is ReversalState.CANCELLED
    assert rev.fields == {} and "2" not in auth.reversal_fields
    assert notices(out, "reversal_cancelled")
    h.link_up(1)
    assert not sent_reversals(h.run_until(h.now + 3600))


def test_late_decline_after_the_reversal_was_sent_changes_nothing() -> None:
    h = Harness()
    request = sale()
    timed_out(h, request)
    out = h.respond(answer(request, "05"))
    assert notices(out, "late_response") and not reversal_records(out)
    assert h.core.stats()["reversals_owed"] == 1


def test_late_decline_cancel_can_be_switched_off() -> None:
    h = Harness(settings(late_decline_cancels=False))
    request = sale()
    h.request(request)
    h.link_down(1)
    out = h.respond(answer(request, "05"))
    assert not reversal_records(out)
    h.link_up(1)
    assert sent_reversals(h.advance(0))


def test_answer_to_an_answered_request_is_not_forwarded_again() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    h.respond(answer(request, "05"))
    out = h.respond(answer(request, "05"))
    assert not to_terminal(out)
    assert notices(out, "unmatched_response")[0].data["reason"] == "already_answered"


def test_reversal_mti_0420_and_repeat_0421_per_dialect() -> None:
    h = Harness(dialect=make_dialect(reversal=ReversalRules(mti="0420")))
    sent = timed_out(h)
    assert sent.mti == "0420"
    [again] = sent_reversals(h.run_until(h.now + 15))
    assert again.mti == "0421"
    out = h.respond(reversal_answer(again), mti="0430")
    assert reversal_records(out)[0].state is ReversalState.ACKNOWLEDGED


def test_cup_reversal_shares_the_original_stan_and_matches_by_mti() -> None:
    rules = ReversalRules(stan="original", reason_codes={"timeout": "98", "undeliverable": "96"})
    h = Harness(dialect=make_dialect(reversal=rules))
    request = sale("000403")
    sent = timed_out(h, request)
    assert sent.fields["11"] == "000403" and sent.fields["39"] == "98"
    # the late 0210 with the same STAN is the original's, not the reversal's answer
    out = h.respond(answer(request))
    assert notices(out, "late_response") and not reversal_records(out)
    out = h.respond(reversal_answer(sent), mti="0410")
    assert reversal_records(out)[0].state is ReversalState.ACKNOWLEDGED


def test_rewrite_mode_reversal_uses_acquirer_side_stans() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=700)
    sent = timed_out(h, sale("000001"))
    assert sent.fields["11"] == "000701"
    assert sent.fields["90"][4:10] == "000700"  # DE 90 names the STAN the acquirer saw
    out = h.respond({"11": "000701", "39": "00"}, mti="0410")
    assert reversal_records(out)[0].state is ReversalState.ACKNOWLEDGED


def test_rewrite_mode_cup_reversal_uses_the_rewritten_original_stan() -> None:
    rules = ReversalRules(stan="original")
    h = Harness(settings(stan_mode="rewrite"), make_dialect(reversal=rules), stan_seed=42)
    sent = timed_out(h, sale("000001"))
    assert sent.fields["11"] == "000042"


def test_no_forward_while_reversing_of_the_same_request() -> None:
    h = Harness()
    request = sale()
    timed_out(h, request)
    assert not forwards(h.request(request, conn=3, mti="0201"))


def test_oldest_owed_reversal_age() -> None:
    h = Harness()
    assert h.core.oldest_owed_reversal_age(h.now) is None
    timed_out(h, sale("000001"))
    h.advance(7)
    timed_out(h, sale("000002"))
    assert h.core.oldest_owed_reversal_age(h.now) == pytest.approx(22.0)


def test_late_decline_does_not_cancel_a_requeued_reversal_that_was_sent_before() -> None:
    h = Harness(settings(max_attempts=1))
    request = sale()
    h.request(request)
    h.run_until(h.now + 30)  # timed out, sent once, no answer: FAILED
    h.link_down(1)
    h.requeue(1)  # attempts back to 0, waiting for a link
    out = h.respond(answer(request, "05"))
    assert notices(out, "late_response") and not reversal_records(out)
    h.link_up(1)
    assert sent_reversals(h.advance(0))


def test_approval_after_an_original_not_found_reversal_reopens_it() -> None:
    """The reversal overtook its original: answered 25, then the approval arrives late. The
    funds are held now, so the same reversal is reopened and repeated (0401, its STAN and
    id): never a second reversal, since the 25 may have answered an earlier attempt while a
    later one released the hold."""
    h = Harness()
    request = sale()
    first = timed_out(h, request)
    out = h.respond({**reversal_answer(first, "25")}, mti="0410")
    assert [a.state for a in auth_records(out)] == [AuthState.REVERSED]
    assert all("2" not in a.reversal_fields for a in auth_records(out))  # no card data on disk
    out = h.respond(answer(request))  # the late approval
    assert not to_terminal(out)
    [repeat] = sent_reversals(out)
    assert repeat.mti == "0401" and repeat.fields["11"] == first.fields["11"]
    assert repeat.fields["2"] == PAN and repeat.fields["38"] == "A1B2C3"
    assert [r.reversal_id for r in reversal_records(out)] == [1, 1]  # owed, then sent
    assert AuthState.REVERSING in [a.state for a in auth_records(out)]
    out = h.respond(reversal_answer(repeat), mti="0410")
    assert [a.state for a in auth_records(out)] == [AuthState.REVERSED]
    assert notices(out, "reversal_acknowledged")
    assert h.core.stats()["reversals_owed"] == 0 and h.core.stats()["authorizations_open"] == 0


def test_a_reopenable_reversal_keeps_its_stan_until_the_request_is_forgotten() -> None:
    """Between its "25" and the end of the duplicate window the reversal may be reopened, so
    no other message may take its STAN; after that it is free again."""
    h = Harness(settings(duplicate_window=10.0))
    first = timed_out(h, sale())
    held = h.core.stats()["stans_in_use"]
    assert held >= 1  # the reversal's STAN (a new one: the default)
    h.respond(reversal_answer(first, "25"), mti="0410")
    assert h.core.stats()["stans_in_use"] == held
    h.run_until(h.now + 11.0)  # the request is forgotten: no approval can be matched now
    assert h.core.stats()["stans_in_use"] == 0


def test_original_not_found_after_the_approval_arrived_is_repeated() -> None:
    """The approval reaches the gateway first, then the acquirer's "25" to a reversal that
    overtook its original there. The funds are held, so the 25 settles nothing: the same
    reversal is repeated (0401, same STAN), and the repeat releases the hold."""
    h = Harness()
    request = sale()
    first = timed_out(h, request)
    out = h.respond(answer(request))  # the late approval: the reversal goes on
    assert not sent_reversals(out) and not to_terminal(out)
    out = h.respond(reversal_answer(first, "25"), mti="0410")
    assert [r.state for r in reversal_records(out)] == [ReversalState.OWED]
    assert not notices(out, "reversal_acknowledged") and not auth_records(out)
    [repeat] = sent_reversals(h.advance(10.0))
    assert repeat.mti == "0401" and repeat.fields["11"] == first.fields["11"]
    assert repeat.fields["2"] == PAN  # the same reversal: DE 38 only if its first attempt had it
    out = h.respond(reversal_answer(repeat, "00"), mti="0410")
    assert [a.state for a in auth_records(out)] == [AuthState.REVERSED]
    assert notices(out, "reversal_acknowledged")
    assert h.core.stats()["reversals_owed"] == 0


def test_original_not_found_for_a_known_approval_fails_after_max_attempts() -> None:
    """An acquirer that cannot find an original it approved (its reversal matching is broken,
    say): every attempt is answered 25. The reversal fails and is alerted on, instead of
    counting as done while the funds stay held."""
    h = Harness(settings(max_attempts=3))
    request = sale()
    h.request(request)
    [delivery] = to_terminal(h.respond(answer(request)))
    out = h.delivered(delivery.delivery_ref, False)  # reversed as undeliverable, at once
    attempts = []
    while (sent := sent_reversals(out)) and len(attempts) < 10:
        attempts.append(sent[0].mti)
        out = h.respond(reversal_answer(sent[0], "25"), mti="0410")
        assert not notices(out, "reversal_acknowledged")
        if not notices(out, "reversal_failed"):
            out = h.run_until(h.core.next_deadline() or h.now)
    assert attempts == ["0400", "0401", "0401"]
    assert notices(out, "reversal_failed")
    assert h.core.stats()["reversals_failed"] == 1


def test_approval_after_a_done_reversal_is_not_reversed_again() -> None:
    """Answered 00: the hold was released once; a late approval changes nothing."""
    h = Harness()
    request = sale()
    first = timed_out(h, request)
    h.respond(reversal_answer(first, "00"), mti="0410")
    out = h.respond(answer(request))
    assert not sent_reversals(out) and not to_terminal(out)
