"""A reversal answered "original not found" (25): the original may still be in the acquirer's
queue, another attempt of the same reversal may have released it, or it was declined."""

from __future__ import annotations

from gateway.core.commands import Command, SendToAcquirer
from gateway.core.records import CARD_DATA_FIELDS, AuthState
from gateway.wire.dialect import ReversalRules

from .helpers import (
    PAN,
    Harness,
    answer,
    auth_records,
    forwards,
    make_dialect,
    notices,
    reversal_answer,
    reversal_records,
    sale,
    sent_reversals,
    settings,
    unanswered_then_repeated,
)
from .test_engine_recovery import restart, restart_with_the_acknowledgement_lost
from .test_engine_terminal_reversal import terminal_reversal


def assert_no_second_reversal(h: Harness, original: dict[str, str]) -> None:
    """The terminal's own 0400 of ``original`` is answered by the gateway, not sent upstream
    as a second reversal of it."""
    out = h.request(terminal_reversal(original), conn=5, mti="0400")
    ids = sorted({r.reversal_id for r in reversal_records(h.log)})
    assert not forwards(out), f"reversal ids for one original: {ids}"


def test_a_25_that_comes_after_the_window_still_lets_the_late_approval_reopen_it() -> None:
    """Default settings. The acquirer is congested: the original waits in its queue, and the
    gateway's reversal is answered 91 four times, then "25" (it overtook the original) at
    t=120 s, past the duplicate window that ran from the timeout at 15 s. The request is
    remembered for another window from the 25, so the approval 1 s later is matched and the
    reversal reopened."""
    h = Harness()
    original = sale()
    h.request(original)
    [sent] = sent_reversals(h.advance(15.0))
    for _ in range(4):
        h.respond(reversal_answer(sent, "91"), mti="0410")  # "try again later"
        while not (again := sent_reversals(h.run_until(h.core.next_deadline() or h.now))):
            pass
        [sent] = again
    assert h.now - 15.0 > 60.0  # the last attempt went out after the window
    h.respond(reversal_answer(sent, "25"), mti="0410")
    h.advance(1.0)
    out = h.respond(answer(original))  # the original's approval: held now
    assert sent_reversals(out), (
        "late approval after a 25 went "
        f"{[n.data.get('reason') for n in notices(out, 'unmatched_response')]}: "
        "funds held, no reversal, no reopen"
    )


def test_a_stale_25_is_not_followed_by_a_second_reversal() -> None:
    """Attempt 1 (0400) gets no answer in time; attempt 2 (0401, same STAN) goes out. The 25
    that arrives is attempt 1's (it overtook the original); attempt 2 found the original and
    released it, and its "00" arrives right after. After an unanswered attempt a 25 is not
    final, so that 00 settles the reversal: the terminal's own 0400 is answered by the
    gateway, not sent upstream as a second reversal."""
    h = Harness(settings(duplicate_window=10.0))
    original = sale()
    first, second = unanswered_then_repeated(h, original)
    h.respond(reversal_answer(first, "25"), mti="0410")  # late answer to attempt 1
    released = h.respond(reversal_answer(second, "00"), mti="0410")  # attempt 2: released
    assert not notices(released, "unmatched_response")
    h.advance(1.0)
    assert_no_second_reversal(h, original)


def test_a_known_decline_does_not_send_the_terminals_reversal_upstream() -> None:
    """The original's decline arrives late while the reversal is on the wire (too late to
    cancel it); the reversal is then answered 25. The decline is recorded: nothing is held
    and no approval can follow, so the 25 settles it for good and the terminal's own reversal
    is answered by the gateway."""
    h = Harness(settings(duplicate_window=10.0))
    original = sale()
    _, second = unanswered_then_repeated(h, original)
    h.respond(answer(original, "05"))  # the original's late decline
    h.respond(reversal_answer(second, "25"), mti="0410")
    h.advance(1.0)
    out = h.request(terminal_reversal(original), conn=5, mti="0400")
    assert not forwards(out), (
        "declined original, yet the terminal's reversal went upstream as reversal "
        f"{[r.reversal_id for r in reversal_records(out)][:1]}"
    )


