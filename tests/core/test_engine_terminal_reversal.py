"""Terminal-initiated reversals: exactly one reversal per original, whoever asks."""

from __future__ import annotations

from gateway.core.records import AuthState, ReversalReason, ReversalState
from gateway.core.reversal import original_data_elements
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
    reversal_records,
    reversed_by_the_gateway,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)


def terminal_reversal(
    original: dict[str, str], stan: str = "009001", **extra: str
) -> dict[str, str]:
    """A terminal's 0400 naming its original by DE 90 (a new STAN of its own)."""
    fields = {k: original[k] for k in ("2", "3", "4", "32", "41", "42", "49") if k in original}
    fields["11"] = stan
    fields["7"] = "0908064600"
    fields["39"] = "17"
    fields["90"] = original_data_elements(
        "0200", original["11"], original.get("7"), original.get("32"), original.get("33")
    )
    fields.update(extra)
    return fields


def cup_reversal(original: dict[str, str]) -> dict[str, str]:
    """A CUP terminal's 0400: the original's own STAN, no DE 90, reason in DE 39."""
    fields = {k: original[k] for k in ("2", "3", "4", "11", "41", "42", "49")}
    fields["39"] = "98"
    return fields


def test_terminal_reversal_of_an_original_in_flight_is_forwarded_and_becomes_the_reversal() -> None:
    h = Harness()
    original = sale()
    h.request(original, conn=1)
    frame = h.frame("terminal-0400")
    out = h.request(terminal_reversal(original), conn=1, mti="0400", frame=frame)
    [forward] = forwards(out)
    assert forward.frame == frame and forward.link_id == 1
    [rev] = [r for r in reversal_records(out) if r.state is ReversalState.SENT]
    assert rev.reason is ReversalReason.TERMINAL and rev.stan == "009001"
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSING]
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "forwarded"
    # the original's late answer is never forwarded, its timeout declines nobody
    out = h.respond(answer(original))
    assert not to_terminal(out) and notices(out, "late_response")
    # the acquirer's 0410 goes to the terminal byte for byte
    ack = h.frame("0410")
    out = h.respond({"11": "009001", "41": "TERM0001", "39": "00"}, mti="0410", frame=ack)
    assert [(d.conn_id, d.frame) for d in to_terminal(out)] == [(1, ack)]
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSED]
    assert not replies(h.advance(15))  # the original's timeout declines nobody
    # no automatic reversal is ever added
    assert not sent_reversals(h.run_until(h.now + 86_400))


def test_terminal_reversal_after_the_gateways_own_was_acknowledged_is_answered_locally() -> None:
    h = Harness()
    original = sale()
    reversed_by_the_gateway(h, original)
    out = h.request(terminal_reversal(original), conn=5, mti="0400")
    assert not forwards(out) and not sent_reversals(out) and not records(out)
    [reply] = replies(out)
    assert (reply.conn_id, reply.mti, reply.fields["39"]) == (5, "0410", "00")
    assert reply.fields["11"] == "009001" and reply.fields["41"] == "TERM0001"
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "answered"


def test_after_a_not_found_reversal_the_terminals_own_goes_upstream_once_forgotten() -> None:
    """The gateway's reversal was answered "25" (nothing released). While the request is
    remembered, a late approval is reversed again by the gateway, so the terminal's own 0400
    is answered; once it is forgotten, a late approval goes unmatched and may hold: the
    terminal's reversal then goes upstream as the reversal of that original."""
    h = Harness()
    original = sale()
    reversed_by_the_gateway(h, original, "25")
    out = h.request(terminal_reversal(original), conn=5, mti="0400")
    assert replies(out)[0].fields["39"] == "00" and not forwards(out)
    h.advance(120)  # past the duplicate window: the request is forgotten
    assert notices(h.respond(answer(original)), "unmatched_response")  # it holds now
    frame = h.frame("terminal-0401")
    out = h.request(terminal_reversal(original), conn=5, mti="0401", frame=frame)
    assert [f.frame for f in forwards(out)] == [frame] and not replies(out)
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "forwarded"
    [rev] = [r for r in reversal_records(out) if r.state is ReversalState.SENT]
    assert rev.reason is ReversalReason.TERMINAL  # the gateway repeats it until acknowledged


def not_found_then_forgotten(h: Harness, original: dict[str, str], acquirer_stan: str) -> None:
    """The gateway's reversal is answered "25", the request is forgotten, then the original's
    approval arrives: unmatched, and it holds."""
    reversed_by_the_gateway(h, original, "25")
    h.advance(120)
    late = {"11": acquirer_stan, "41": original["41"], "39": "00", "38": "A1B2C3"}
    assert notices(h.respond(late), "unmatched_response")


