"""After a restart, the requests of open authorizations are remembered as requests.

The journal gives a restarted core every open authorization; its request lingers as a timed-out
one does, so that:
- a resend or a repeat (0201) of it is declined, never forwarded a second time, while the
  gateway reverses it;
- its answer, late, on the new connection (hosts that answer by station do so), is matched:
  an approval keeps the reversal going (and reopens it after a "25"), a decline may cancel it.
"""

from __future__ import annotations

from gateway.core.records import AuthState, ReversalState
from gateway.core.reversal import source_field_names

from .helpers import (
    PAN,
    TRACK2,
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
from .test_engine_not_found import assert_no_second_reversal
from .test_engine_recovery import in_doubt_reversal_after_restart, restart
from .test_engine_terminal_reversal import terminal_reversal


def test_a_late_approval_after_a_restart_is_matched_and_its_code_goes_into_the_reversal() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    fresh, _ = restart(h)  # its in-doubt reversal waits for the first drain slot
    out = fresh.respond(answer(request, de38="XYZ789"))
    assert not notices(out, "unmatched_response") and not to_terminal(out)
    [late] = notices(out, "late_response")
    assert late.data["response_code"] == "00"
    [sent] = sent_reversals(fresh.run_until(fresh.now + 1))
    assert sent.fields["38"] == "XYZ789"
    fresh.respond(reversal_answer(sent), mti="0410")
    assert fresh.core.stats()["authorizations_open"] == 0


def test_a_late_decline_after_a_restart_cancels_the_reversal_before_it_is_sent() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    fresh, _ = restart(h)
    out = fresh.respond(answer(request, "05"))
    assert notices(out, "reversal_cancelled")
    assert [r.state for r in reversal_records(out)] == [ReversalState.CANCELLED]
    assert auth_records(out)[-1].state is AuthState.DECLINED
    assert not sent_reversals(fresh.run_until(fresh.now + 100))


def test_an_approval_after_the_restarted_reversal_was_answered_not_found_reopens_it() -> None:
    # The original waited in the acquirer's queue across the restart: the in-doubt reversal
    # overtook it ("25"), then it was approved and its answer came on the new connection.
    request = sale()
    fresh, first = in_doubt_reversal_after_restart(request)
    fresh.respond(reversal_answer(first, "25"), mti="0410")
    out = fresh.respond(answer(request))
    assert not notices(out, "unmatched_response")
    [again] = sent_reversals(out)
    assert again.mti == "0401" and again.fields["11"] == first.fields["11"]
    assert again.fields["38"] == "A1B2C3"
    done = fresh.respond(reversal_answer(again), mti="0410")
    assert auth_records(done)[-1].state is AuthState.REVERSED
    assert {r.reversal_id for r in reversal_records(fresh.log)} == {1}
    assert_no_second_reversal(fresh, request)


def test_a_resend_and_a_repeat_of_an_in_doubt_request_are_declined_not_forwarded() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    fresh, _ = restart(h)
    for mti in ("0200", "0201"):
        out = fresh.request(request, conn=7, mti=mti)
        assert not forwards(out)
        [decline] = replies(out)
        assert decline.mti == "0210" and decline.fields["39"] == "91"
        assert decline.fields["11"] == request["11"] and decline.fields["41"] == "TERM0001"
        [duplicate] = notices(out, "duplicate_request")
        assert duplicate.data["outcome"] == "declined"


def test_a_restored_request_is_forgotten_a_window_after_its_reversal_is_done() -> None:
    rules = settings(duplicate_window=60.0)
    h = Harness(rules)
    request = sale()
    h.request(request)
    fresh, _ = restart(h, settings=rules)
    assert fresh.core.stats()["lingering"] == 1
    fresh.advance(120)  # past the window, but still being reversed: still a duplicate
    [sent] = sent_reversals(fresh.log)
    assert not forwards(fresh.request(request, conn=7))
    fresh.respond(reversal_answer(sent), mti="0410")
    fresh.advance(61)
    assert fresh.core.stats()["lingering"] == 0
    assert forwards(fresh.request(request, conn=7))  # a new transaction now


def test_under_stan_rewrite_a_restored_request_is_matched_by_the_stan_the_acquirer_saw() -> None:
    rules = settings(stan_mode="rewrite")
    h = Harness(rules)
    request = sale("000042")
    [forward] = forwards(h.request(request))
    acquirer_stan = forward.replace["11"]
    assert acquirer_stan != "000042"
    fresh, _ = restart(h, settings=rules)
    # The terminal's STAN means nothing to the acquirer: not matched by it.
    out = fresh.respond(answer(request))
    assert notices(out, "unmatched_response")
    out = fresh.respond(answer({**request, "11": acquirer_stan}))
    assert notices(out, "late_response") and not notices(out, "unmatched_response")
    # A resend is declined with the terminal's own STAN, and no new request takes the
    # acquirer STAN while the old one may still be answered.
    [decline] = replies(fresh.request(request, conn=7))
    assert decline.fields["11"] == "000042"
    [new] = forwards(fresh.request(sale("000043"), conn=8))
    assert new.replace["11"] != acquirer_stan


def test_a_request_keeps_what_matches_it_after_a_restart_and_never_card_secrets() -> None:
    dialect = make_dialect(
        match_fields=("41", "11", "62"),
        duplicate_fields=("41", "11", "4", "63"),
        response_echo_fields=("11", "41", "48", "35", "52"),
    )
    names = source_field_names(dialect)
    assert {"62", "63", "48"} <= set(names)
    assert not {"35", "36", "45", "52", "55"} & set(names)
    h = Harness(dialect=dialect)
    request = sale(de62="ROUTE1", de63="X")
    [record] = auth_records(h.request(request))
    assert record.reversal_fields["62"] == "ROUTE1" and record.reversal_fields["2"] == PAN
    fresh, _ = restart(h, dialect=dialect)
    out = fresh.respond(answer(request, de62="ROUTE2"))  # another route's answer
    assert notices(out, "unmatched_response")
    out = fresh.respond(answer(request, de62="ROUTE1"))
    assert notices(out, "late_response")


def test_after_a_restart_and_a_25_the_terminals_own_reversal_still_goes_upstream() -> None:
    """A host that answers on the connection it was asked on has nowhere to send the
    original's approval after a restart: if the in-doubt reversal overtook the original
    ("25"), the terminal's own reversal is the only one left to release a hold that came
    after it. It goes upstream (a second reversal answered "already reversed" is better than a
    hold left behind)."""
    request = sale()
    fresh, sent = in_doubt_reversal_after_restart(request)
    fresh.respond(reversal_answer(sent, "25"), mti="0410")
    out = fresh.request(terminal_reversal(request), conn=5, mti="0400")
    assert forwards(out) and not replies(out)
    [notice] = notices(out, "terminal_reversal")
    assert notice.data["outcome"] == "forwarded"


def test_the_decline_of_a_resend_after_a_restart_carries_no_pan_the_terminal_never_sent() -> None:
    """A track-2-only sale under a dialect that echoes DE 2 (cup-pos, visa-base1): the journal
    keeps DE 2 taken from track 2 for the reversal, but the decline of a resend after a
    restart must not carry it (found by review: it did)."""
    echoes_pan = make_dialect(response_echo_fields=("2", "3", "4", "11", "41", "42", "49"))
    request = sale(de2=None, de35=TRACK2)
    h = Harness(dialect=echoes_pan)
    h.request(request)
    fresh, _ = restart(h, dialect=echoes_pan)
    out = fresh.request(request, conn=7)
    assert not forwards(out)
    [decline] = replies(out)
    assert "2" not in decline.fields and decline.fields["11"] == request["11"]


def test_a_delivered_approval_its_terminal_reversed_is_still_known_after_a_restart() -> None:
    """Open again (its terminal's reversal), and journaled with what finds its request (no
    card data): after a restart a resend of the sale is declined, not forwarded, and the
    terminal's repeat of its reversal merges with the reversal."""
    h = Harness()
    request = sale()
    h.approve(request)
    h.request(terminal_reversal(request), conn=1, mti="0400")
    [reopened] = [a for a in auth_records(h.log) if a.state is AuthState.REVERSING]
    assert "2" not in reopened.reversal_fields
    fresh, _ = restart(h)
    out = fresh.request(request, conn=4)
    assert not forwards(out) and replies(out)[0].fields["39"] == "91"
    out = fresh.request(terminal_reversal(request), conn=5, mti="0401")
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "merged"