def test_a_late_decline_after_the_25_ends_the_chance_of_a_reopen() -> None:
    """25 first, then the original's decline: nothing is held, so the reversal lets go of its
    STAN at once and a contradicting approval after it reopens nothing."""
    h = Harness()
    original = sale()
    h.request(original)
    [sent] = sent_reversals(h.advance(15.0))
    h.respond(reversal_answer(sent, "25"), mti="0410")
    held = h.core.stats()["stans_in_use"]
    h.respond(answer(original, "05"))
    assert h.core.stats()["stans_in_use"] == held - 1
    assert not sent_reversals(h.respond(answer(original)))


def test_after_a_restart_another_attempts_00_settles_a_25_answered_reversal() -> None:
    """Attempts of the in-doubt reversal share a STAN, and the 25 may answer an earlier one:
    the later attempt's 00 settles it, and the terminal's own reversal is answered by the
    gateway instead of going upstream as a second reversal of one original."""
    h = Harness()
    original = sale()
    h.request(original)
    fresh, _ = restart(h)  # in doubt: reversed by the new process
    [first] = sent_reversals(fresh.advance(1.0))
    fresh.advance(10.0)  # no answer in time
    [second] = sent_reversals(fresh.run_until(fresh.core.next_deadline() or fresh.now))
    assert second.mti == "0401"
    fresh.respond(reversal_answer(first, "25"), mti="0410")  # the first attempt's answer
    out = fresh.respond(reversal_answer(second, "00"), mti="0410")  # the second released it
    assert not notices(out, "unmatched_response")
    assert [r.last_response_code for r in reversal_records(out)] == ["00"]
    held = fresh.core.stats()["stans_in_use"]
    fresh.advance(1.0)
    out = fresh.request(terminal_reversal(original), conn=5, mti="0400")
    assert not forwards(out) and not sent_reversals(out)
    assert fresh.core.stats()["stans_in_use"] <= held


def test_after_a_restart_a_25_is_final_a_window_later() -> None:
    """The restored request lingers: the 25 keeps the reversal's STAN (another attempt's
    answer, or the original's approval, may come) for duplicates.window, then lets it go."""
    h = Harness()
    h.request(sale())
    fresh, _ = restart(h)
    [first] = sent_reversals(fresh.advance(1.0))
    before = fresh.core.stats()["stans_in_use"]
    fresh.respond(reversal_answer(first, "25"), mti="0410")
    fresh.run_until(fresh.now + 59.0)
    assert fresh.core.stats()["stans_in_use"] == before
    fresh.run_until(fresh.now + 2.0)
    assert fresh.core.stats()["stans_in_use"] == before - 1
    late = fresh.respond(reversal_answer(first, "00"), mti="0410")
    assert notices(late, "unmatched_response")


def test_a_25_answered_reversal_without_its_request_stops_listening_after_the_timeout() -> None:
    """A reversal tied again after a restart to its closed original (no request of it is
    known): the 25 settles it once reversal.timeout passes with nothing more."""
    fresh = restart_with_the_acknowledgement_lost(sale())
    [again] = sent_reversals(fresh.advance(1.0))
    # The first 25 may be the late answer of the attempt sent before the crash: the one on
    # the wire is waited for, and its repeat's 25 settles it.
    fresh.respond(reversal_answer(again, "25"), mti="0410")
    while not (repeats := sent_reversals(fresh.run_until(fresh.core.next_deadline() or 0))):
        pass
    [again] = repeats
    assert again.mti == "0401"
    before = fresh.core.stats()["stans_in_use"]
    fresh.respond(reversal_answer(again, "25"), mti="0410")
    assert fresh.core.stats()["stans_in_use"] == before
    fresh.run_until(fresh.now + 11.0)
    assert fresh.core.stats()["stans_in_use"] == before - 1
    late = fresh.respond(reversal_answer(again, "00"), mti="0410")
    assert notices(late, "unmatched_response")


CUP_STAN = make_dialect(reversal=ReversalRules(stan="original"))


