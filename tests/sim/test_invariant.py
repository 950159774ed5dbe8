"""The invariant checker: what the host holds against what terminals were told."""

from __future__ import annotations

import pytest

from gateway.sim.invariant import check
from gateway.sim.ledger import Ledger
from gateway.sim.terminals import Outcome, TxnRecord


def told(
    stan: str, outcome: Outcome, amount: str = "000000001000", rrn: str | None = None
) -> TxnRecord:
    return TxnRecord(
        terminal_id="TERM0001",
        mti="0200",
        stan=stan,
        amount=amount,
        transmission_time="1125103000",
        rrn=rrn,
        sent_at=100.0,
        outcome=outcome,
        response_code="00" if outcome is Outcome.APPROVED else None,
    )


def host_fields(stan: str, amount: str = "000000001000", rrn: str | None = None) -> dict[str, str]:
    fields = {"3": "000000", "4": amount, "7": "1125103000", "11": stan, "41": "TERM0001"}
    if rrn:
        fields["37"] = rrn
    return fields


def reversal_of(stan: str, reversal_stan: str) -> dict[str, str]:
    return {
        "4": "000000001000",
        "7": "1125104000",
        "11": reversal_stan,
        "41": "TERM0001",
        "90": "0200" + stan + "1125103000" + "0" * 22,
    }


def test_delivered_approvals_and_reversed_no_answers_are_clean() -> None:
    ledger = Ledger()
    ledger.approve("0200", host_fields("000001"), "A1", now=1.0)
    ledger.approve("0200", host_fields("000002"), "A2", now=1.0)
    ledger.reverse("0400", reversal_of("000002", "000900"), now=2.0)
    records = [told("000001", Outcome.APPROVED), told("000002", Outcome.NO_ANSWER)]

    violations = check(ledger, records)
    assert violations.ok, violations.describe()
    assert violations.describe() == "no violations"


def test_a_hold_nobody_was_told_about_is_reported() -> None:
    ledger = Ledger()
    ledger.approve("0200", host_fields("000001"), "A1", now=1.0)
    ledger.approve("0200", host_fields("000002"), "A2", now=1.0)
    ledger.approve("0200", host_fields("000003"), "A3", now=1.0)
    records = [
        told("000001", Outcome.APPROVED),
        told("000002", Outcome.NO_ANSWER),
        told("000003", Outcome.DECLINED),  # the gateway told it "declined", yet it is held
    ]

    violations = check(ledger, records)
    assert not violations.ok
    assert [hold.key.stan for hold in violations.unreported_holds] == ["000002", "000003"]
    assert "held, never told approved" in violations.describe()
    assert not violations.reversed_twice
    assert not violations.released_approvals


def test_a_released_approval_is_reported_separately() -> None:
    ledger = Ledger()
    ledger.approve("0200", host_fields("000001"), "A1", now=1.0)
    ledger.reverse("0400", reversal_of("000001", "000900"), now=2.0)
    violations = check(ledger, [told("000001", Outcome.APPROVED)])

    assert [record.stan for record, _ in violations.released_approvals] == ["000001"]
    assert not violations.ok
    assert violations.ok_after_crash


def test_an_original_reversed_twice_is_reported() -> None:
    ledger = Ledger()
    ledger.approve("0200", host_fields("000001"), "A1", now=1.0)
    ledger.reverse("0400", reversal_of("000001", "000900"), now=2.0)
    ledger.reverse("0400", reversal_of("000001", "000901"), now=3.0)
    violations = check(ledger, [told("000001", Outcome.NO_ANSWER)])

    assert [hold.key.stan for hold in violations.reversed_twice] == ["000001"]
    assert not violations.ok_after_crash


def test_an_approval_the_host_never_gave_is_reported() -> None:
    ledger = Ledger()
    violations = check(ledger, [told("000001", Outcome.APPROVED)])
    assert [record.stan for record in violations.approvals_without_hold] == ["000001"]
    assert not violations.ok


def test_amounts_must_agree() -> None:
    ledger = Ledger()
    ledger.approve("0200", host_fields("000001", amount="000000001000"), "A1", now=1.0)
    violations = check(ledger, [told("000001", Outcome.APPROVED, amount="000000002000")])
    assert len(violations.unreported_holds) == 1
    assert len(violations.approvals_without_hold) == 1


def test_matching_on_rrn_survives_a_stan_rewrite() -> None:
    ledger = Ledger()
    # The gateway rewrote DE 11 towards the acquirer; DE 37 passed through.
    ledger.approve("0200", host_fields("900001", rrn="512510000001"), "A1", now=1.0)
    records = [told("000001", Outcome.APPROVED, rrn="512510000001")]

    assert not check(ledger, records).ok
    by_rrn = check(ledger, records, match_on=("mti", "terminal_id", "amount", "rrn"))
    assert by_rrn.ok, by_rrn.describe()


def test_unknown_match_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot match on"):
        check(Ledger(), [], match_on=("pan",))


def test_violations_serialise_without_card_data() -> None:
    ledger = Ledger()
    ledger.approve("0200", {**host_fields("000001"), "2": "4761739001010010"}, "A1", now=1.0)
    violations = check(ledger, [])
    text = str(violations.to_dict()) + violations.describe()
    assert "4761739001010010" not in text
    assert "476173******0010" in str(violations.to_dict())
