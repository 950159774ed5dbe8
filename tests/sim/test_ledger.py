"""The ledger of held funds: hold, release once, repeats, duplicates, unknown originals."""

from __future__ import annotations

import json

from gateway.sim.ledger import Ledger, OriginalKey, ReversalOutcome

PAN = "4761739001010010"


def sale(stan: str = "000101", amount: str = "000000001500", **extra: str) -> dict[str, str]:
    fields = {
        "2": PAN,
        "3": "000000",
        "4": amount,
        "7": "1125103000",
        "11": stan,
        "37": "512510000101",
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "49": "840",
    }
    fields.update(extra)
    return fields


def de90(mti: str, stan: str, de7: str) -> str:
    return mti + stan + de7 + "0" * 22


def reversal(stan: str, original: dict[str, str], **extra: str) -> dict[str, str]:
    fields = {
        "2": PAN,
        "3": original["3"],
        "4": original["4"],
        "7": "1125103100",
        "11": stan,
        "41": original["41"],
        "90": de90("0200", original["11"], original.get("7", "0" * 10)),
    }
    fields.update(extra)
    return fields


def test_an_approval_holds_its_amount() -> None:
    ledger = Ledger()
    hold = ledger.approve("0200", sale(), "123456", now=100.0)

    assert hold.key == OriginalKey("0200", "TERM0001", "000101", "1125103000", 1500)
    assert not hold.released
    summary = ledger.summary()
    assert summary["holds_open"] == 1
    assert summary["held_amount"] == 1500
    assert summary["approved"] == 1


def test_a_reversal_with_de90_releases_once_and_a_second_is_a_duplicate() -> None:
    ledger = Ledger()
    original = sale()
    ledger.approve("0200", original, "123456", now=100.0)

    first, hold = ledger.reverse("0400", reversal("000900", original), now=101.0)
    assert first is ReversalOutcome.RELEASED
    assert hold is not None and hold.released and hold.released_at == 101.0

    # A distinct second reversal (new STAN, new DE 7) of the same original: released nothing.
    second, again = ledger.reverse(
        "0400", reversal("000901", original, **{"7": "1125103200"}), 102.0
    )
    assert second is ReversalOutcome.DUPLICATE
    assert again is hold
    assert hold.reversals == 2 and hold.duplicate_reversals == 1 and hold.reversed_twice
    summary = ledger.summary()
    assert summary["held_amount"] == 0
    assert summary["released"] == 1
    assert summary["released_amount"] == 1500
    assert summary["reversals_duplicate"] == 1
    assert summary["reversed_twice"] == 1


def test_repeats_of_the_releasing_reversal_are_not_duplicates() -> None:
    ledger = Ledger()
    original = sale()
    ledger.approve("0200", original, "123456", now=100.0)
    message = reversal("000900", original)
    assert ledger.reverse("0400", message, 101.0)[0] is ReversalOutcome.RELEASED
    # The 0410 was lost: the gateway sends a 0401 repeat, and the same 0400 bytes once more.
    assert ledger.reverse("0401", message, 102.0)[0] is ReversalOutcome.REPEAT
    assert ledger.reverse("0400", message, 103.0)[0] is ReversalOutcome.REPEAT

    hold = ledger.holds[0]
    assert hold.reversals == 3 and hold.repeat_reversals == 2 and not hold.reversed_twice
    assert ledger.summary()["reversals_repeat"] == 2
    assert ledger.summary()["reversals_duplicate"] == 0


def test_a_repeat_that_arrives_first_releases() -> None:
    ledger = Ledger()
    original = sale()
    ledger.approve("0200", original, "123456", now=100.0)
    outcome, hold = ledger.reverse("0421", reversal("000900", original), 101.0)
    assert outcome is ReversalOutcome.RELEASED
    assert hold is not None and hold.released


def test_a_reversal_of_an_unknown_or_declined_original_is_unknown() -> None:
    ledger = Ledger()
    declined = sale(stan="000102")
    ledger.decline("0200", declined)

    never_seen = reversal("000900", sale(stan="000555"))
    assert ledger.reverse("0400", never_seen, 101.0) == (ReversalOutcome.UNKNOWN, None)
    of_declined = reversal("000901", declined)
    assert ledger.reverse("0400", of_declined, 102.0) == (ReversalOutcome.UNKNOWN, None)

    summary = ledger.summary()
    assert summary["reversals_unknown"] == 2
    assert summary["declined"] == 1
    assert summary["holds_open"] == 0
    assert [item.stan for item in ledger.unknown_reversals] == ["000900", "000901"]


def test_a_made_up_de90_is_an_unknown_original_not_a_crash() -> None:
    ledger = Ledger()
    made_up = {**reversal("000902", sale()), "90": "020X" + "0" * 38}
    assert ledger.reverse("0400", made_up, 101.0) == (ReversalOutcome.UNKNOWN, None)