def test_another_reversals_late_00_does_not_settle_a_reopenable_reversal_sharing_its_key() -> None:
    """CUP-style reversals (DE 11 = the original's STAN), STAN passthrough. Sale A (STAN
    003316) times out; its reversal is answered 25 (it overtook A) and stays in the index,
    reopenable. The terminal then sends sale B reusing STAN 003316 (another amount and time:
    not a duplicate); B times out too and its reversal, same key (0410, 003316, TERM0001), gets
    no answer in time. B's late 00 arrives while B waits for its repeat: `_match` takes the
    first non-SENT candidate, the ACKNOWLEDGED reopenable A, and settles A "for good". A's
    approval then arrives and is ignored: funds held, nothing reverses them. (On 005f55b A
    was not indexed: B got its 00 and A's approval reopened A.)"""
    h = Harness(dialect=CUP_STAN)
    a = sale("003316")
    h.request(a)
    [rev_a] = sent_reversals(h.advance(15.0))
    h.respond(reversal_answer(rev_a, "25"), mti="0410")  # A overtaken at the acquirer
    h.advance(1.0)
    b = sale("003316", de4="000000002000", de7="0908064600", de37="325106000002")
    h.request(b, conn=2)
    [rev_b] = sent_reversals(h.advance(15.0))
    assert rev_b.fields["11"] == "003316" and rev_b.fields["4"] == "000000002000"
    h.advance(10.0)  # B's attempt 1: no answer in time, B is OWED until its repeat
    late = h.respond(reversal_answer(rev_b, "00"), mti="0410")  # B's attempt 1 released B
    # B's repeat (if any) goes out and is answered "already reversed"
    for again in sent_reversals(h.run_until(h.now + 6.0)):
        h.respond(reversal_answer(again, "94"), mti="0410")
    h.advance(1.0)
    out = h.respond(answer(a))  # A's approval: the funds are held now
    assert sent_reversals(out), (
        "A's approval after its 25 reversed nothing; B's late 00 went to reversal "
        f"{[r.reversal_id for r in reversal_records(late)]} (A is 1, B is 2)"
    )


def test_a_late_decline_after_a_25_journals_no_card_data_in_a_reversed_record() -> None:
    """Sale times out, its reversal is answered 25 (kept reopenable: the full reversal fields,
    PAN among them, stay on the authorization in memory only), then the original's late
    decline arrives: the REVERSED authorization is journaled again, without them."""
    h = Harness()
    original = sale()
    h.request(original)
    [sent] = sent_reversals(h.advance(15.0))
    h.respond(reversal_answer(sent, "25"), mti="0410")
    out = h.respond(answer(original, "05"))
    leaked = [
        (r.state.value, sorted(set(r.reversal_fields) & CARD_DATA_FIELDS))
        for r in auth_records(out)
        if r.state is AuthState.REVERSED
        and (set(r.reversal_fields) & CARD_DATA_FIELDS or PAN in repr(r.reversal_fields))
    ]
    assert not leaked, f"completed authorization journaled with card data: {leaked}"


def test_a_25_to_an_earlier_attempt_is_not_taken_as_final_while_a_later_one_may_have_released() -> (
    None
):
    """Attempt 1 (0400) gets no answer in time; attempt 2 (0401, same STAN) goes out. Attempt
    1's late 25 arrives (it overtook the original); attempt 2 found the original and released
    it, but its 00 is lost. An attempt went unanswered, so the 25 may be its answer: the
    reversal is repeated once more, and the repeat is answered "already reversed" (94), not
    the terminal's own 0400 sent upstream as a second reversal of the one original."""
    h = Harness(settings(duplicate_window=10.0))
    original = sale()
    first, _ = unanswered_then_repeated(h, original)
    h.respond(reversal_answer(first, "25"), mti="0410")  # late answer to attempt 1
    # attempt 2's "00" never arrives (lost on the way back); its repeat finds it released
    [third] = sent_reversals(h.run_until(h.now + 30.0))
    assert third.fields["11"] == first.fields["11"]
    h.respond(reversal_answer(third, "94"), mti="0410")
    h.run_until(h.now + 30.0)
    assert_no_second_reversal(h, original)


def test_a_genuine_not_found_still_settles_after_one_confirming_repeat() -> None:
    """The original never reached the acquirer: after an unanswered attempt, the first 25
    may be that attempt's; the one on the wire is waited for and repeated, and the repeat's
    25 settles the reversal."""
    h = Harness()
    first, second = unanswered_then_repeated(h, sale())
    out = h.respond(reversal_answer(second, "25"), mti="0410")
    assert not notices(out, "reversal_acknowledged")
    # it may be attempt 1's: attempt 2 is waited for, then repeated
    [third] = sent_reversals(h.run_until(h.now + 30.0))
    assert third.mti == "0401" and third.fields["11"] == first.fields["11"]
    out = h.respond(reversal_answer(third, "25"), mti="0410")
    assert notices(out, "reversal_acknowledged")
    assert h.core.stats()["reversals_owed"] == 0