def test_after_a_forgotten_not_found_the_terminals_reversal_names_what_the_acquirer_saw() -> None:
    """STAN rewrite: the acquirer knows the original by the gateway's STAN (000300), so the
    terminal's reversal that goes upstream must name that one, in DE 90 or (CUP) DE 11."""
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    original = sale("000001")
    not_found_then_forgotten(h, original, "000300")
    out = h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0400")
    [forward] = forwards(out)
    assert forward.replace["90"][4:10] == "000300"
    cup_like = make_dialect(
        ReversalRules(stan="original", original_data="none"),
        match_fields=("41", "42", "11"),
        duplicate_fields=("41", "42", "11", "4"),
    )
    h = Harness(settings(stan_mode="rewrite"), cup_like, stan_seed=300)
    not_found_then_forgotten(h, original, "000300")
    [forward] = forwards(h.request(cup_reversal(original), conn=5, mti="0400"))
    assert forward.replace["11"] == "000300"


def test_terminal_reversal_merges_with_an_owed_reversal() -> None:
    h = Harness()
    original = sale()
    h.request(original)
    [sent] = sent_reversals(h.advance(15))
    out = h.request(terminal_reversal(original), conn=5, mti="0400")
    assert not forwards(out) and not sent_reversals(out) and not replies(out)
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "merged"
    out = h.respond({"11": sent.fields["11"], "41": "TERM0001", "39": "00"}, mti="0410")
    [reply] = replies(out)
    assert (reply.conn_id, reply.mti, reply.fields["39"]) == (5, "0410", "00")


def test_terminal_reversal_merges_with_a_reversal_waiting_for_a_link() -> None:
    h = Harness()
    original = sale()
    h.request(original)
    h.link_down(1)
    out = h.request(terminal_reversal(original), conn=5, mti="0400")
    assert not forwards(out) and not replies(out)
    h.link_up(1)
    [sent] = sent_reversals(h.advance(0))
    out = h.respond({"11": sent.fields["11"], "39": "00"}, mti="0410")
    assert replies(out)[0].conn_id == 5


def test_terminal_reversal_of_a_delivered_approval_is_forwarded_once() -> None:
    h = Harness()
    original = sale()
    h.approve(original)
    out = h.request(terminal_reversal(original), conn=1, mti="0400")
    assert len(forwards(out)) == 1
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSING]
    # its repeat is merged, not forwarded again
    out = h.request(terminal_reversal(original), conn=1, mti="0401")
    assert not forwards(out) and not sent_reversals(out)
    out = h.respond({"11": "009001", "41": "TERM0001", "39": "00"}, mti="0410")
    assert len(to_terminal(out)) == 1  # one answer for the terminal
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSED]


def test_unanswered_terminal_reversal_is_repeated_by_the_gateway() -> None:
    h = Harness()
    original = sale()
    h.approve(original)
    h.request(terminal_reversal(original), conn=1, mti="0400")
    out = h.run_until(h.now + 15)  # reversal_timeout 10 s + 5 s
    [again] = sent_reversals(out)
    assert again.mti == "0401" and again.fields["11"] == "009001"
    assert again.fields["39"] == "17"  # the terminal's reason
    out = h.respond({"11": "009001", "41": "TERM0001", "39": "00"}, mti="0410")
    [reply] = replies(out)  # built by the gateway: the terminal's own message timed out
    assert reply.conn_id == 1 and reply.fields["39"] == "00"


def test_non_resolving_answer_to_a_terminal_reversal_is_forwarded_and_repeated() -> None:
    h = Harness()
    original = sale()
    h.approve(original)
    h.request(terminal_reversal(original), conn=1, mti="0400")
    out = h.respond({"11": "009001", "41": "TERM0001", "39": "91"}, mti="0410")
    assert len(to_terminal(out)) == 1
    assert reversal_records(out)[0].state is ReversalState.OWED
    assert sent_reversals(h.run_until(h.now + 5))


def test_unknown_original_is_passed_through() -> None:
    h = Harness()
    stranger = sale("000555", "OTHER")
    out = h.request(terminal_reversal(stranger), conn=3, mti="0400")
    assert len(forwards(out)) == 1 and not records(out)
    out = h.respond({"11": "009001", "41": "OTHER", "39": "25"}, mti="0410")
    assert [d.conn_id for d in to_terminal(out)] == [3]
    # and its repeat while in flight is a duplicate
    h.request(terminal_reversal(stranger, stan="009002"), conn=3, mti="0400")
    out = h.request(terminal_reversal(stranger, stan="009002"), conn=3, mti="0401")
    assert not forwards(out) and notices(out, "duplicate_request")


