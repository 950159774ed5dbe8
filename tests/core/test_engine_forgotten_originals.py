"""STAN rewrite: a terminal's reversal of a delivered sale the gateway no longer remembers.

The acquirer knows the sale by the gateway's STAN. Past the duplicate window the core has
forgotten the sale, so it asks the journal (``FindDelivered``) and, given the sale's delivered
record (``DeliveredFound``), sends the terminal's reversal upstream naming that STAN. Forwarded
as it was, it would be answered "original not found" and the hold would stay.
"""

from __future__ import annotations

from gateway.core.commands import Command, FindDelivered, ForwardToAcquirer, ForwardToTerminal
from gateway.core.events import DeliveredFound
from gateway.core.records import AuthorizationRecord, AuthState, ReversalReason, ReversalState
from gateway.wire.dialect import ReversalRules

from .helpers import (
    Harness,
    answer,
    auth_records,
    forwards,
    make_dialect,
    notices,
    of_type,
    replies,
    reversal_records,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)
from .test_engine_terminal_reversal import cup_reversal, terminal_reversal

ACQUIRER_STAN = "000300"  # the gateway's first STAN with stan_seed=300


def cup_like_dialect() -> object:
    return make_dialect(
        ReversalRules(stan="original", original_data="none"),
        match_fields=("41", "42", "11"),
        duplicate_fields=("41", "42", "11", "4"),
    )


def delivered_then_forgotten(h: Harness, original: dict[str, str]) -> AuthorizationRecord:
    """Approved under STAN rewrite, delivered, then past the duplicate window; returns the
    sale's last journal record (what ``Journal.find_delivered`` would read back)."""
    sent = h.request(original, conn=1)
    [forward] = forwards(sent)
    txn_id = auth_records(sent)[0].txn_id
    acquirer_stan = forward.replace["11"]
    got = h.respond(answer({**original, "11": acquirer_stan}))
    [delivery] = of_type(got, ForwardToTerminal)
    h.delivered(delivery.delivery_ref, True)
    h.advance(120)
    record = [r for r in auth_records(h.log) if r.txn_id == txn_id][-1]
    assert record.state is AuthState.DELIVERED and record.acquirer_stan == acquirer_stan
    return record


def found(h: Harness, record: AuthorizationRecord, *others: AuthorizationRecord) -> list[Command]:
    event = DeliveredFound(record.terminal_id or "", record.stan or "", (record, *others))
    return h._record(h.core.handle(event, h.now))


def test_a_terminals_reversal_of_a_forgotten_sale_waits_for_the_journal() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    original = sale("000001")
    record = delivered_then_forgotten(h, original)
    assert "2" not in record.reversal_fields  # what the journal kept holds no card data
    out = h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0400")
    assert of_type(out, FindDelivered) == [FindDelivered("TERM0001", "000001")]
    assert not forwards(out) and not replies(out)
    # its repeat waits for the same lookup: no second one
    out = h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0401")
    assert not out

    out = found(h, record)
    [forward] = forwards(out)
    assert forward.replace["90"][4:10] == ACQUIRER_STAN  # as the acquirer knows the sale
    assert forward.replace["11"] != "000002"  # and a STAN of the gateway's own
    [rev] = [r for r in reversal_records(out) if r.state is ReversalState.SENT]
    assert rev.reason is ReversalReason.TERMINAL and rev.txn_id == record.txn_id
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSING]
    assert [n.data["outcome"] for n in notices(out, "terminal_reversal")] == [
        "forwarded",
        "merged",
    ]
    # the acquirer's 0410 reaches the terminal, and the sale is reversed
    out = h.respond({"11": forward.replace["11"], "41": "TERM0001", "39": "00"}, mti="0410")
    assert [d.conn_id for d in to_terminal(out)] == [5]
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSED]
    # later, the terminal's repeat of it is answered by the gateway, not sent again
    out = h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0401")
    assert not forwards(out) and not of_type(out, FindDelivered)
    assert replies(out)[0].fields["39"] == "00"