def test_two_stale_25s_do_not_settle_a_reversal_whose_latest_attempt_is_still_out() -> None:
    """Attempts 1 and 2 both go unanswered in time (the acquirer is slow; both overtook the
    original in its queue); attempt 3 (0401, same STAN) goes out and finds the original,
    releasing it. Then the late 25s of attempts 1 and 2 arrive: each is counted against one
    unanswered attempt, so neither settles the reversal. Attempt 3's 00 is lost with its
    link; the repeat after it is answered "already reversed", and the terminal's own 0400 is
    answered by the gateway, not sent upstream as a second reversal."""
    h = Harness()
    original = sale()
    h.request(original)
    [first] = sent_reversals(h.advance(15.0))  # t=15, attempt 1
    h.advance(10.0)  # t=25: attempt 1 unanswered
    [second] = sent_reversals(h.advance(5.0))  # t=30, attempt 2 (0401)
    h.advance(10.0)  # t=40: attempt 2 unanswered
    [third] = sent_reversals(h.advance(10.0))  # t=50, attempt 3 (0401)
    assert first.fields["11"] == second.fields["11"] == third.fields["11"]
    h.advance(0.5)
    h.respond(reversal_answer(first, "25"), mti="0410")  # attempt 1's late answer
    out = h.respond(reversal_answer(second, "25"), mti="0410")  # attempt 2's late answer
    assert not notices(out, "reversal_acknowledged")  # attempt 3 is still out
    # Attempt 3's "00" (it released the hold) is lost: the link it came on breaks.
    h.link_down(1)
    h.advance(1.0)
    h.link_up(1)
    for again in sent_reversals(h.run_until(h.now + 40.0)):  # a repeat would get 94
        h.respond(reversal_answer(again, "94"), mti="0410")
    h.run_until(h.now + 120.0)  # the request is forgotten
    assert_no_second_reversal(h, original)


def test_a_repeats_answer_after_a_settling_25_is_still_matched_within_the_window() -> None:
    """Default windows. Attempt 1 times out; attempt 2 (0401) goes out at t=30. Attempt 1's
    late 25 (t=31) is taken as its answer; attempt 2 is waited for, times out, and attempt 3
    goes out. Attempt 2's late 25 then settles the reversal, with attempt 3 still out:
    attempts share a STAN, and this cannot be told from attempt 3's own answer. Attempt 3's
    00 comes 18 s later; the settled reversal is still matchable while its request is
    remembered (duplicates.window from the 25), so that 00 settles it for good and the
    terminal's own 0400 is answered by the gateway."""
    h = Harness()
    original = sale()
    h.request(original)
    [first] = sent_reversals(h.advance(15.0))  # t=15
    h.advance(10.0)  # t=25: attempt 1 unanswered
    [second] = sent_reversals(h.advance(5.0))  # t=30, attempt 2
    h.advance(1.0)
    h.respond(reversal_answer(first, "25"), mti="0410")  # t=31: attempt 1's late 25
    third = []
    while not third:  # attempt 2 times out at t=40; attempt 3 after the retry delay
        third = sent_reversals(h.run_until(h.core.next_deadline() or h.now))
    h.advance(1.0)
    h.respond(reversal_answer(second, "25"), mti="0410")  # attempt 2's late 25: settles
    h.advance(18.0)
    late = h.respond(reversal_answer(third[0], "00"), mti="0410")  # attempt 3 released it
    assert not notices(late, "unmatched_response")  # the settled reversal still listens
    h.advance(1.0)
    assert_no_second_reversal(h, original)