def test_de90_must_match_time_and_terminal() -> None:
    h = Harness()
    original = sale()
    h.approve(original)
    wrong_time = terminal_reversal({**original, "7": "0101000000"})
    out = h.request(wrong_time, conn=1, mti="0400")
    assert not records(out)  # not tied: passed through
    other_terminal = terminal_reversal({**original, "41": "TERM0002"}, stan="009003")
    assert not records(h.request(other_terminal, conn=1, mti="0400"))


def test_cup_same_stan_reversal_is_tied_by_stan_and_amount() -> None:
    rules = ReversalRules(stan="original")
    h = Harness(dialect=make_dialect(reversal=rules))
    original = sale("000403")
    h.approve(original)
    out = h.request(cup_reversal(original), conn=1, mti="0400")
    [rev] = [r for r in reversal_records(out) if r.state is ReversalState.SENT]
    assert rev.reason is ReversalReason.TERMINAL and rev.stan == "000403"
    # another amount with the same STAN is not that original
    h2 = Harness(dialect=make_dialect(reversal=rules))
    h2.approve(original)
    out = h2.request({**cup_reversal(original), "4": "000000000001"}, conn=1, mti="0400")
    assert not records(out)


def test_a_terminal_id_shared_by_two_merchants_ties_each_reversal_to_its_own() -> None:
    """CUP: a terminal id is unique only within its merchant (DE 42 is a match field). Two
    merchants' terminals with one id and one STAN: each 0400 reverses its own original."""
    rules = ReversalRules(stan="original")
    cup_like = make_dialect(
        reversal=rules, match_fields=("41", "42", "11"), duplicate_fields=("41", "42", "11", "4")
    )
    h = Harness(dialect=cup_like)
    ours = {**sale("000403"), "42": "850100082410999"}
    theirs = {**sale("000403"), "42": "850100082410002"}
    h.request(ours, conn=2)
    h.request(theirs, conn=1)
    out = h.request(cup_reversal(ours), conn=2, mti="0400")
    [rev] = [r for r in reversal_records(out) if r.state is ReversalState.SENT]
    assert rev.txn_id == 1  # ours, not the other merchant's request in flight
    out = h.respond(answer(theirs, de42=theirs["42"]))
    assert [c.conn_id for c in to_terminal(out)] == [1]  # their approval still reaches them


def test_terminal_reversal_with_no_link_is_owed_and_declined() -> None:
    h = Harness()
    original = sale()
    h.approve(original)
    h.link_down(1)
    out = h.request(terminal_reversal(original), conn=1, mti="0400")
    assert replies(out)[0].fields["39"] == "91" and replies(out)[0].mti == "0410"
    assert reversal_records(out)[0].reason is ReversalReason.TERMINAL
    h.link_up(1)
    [sent] = sent_reversals(h.advance(0))
    assert sent.mti == "0400" and sent.fields["39"] == "17"


def test_terminal_reversal_requeues_a_failed_reversal() -> None:
    h = Harness(settings(max_attempts=1))
    original = sale()
    h.request(original)
    h.run_until(h.now + 30)
    assert h.core.stats()["reversals_failed"] == 1
    out = h.request(terminal_reversal(original), conn=4, mti="0400")
    assert [r.state for r in reversal_records(out)] == [ReversalState.OWED]
    [sent] = sent_reversals(h.advance(0))
    out = h.respond({"11": sent.fields["11"], "39": "00"}, mti="0410")
    assert replies(out)[0].conn_id == 4


def test_rewrite_mode_rewrites_the_terminal_reversal_towards_the_acquirer() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    original = sale("000001")
    h.request(original)  # acquirer STAN 000300
    delivery = to_terminal(h.respond({"11": "000300", "39": "00", "38": "X"}))[0]
    h.delivered(delivery.delivery_ref)
    out = h.request(terminal_reversal(original, stan="000002"), conn=1, mti="0400")
    [forward] = forwards(out)
    assert forward.replace["11"] == "000301"
    assert forward.replace["90"][4:10] == "000300"
    out = h.respond({"11": "000301", "39": "00"}, mti="0410")
    assert to_terminal(out)[0].replace == {"11": "000002"}