def test_a_cup_terminals_reversal_of_a_forgotten_sale_carries_the_acquirer_stan() -> None:
    h = Harness(settings(stan_mode="rewrite"), cup_like_dialect(), stan_seed=300)
    original = sale("000001")
    record = delivered_then_forgotten(h, original)
    out = h.request(cup_reversal(original), conn=5, mti="0400")
    assert of_type(out, FindDelivered) == [FindDelivered("TERM0001", "000001")]
    [forward] = forwards(found(h, record))
    assert forward.replace["11"] == ACQUIRER_STAN


def test_the_sale_the_reversal_names_is_picked_among_the_stans_earlier_sales() -> None:
    """A terminal that starts its STANs again each day has one sale a day on a STAN: DE 90's
    transmission time tells which one the reversal is for."""
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    yesterday = sale("000001", de7="0907101010")
    older = delivered_then_forgotten(h, yesterday)
    today = sale("000001")
    record = delivered_then_forgotten(h, today)
    assert record.txn_id != older.txn_id
    h.request(terminal_reversal(yesterday, stan="000002"), conn=5, mti="0400")
    out = found(h, record, older)
    [rev] = [r for r in reversal_records(out) if r.state is ReversalState.SENT]
    assert rev.txn_id == older.txn_id
    assert forwards(out)[0].replace["90"][4:10] == older.acquirer_stan


def test_without_a_delivered_sale_in_the_journal_the_reversal_goes_as_it_is() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    original = sale("000001")
    frame = h.frame("terminal-0400")
    h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0400", frame=frame)
    out = h._record(h.core.handle(DeliveredFound("TERM0001", "000001"), h.now))
    [forward] = forwards(out)
    assert forward.frame == frame and "90" not in forward.replace
    assert not reversal_records(out) and not of_type(out, FindDelivered)  # asked once


def test_a_record_the_core_still_remembers_is_not_taken_twice() -> None:
    """The reversal names a sale whose DE 7 matches nothing remembered; the journal gives back
    a sale the core still remembers (a different one on that STAN): it stays one object."""
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    remembered = sale("000001")
    [forward] = forwards(h.request(remembered, conn=1))
    [record] = auth_records(h.log)
    h.request(
        terminal_reversal(sale("000001", de7="0907101010"), stan="000002"), conn=5, mti="0400"
    )
    out = found(h, record)
    assert not reversal_records(out) and len(forwards(out)) == 1  # forwarded as it is
    # the sale in flight is untouched: its approval still reaches its terminal
    got = h.respond(answer({**remembered, "11": forward.replace["11"]}))
    assert [d.conn_id for d in to_terminal(got)] == [1]


def test_passthrough_needs_no_lookup() -> None:
    """The acquirer knows the sale by the terminal's own STAN: forwarded as it is."""
    h = Harness(stan_seed=300)
    original = sale("000001")
    h.request(original, conn=1)
    h.respond(answer(original))
    h.advance(120)
    out = h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0400")
    assert len(forwards(out)) == 1 and not of_type(out, FindDelivered)


def test_a_terminal_that_hangs_up_during_the_lookup_still_has_its_sale_reversed() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    original = sale("000001")
    record = delivered_then_forgotten(h, original)
    h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0400")
    h.closed(5)
    out = found(h, record)
    [forward] = of_type(out, ForwardToAcquirer)
    assert forward.replace["90"][4:10] == ACQUIRER_STAN
    # nobody waits for the answer: it goes nowhere, and the sale is reversed
    out = h.respond({"11": forward.replace["11"], "41": "TERM0001", "39": "00"}, mti="0410")
    assert not to_terminal(out) and not replies(out)
    assert [r.state for r in auth_records(out)] == [AuthState.REVERSED]
    assert 5 not in h.core._conn_waits


def test_unanswered_it_is_repeated_by_the_gateway_like_its_own() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    original = sale("000001")
    record = delivered_then_forgotten(h, original)
    h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0400")
    [forward] = forwards(found(h, record))
    repeats = sent_reversals(h.run_until(h.now + 60))
    assert repeats and all(r.mti == "0401" for r in repeats)
    assert {r.fields["90"][4:10] for r in repeats} == {ACQUIRER_STAN}
    assert all("2" in r.fields and "35" not in r.fields for r in repeats)  # a PAN, no track
    assert forward.replace["11"] == repeats[0].fields["11"]