def test_a_25_on_the_last_attempt_after_unanswered_ones_fails_for_the_operator() -> None:
    """Default settings (max_attempts 20). The acquirer's reversal service is down for an hour
    while the link stays up: attempts 1-19 time out. It comes back and answers attempt 20
    "25". That may be a late answer to an earlier attempt while a later one released the hold,
    or a genuine "not found": with no attempt left to ask again, the reversal fails (kept,
    alerted on, retryable), it is not taken as settled. After an operator's retry, each 25
    is answered with a repeat while unanswered attempts are counted (two at most); then the
    next 25 settles it."""
    h = Harness()
    h.request(sale())
    sent = sent_reversals(h.advance(15.0))
    while len(sent) < 20:
        sent += sent_reversals(h.run_until(h.core.next_deadline() or h.now))
    assert [s.mti for s in sent][1:] == ["0401"] * 19
    h.advance(1.0)
    h.respond(reversal_answer(sent[-1], "25"), mti="0410")
    out = h.run_until(h.now + 30.0)  # attempt 20 is waited for: no attempt is left
    assert notices(out, "reversal_failed") and h.core.stats()["reversals_failed"] == 1
    h.requeue(1)
    answered_25 = 0
    out: list[Command] = []
    for _ in range(50):  # each attempt answered 25 at once
        out = h.run_until(h.core.next_deadline() or h.now)
        for attempt in sent_reversals(out):
            out = h.respond(reversal_answer(attempt, "25"), mti="0410")
            answered_25 += 1
        if notices(out, "reversal_acknowledged"):
            break
    assert notices(out, "reversal_acknowledged")
    assert answered_25 <= 3  # one repeat per unanswered attempt still counted (two at most)


def test_an_answer_to_one_reversal_does_not_settle_another_sharing_its_key() -> None:
    """CUP-style reversals (DE 11 = the original's STAN), STAN passthrough, default windows.
    Sale A (003316) times out; its attempts 1 and 2 go unanswered in time, attempt 3 goes out
    at t=50, then the late 25s of attempts 1 and 2 arrive (counted against them: A stays
    open). The terminal's next sale B reuses STAN 003316 (another amount and time); B times
    out and its reversal (same key: 0410, 003316, TERM0001) is answered 91. Then A's attempt 3
    answer (00: it released A) arrives: it settles A, and B's repeat still goes."""
    h = Harness(dialect=CUP_STAN)
    a = sale("003316")
    h.request(a)
    [first] = sent_reversals(h.advance(15.0))  # t=15
    h.advance(10.0)
    sent_reversals(h.advance(5.0))  # t=30, attempt 2
    h.advance(10.0)
    [third] = sent_reversals(h.advance(10.0))  # t=50, attempt 3
    h.advance(0.5)
    h.respond(reversal_answer(first, "25"), mti="0410")  # attempt 1's late 25
    h.respond(reversal_answer(first, "25"), mti="0410")  # attempt 2's late 25
    h.advance(0.5)
    b = sale("003316", de4="000000002000", de7="0908064700", de37="325106000002")
    h.request(b, conn=2)
    [rev_b] = sent_reversals(h.advance(15.0))  # t=66
    assert rev_b.fields["11"] == "003316" and rev_b.fields["4"] == "000000002000"
    h.advance(1.0)
    h.respond(reversal_answer(rev_b, "91"), mti="0410")  # B: not yet, repeat in 5 s
    h.advance(1.0)
    taken = h.respond(reversal_answer(third, "00"), mti="0410")  # A's attempt 3: released A
    taken_by = [r.reversal_id for r in reversal_records(taken)]
    repeats = [s for s in sent_reversals(h.run_until(h.now + 10.0)) if s.fields["4"] == b["4"]]
    assert repeats, (
        f"A's 00 went to reversal {taken_by} (A is 1, B is 2): B settled, its repeat never "
        "sent, B's hold left"
    )


# Genuine "not found" after unanswered attempts: settled, never failed or stuck.


def _next_attempt(h: Harness, limit: float = 4_000.0) -> SendToAcquirer | None:
    """Fire timers until the reversal's next attempt goes out (None: nothing left to fire)."""
    stop = h.now + limit
    while (deadline := h.core.next_deadline()) is not None and deadline <= stop:
        sent = sent_reversals(h.run_until(deadline))
        if sent:
            [attempt] = sent
            return attempt
    return None


def _answer_every_attempt_25(h: Harness, attempt: SendToAcquirer) -> tuple[str, int]:
    """The acquirer has no such original: every attempt from here on is answered "25" at
    once. Returns how the reversal ended and how many attempts those 25s took."""
    log: list[Command] = []
    answered = 0
    current: SendToAcquirer | None = attempt
    while current is not None:
        h.advance(0.2)
        out = h.respond(reversal_answer(current, "25"), mti="0410")
        answered += 1
        log += out
        if notices(out, "reversal_acknowledged"):
            return "acknowledged", answered
        if notices(out, "reversal_failed"):
            return "failed", answered
        current = _next_attempt(h)
    return "stuck", answered


