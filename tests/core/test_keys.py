from __future__ import annotations

from gateway.core.keys import duplicate_key, repeat_key, values_agree, values_of

DUP = ("41", "11", "4", "7", "12", "13")


def test_duplicate_key_is_the_request_class_and_the_fields_present() -> None:
    fields = {"41": "T1", "11": "000001", "4": "100", "7": "0908064519"}
    assert duplicate_key("0200", fields, DUP) == (
        "0200",
        "T1",
        "000001",
        "100",
        "0908064519",
        None,
        None,
    )
    assert duplicate_key("0200", fields, DUP) != duplicate_key("0100", fields, DUP)


def test_stan_reuse_with_another_amount_or_time_is_another_key() -> None:
    fields = {"41": "T1", "11": "000001", "4": "100", "7": "0908064519"}
    key = duplicate_key("0200", fields, DUP)
    assert duplicate_key("0200", {**fields, "4": "200"}, DUP) != key
    assert duplicate_key("0200", {**fields, "7": "0908064520"}, DUP) != key
    assert duplicate_key("0200", {**fields, "12": "064519"}, DUP) != key


def test_repeat_key_is_terminal_and_stan() -> None:
    assert repeat_key("0200", {"41": "T1", "11": "000001", "7": "x"}) == ("0200", "T1", "000001")


def test_values_agree_on_fields_both_carry() -> None:
    ours = values_of({"41": "T1", "11": "000001"}, ("41", "11"))
    assert values_agree(ours, values_of({"11": "000001"}, ("41", "11")))
    assert values_agree(ours, values_of({"41": "T1", "11": "000001"}, ("41", "11")))
    assert not values_agree(ours, values_of({"41": "T2", "11": "000001"}, ("41", "11")))
    assert not values_agree(ours, values_of({"41": "T1", "11": "000002"}, ("41", "11")))