def test_de90_must_name_the_right_terminal_mti_stan_and_time() -> None:
    ledger = Ledger()
    original = sale()
    ledger.approve("0200", original, "123456", now=100.0)
    wrong = [
        reversal("000900", original, **{"41": "TERM0002"}),
        reversal("000900", original, **{"90": de90("0100", "000101", "1125103000")}),
        reversal("000900", original, **{"90": de90("0200", "000102", "1125103000")}),
        reversal("000900", original, **{"90": de90("0200", "000101", "1125103001")}),
    ]
    for message in wrong:
        assert ledger.reverse("0400", message, 101.0)[0] is ReversalOutcome.UNKNOWN
    assert ledger.summary()["holds_open"] == 1


def test_cup_same_stan_reversal_without_de90_is_found_by_terminal_stan_and_amount() -> None:
    ledger = Ledger()
    original = {"2": PAN, "3": "000000", "4": "000000005588", "11": "000023", "41": "29800013"}
    ledger.approve("0200", original, "654321", now=100.0)

    other_amount = {**original, "4": "000000005589"}
    other_terminal = {**original, "41": "29800014"}
    assert ledger.reverse("0400", other_amount, 101.0)[0] is ReversalOutcome.UNKNOWN
    assert ledger.reverse("0400", other_terminal, 101.0)[0] is ReversalOutcome.UNKNOWN

    outcome, hold = ledger.reverse("0400", {**original, "39": "98"}, 102.0)
    assert outcome is ReversalOutcome.RELEASED
    assert hold is not None and hold.key.transmission_time is None
    # CUP resends the very same 0400 when no 0410 came: without DE 7 nothing tells it from a
    # second reversal, except a repeat MTI.
    assert ledger.reverse("0401", original, 103.0)[0] is ReversalOutcome.REPEAT
    assert ledger.reverse("0400", original, 104.0)[0] is ReversalOutcome.DUPLICATE


def test_a_de90_with_zero_time_finds_an_original_that_had_no_de7() -> None:
    ledger = Ledger()
    original = {"3": "000000", "4": "000000001000", "11": "000023", "41": "29800013"}
    ledger.approve("0200", original, "654321", now=100.0)
    message = {**original, "11": "000099", "90": de90("0200", "000023", "0" * 10)}
    assert ledger.reverse("0400", message, 101.0)[0] is ReversalOutcome.RELEASED


def test_the_same_stan_coming_round_again_releases_the_newest_open_hold_first() -> None:
    ledger = Ledger()
    older = {"4": "000000001000", "11": "000001", "41": "T1"}
    newer = {**older, "7": "1125120000"}  # same terminal, STAN and amount; another original
    first = ledger.approve("0200", older, "000001", now=100.0)
    second = ledger.approve("0200", newer, "000002", now=200.0)
    assert first is not second

    assert ledger.reverse("0400", dict(older), 201.0)[1] is second
    assert ledger.reverse("0400", dict(older), 202.0)[1] is first
    assert ledger.summary()["holds_open"] == 0


def test_the_same_request_twice_is_held_once() -> None:
    ledger = Ledger()
    first = ledger.approve("0200", sale(), "111111", now=100.0)
    again = ledger.approve("0201", sale(), "222222", now=101.0)  # a repeat of the original

    assert again is first
    assert again.approval_code == "111111"
    assert first.duplicate_requests == 1
    summary = ledger.summary()
    assert summary["approved"] == 1
    assert summary["held_amount"] == 1500
    assert summary["duplicate_requests"] == 1


def test_the_ledger_keeps_masked_pans_only() -> None:
    ledger = Ledger()
    ledger.approve("0200", sale(), "123456", now=100.0)
    track_only = {**sale(stan="000102"), "35": PAN + "=27122010000000000"}
    del track_only["2"]
    ledger.approve("0200", track_only, "123457", now=100.0)
    ledger.reverse("0400", reversal("000900", sale(stan="000777")), 101.0)

    text = json.dumps(ledger.to_dict())
    assert PAN not in text
    assert "2712201" not in text
    assert [entry["pan"] for entry in ledger.to_dict()["entries"]] == ["476173******0010"] * 2
    assert repr(ledger.holds[0]).count(PAN) == 0


def test_changes_are_announced() -> None:
    ledger = Ledger()
    changes: list[int] = []
    ledger.on_change = lambda: changes.append(1)
    ledger.approve("0200", sale(), "123456", now=100.0)
    ledger.decline("0200", sale(stan="000102"))
    ledger.reverse("0400", reversal("000900", sale()), 101.0)
    assert len(changes) == 3