def test_a_genuine_not_found_after_a_half_hour_reversal_outage_is_not_failed() -> None:
    """Default settings. The original never reached the acquirer (request lost). The
    acquirer's reversal processing is down for ~29 minutes while the link stays up: attempts
    1-10 time out with no answer at all. It comes back and answers every attempt "25", the
    genuine "not found". At most two unanswered attempts are counted (UNANSWERED_KEPT), so
    the 25s settle it within a few attempts, with half of the budget still left."""
    h = Harness()
    h.request(sale())
    [attempt] = sent_reversals(h.advance(15.0))
    silent = [attempt]
    while len(silent) < 10:  # no answer: each times out
        nxt = _next_attempt(h)
        assert nxt is not None
        silent.append(nxt)
    back = _next_attempt(h)  # attempt 11: the acquirer answers again
    assert back is not None
    outcome, answered = _answer_every_attempt_25(h, back)
    assert outcome == "acknowledged", (
        f"genuine not found after 10 unanswered attempts: {outcome} after {answered} "
        f"answered 25s, stats {h.core.stats()}"
    )


def test_link_flaps_while_sent_do_not_fail_a_genuine_not_found() -> None:
    """Default settings. The original never reached the acquirer. The acquirer link flaps
    (up ~2 s, down ~3 s) ten times, each time while the reversal's attempt is on the wire.
    Then the link is stable and every attempt is answered "25": the reversal settles, it
    does not fail (the flaps count two unanswered attempts at most)."""
    h = Harness()
    h.request(sale())
    [attempt] = sent_reversals(h.advance(15.0))
    for _ in range(9):
        h.advance(2.0)
        h.link_down(1)
        h.advance(3.0)
        h.link_up(1)
        again = sent_reversals(h.advance(0.0))
        assert len(again) == 1 and again[0].mti == "0401"
    h.advance(2.0)
    h.link_down(1)  # the 10th flap
    h.advance(3.0)
    h.link_up(1)
    [attempt] = sent_reversals(h.advance(0.0))  # attempt 11
    outcome, answered = _answer_every_attempt_25(h, attempt)
    assert outcome == "acknowledged", (
        f"genuine not found after 10 link flaps: {outcome} after {answered} answered 25s, "
        f"stats {h.core.stats()}"
    )


def test_attempts_answered_late_with_91_are_not_counted_as_unanswered() -> None:
    """Default settings. The original never reached the acquirer. The acquirer is congested
    for ~29 minutes: attempts 1-10 are each answered "91" (try later) 11 s after they went
    out, past reversal_timeout, while the reversal is OWED. Each late answer takes its
    attempt off the unanswered count, so when the acquirer recovers and answers "25", the
    reversal settles."""
    h = Harness()
    h.request(sale())
    [attempt] = sent_reversals(h.advance(15.0))
    for _ in range(10):
        h.advance(11.0)  # timed out at +10; its 91 arrives at +11 (OWED)
        h.respond(reversal_answer(attempt, "91"), mti="0410")
        nxt = _next_attempt(h)
        assert nxt is not None
        attempt = nxt
    outcome, answered = _answer_every_attempt_25(h, attempt)
    assert outcome == "acknowledged", (
        f"genuine not found after 10 late-answered attempts: {outcome} after {answered} "
        f"answered 25s, stats {h.core.stats()}"
    )


def test_a_slow_acquirers_25_settles_a_genuine_not_found() -> None:
    """Default settings. The original never reached the acquirer; the acquirer answers every
    reversal attempt "25", 11 s after it (1 s past reversal_timeout). The first attempt
    times out; its 25 comes while nothing is on the wire and no other attempt is unanswered:
    it can only be that attempt's answer, and it settles the reversal."""
    h = Harness()
    h.request(sale())
    [attempt] = sent_reversals(h.advance(15.0))
    log: list[Command] = []
    answers = 0
    current: SendToAcquirer | None = attempt
    while current is not None and answers < 25:
        log += h.advance(11.0)
        log += h.respond(reversal_answer(current, "25"), mti="0410")
        answers += 1
        if notices(log, "reversal_acknowledged") or notices(log, "reversal_failed"):
            break
        current = _next_attempt(h)
    assert notices(log, "reversal_acknowledged"), (
        f"every one of {answers} attempts answered 25 (11 s late): "
        f"failed={bool(notices(log, 'reversal_failed'))}, stats {h.core.stats()}"
    )
