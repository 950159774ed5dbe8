"""STAN rewrite: a terminal's reversal of a delivered sale the gateway no longer remembers.

The acquirer knows the sale by the gateway's STAN. Past the duplicate window the core has
forgotten the sale, so it asks the journal (``FindAuthorizations``) and, given the sale's delivered
record (``AuthorizationsFound``), sends the terminal's reversal upstream naming that STAN. Forwarded
as it was, it would be answered "original not found" and the hold would stay.
"""

from __future__ import annotations

from gateway.core.commands import Command, FindAuthorizations, ForwardToAcquirer, ForwardToTerminal
from gateway.core.events import AuthorizationsFound
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
    sale's last journal record (what ``Journal.find_authorizations`` would read back)."""
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
    event = AuthorizationsFound(record.terminal_id or "", record.stan or "", (record, *others))
    return h._record(h.core.handle(event, h.now))


def test_a_terminals_reversal_of_a_forgotten_sale_waits_for_the_journal() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    original = sale("000001")
    record = delivered_then_forgotten(h, original)
    assert "2" not in record.reversal_fields  # what the journal kept holds no card data
    out = h.request(terminal_reversal(original, stan="000002"), conn=5, mti="0400")
    assert of_type(out, FindAuthorizations) == [FindAuthorizations("TERM0001", "000001")]
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
    assert not forwards(out) and not of_type(out, FindAuthorizations)
    assert replies(out)[0].fields["39"] == "00"


def test_a_cup_terminals_reversal_of_a_forgotten_sale_carries_the_acquirer_stan() -> None:
    h = Harness(settings(stan_mode="rewrite"), cup_like_dialect(), stan_seed=300)
    original = sale("000001")
    record = delivered_then_forgotten(h, original)
    out = h.request(cup_reversal(original), conn=5, mti="0400")
    assert of_type(out, FindAuthorizations) == [FindAuthorizations("TERM0001", "000001")]
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
    out = h._record(h.core.handle(AuthorizationsFound("TERM0001", "000001"), h.now))
    [forward] = forwards(out)
    assert forward.frame == frame and "90" not in forward.replace
    assert not reversal_records(out) and not of_type(out, FindAuthorizations)  # asked once


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
    assert len(forwards(out)) == 1 and not of_type(out, FindAuthorizations)


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


def test_a_cup_reversal_never_takes_an_older_days_sale_for_todays() -> None:
    """A terminal that starts its STANs again each day has one sale a day on a STAN, often of
    the same amount. Without DE 90 the reversal names the newest authorization on its STAN:
    when today's was declined, or reversed by the gateway over an hour ago, yesterday's
    delivered sale is not reversed in its place. It goes upstream as it came."""
    for todays_end in ("declined", "reversed"):
        h = Harness(settings(stan_mode="rewrite"), cup_like_dialect(), stan_seed=300)
        yesterday = delivered_then_forgotten(h, sale("000001", de7="0907101010"))
        today = sale("000001")
        sent = h.request(today, conn=2)
        [today_record] = auth_records(sent)
        if todays_end == "declined":
            h.respond(answer({**today, "11": forwards(sent)[0].replace["11"]}, "51"))
            h.advance(120)
        else:
            [own] = sent_reversals(h.advance(15))  # timed out: the gateway reverses it
            h.respond({"11": own.fields["11"], "41": "TERM0001", "39": "00"}, mti="0410")
            h.advance(2 * 3600)  # past history_window: forgotten too
        today_record = [r for r in auth_records(h.log) if r.txn_id == today_record.txn_id][-1]
        frame = h.frame("terminal-0400")
        h.request(cup_reversal(today), conn=5, mti="0400", frame=frame)
        out = found(h, today_record, yesterday)
        assert not reversal_records(out), todays_end
        [forward] = forwards(out)
        assert forward.frame == frame and forward.replace.get("11") != yesterday.acquirer_stan


def test_a_cup_reversal_ties_only_a_sale_delivered_within_the_history_window() -> None:
    """Its newest sale on the STAN, of its amount, but delivered more than an hour before:
    rather another day's sale than a stored reversal of it. Forwarded as it came."""
    h = Harness(settings(stan_mode="rewrite"), cup_like_dialect(), stan_seed=300)
    original = sale("000001")
    record = delivered_then_forgotten(h, original)
    h.advance(3600)
    h.request(cup_reversal(original), conn=5, mti="0400")
    out = found(h, record)
    assert not reversal_records(out) and len(forwards(out)) == 1


def test_a_connection_that_hangs_up_with_two_lookups_pending_leaves_nothing_behind() -> None:
    h = Harness(settings(stan_mode="rewrite"), stan_seed=300)
    first, second = sale("000001"), sale("000002", de7="0908064520")
    records = [delivered_then_forgotten(h, first), delivered_then_forgotten(h, second)]
    h.request(terminal_reversal(first, stan="000003"), conn=5, mti="0400")
    h.request(terminal_reversal(second, stan="000004"), conn=5, mti="0400")
    h.closed(5)
    forwarded = [of_type(found(h, record), ForwardToAcquirer)[0] for record in records]
    # neither reversal waits on the closed connection: their answers go nowhere
    assert all(not rev.waiters and rev.forwarded is None for rev in h.core._reversals.values())
    for forward in forwarded:
        out = h.respond({"11": forward.replace["11"], "41": "TERM0001", "39": "00"}, mti="0410")
        assert not to_terminal(out) and not replies(out)
        assert [r.state for r in auth_records(out)] == [AuthState.REVERSED]
    h.advance(2 * 3600)
    assert not h.core._closed_while_finding and 5 not in h.core._conn_waits
