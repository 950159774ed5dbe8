"""After a restart, requests closed less than ``duplicates.window`` ago are still known.

The journal gives a restarted core the authorizations closed within the window (delivered,
declined, reversed) with the fields that find a resend of them, never card data. A resend or
a repeat (0201) is then answered as the old process would have answered it, never forwarded
a second time: under STAN rewrite the acquirer would take it for a new sale and approve it
again, a second hold for one purchase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from gateway.core.commands import Command
from gateway.core.records import OPEN_AUTH_STATES, AuthorizationRecord, AuthState

from .helpers import (
    PAN,
    Harness,
    answer,
    auth_records,
    forwards,
    notices,
    replies,
    reversal_answer,
    reversed_by_the_gateway,
    sale,
    sent_reversals,
    settings,
    to_terminal,
)
from .test_engine_recovery import journal, latest, reversed_recently
from .test_engine_terminal_reversal import terminal_reversal

WINDOW = 60.0  # CoreSettings().duplicate_window


def closed_recently(commands: Iterable[Command], now: float) -> list[AuthorizationRecord]:
    """What ``Journal.load_closed_since(now - window)`` hands a restarted core."""
    auths, _ = latest(commands)
    return [
        a
        for a in auths.values()
        if a.state not in OPEN_AUTH_STATES and a.updated_at >= now - WINDOW
    ]


def restart(h: Harness, after: float = 5.0, **core_args: Any) -> Harness:
    now = h.now + after
    auths, revs = journal(h.log)
    fresh = Harness(
        now=now,
        open_authorizations=auths,
        open_reversals=revs,
        reversed_recently=reversed_recently(h.log),
        closed_recently=closed_recently(h.log, now),
        next_txn_id=100,
        next_reversal_id=100,
        **core_args,
    )
    fresh.log.extend(fresh.core.recover(fresh.now))
    return fresh


def test_a_resend_of_a_delivered_approval_gets_the_approval_again_not_a_second_sale() -> None:
    h = Harness()
    request = sale()
    h.approve(request)
    fresh = restart(h)
    for mti in ("0200", "0201"):  # a resend, a repeat
        out = fresh.request(request, conn=7, mti=mti)
        assert not forwards(out) and not to_terminal(out)
        [reply] = replies(out)
        assert (reply.conn_id, reply.mti) == (7, "0210")
        assert (reply.fields["39"], reply.fields["38"]) == ("00", "A1B2C3")
        assert {reply.fields[k] for k in ("4", "7", "11", "41")} == {
            request[k] for k in ("4", "7", "11", "41")
        }
        assert "2" not in reply.fields and PAN not in repr(out)
        [seen] = notices(out, "duplicate_request")
        assert seen.data["outcome"] == "rebuilt" and seen.data["txn_id"] == 1
    assert fresh.core.stats()["authorizations_open"] == 0


def test_a_resend_of_a_declined_request_gets_its_decline_again() -> None:
    h = Harness()
    request = sale()
    h.request(request)
    h.respond(answer(request, "51"))
    fresh = restart(h)
    out = fresh.request(request, conn=7)
    assert not forwards(out)
    [reply] = replies(out)
    assert reply.fields["39"] == "51" and "38" not in reply.fields


def test_a_resend_of_a_reversed_request_is_declined_and_its_history_kept() -> None:
    h = Harness()
    request = sale()
    reversed_by_the_gateway(h, request)
    fresh = restart(h)
    out = fresh.request(request, conn=7, mti="0201")
    assert not forwards(out) and not sent_reversals(out)
    [decline] = replies(out)
    assert decline.fields["39"] == "91"
    # One authorization for both: its terminal's reversal is still answered by the gateway.
    out = fresh.request(terminal_reversal(request), conn=8, mti="0400")
    assert not forwards(out) and not sent_reversals(out)
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "answered"


def delivered_under_stan_rewrite_then_restart(request: dict[str, str]) -> tuple[Harness, str]:
    """``request`` is approved and delivered under STAN rewrite, then the gateway restarts;
    returns the new process and the STAN the acquirer saw."""
    rules = settings(stan_mode="rewrite")
    h = Harness(rules)
    [forward] = forwards(h.request(request))
    acquirer_stan = forward.replace["11"]
    delivery = to_terminal(h.respond(answer({**request, "11": acquirer_stan})))
    h.delivered(delivery[0].delivery_ref)
    return restart(h, settings=rules), acquirer_stan


def test_under_stan_rewrite_the_answer_carries_the_terminals_stan() -> None:
    request = sale("000042")
    fresh, acquirer_stan = delivered_under_stan_rewrite_then_restart(request)
    [reply] = replies(fresh.request(request, conn=7))
    assert reply.fields["11"] == "000042" and reply.fields["39"] == "00"
    # The acquirer repeating its answer holds nothing more: no alert.
    out = fresh.respond(answer({**request, "11": acquirer_stan}))
    [unmatched] = notices(out, "unmatched_response")
    assert unmatched.data["reason"] == "already_answered" and not unmatched.data["may_hold"]
    # The acquirer STAN stays taken while the old answer may still come.
    [new] = forwards(fresh.request(sale("000043"), conn=8))
    assert new.replace["11"] != acquirer_stan


def test_a_terminals_reversal_of_a_delivered_sale_names_the_stan_the_acquirer_saw() -> None:
    request = sale("000042")
    fresh, acquirer_stan = delivered_under_stan_rewrite_then_restart(request)
    out = fresh.request(terminal_reversal(request), conn=8, mti="0400")
    [upstream] = forwards(out)
    assert upstream.replace["90"][4:10] == acquirer_stan
    assert notices(out, "terminal_reversal")[0].data["outcome"] == "forwarded"


def test_a_new_sale_reusing_the_stan_and_a_resend_after_the_window_are_forwarded() -> None:
    h = Harness()
    request = sale()
    h.approve(request)
    fresh = restart(h)
    assert forwards(fresh.request({**request, "7": "0908070000"}, conn=7))  # another sale
    fresh.advance(WINDOW)
    assert forwards(fresh.request(request, conn=8))  # forgotten, as by a running gateway


def test_records_closed_before_the_window_or_without_fields_are_not_remembered() -> None:
    h = Harness()
    request = sale()
    h.approve(request)
    assert forwards(restart(h, after=WINDOW + 1).request(request, conn=7))
    # journaled by a version that kept no fields of a closed authorization
    [closed] = [a for a in auth_records(h.log) if a.state is AuthState.DELIVERED]
    bare = dataclasses.replace(closed, reversal_fields={})
    older = Harness(now=h.now + 5, closed_recently=[bare], next_txn_id=100)
    assert forwards(older.request(request, conn=7))


def test_an_approval_of_an_original_reversed_not_found_before_the_restart_is_alerted() -> None:
    """The reversal overtook its original ("25") before the restart; the approval reaches the
    new process. The closed record keeps no PAN to reverse with: operations must hear of it
    (``UnmatchedApproval``), as when it matched nothing."""
    h = Harness()
    request = sale()
    h.request(request)
    [sent] = sent_reversals(h.advance(15))
    h.respond(reversal_answer(sent, "25"), mti="0410")
    fresh = restart(h)
    out = fresh.respond(answer(request))
    assert not to_terminal(out) and not sent_reversals(out)
    [alert] = notices(out, "unmatched_response")
    assert alert.data["reason"] == "reversed_before_restart" and alert.data["may_hold"]
