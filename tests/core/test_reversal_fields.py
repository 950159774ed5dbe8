"""Building a reversal: what is kept from the original, DE 90, and what is never copied."""

from __future__ import annotations

import pytest

from gateway.core.reversal import (
    original_data_elements,
    pan_from_track2,
    reversal_message_fields,
    reversal_source_fields,
)
from gateway.wire.dialect import ReversalRules

from .helpers import ICC, PAN, PIN_BLOCK, TRACK2, make_dialect, sale

SENSITIVE = ("35", "36", "45", "52", "55")


def test_de90_from_the_public_vector() -> None:
    # moov-io iso_reversal_message.dat: DE 90 = 0200 003316 0908064519 00000000200 00000000000
    de90 = original_data_elements("0200", "003316", "0908064519", "200", None)
    assert de90 == "020000331609080645190000000020000000000000"
    assert len(de90) == 42


def test_de90_zero_fills_what_the_original_lacked() -> None:
    assert original_data_elements("0100", "42", None, None, "7") == (
        "0100" + "000042" + "0" * 10 + "0" * 11 + "00000000007"
    )


@pytest.mark.parametrize(
    ("track2", "pan"),
    [
        (TRACK2, PAN),
        (";4761739001010119=2512201?", PAN),
        ("4761739001010119D25122011143804400000F", PAN),
        ("476173900101011925122011143804400000", None),  # no separator: not a PAN
        ("12345=2512", None),  # too short
        ("", None),
    ],
)
def test_pan_from_track2(track2: str, pan: str | None) -> None:
    assert pan_from_track2(track2) == pan


def test_source_fields_keep_copy_fields_and_original_data_never_card_secrets() -> None:
    fields = sale()
    fields["35"] = TRACK2
    fields["33"] = "7"
    kept = reversal_source_fields(fields, make_dialect(), "777777")
    assert kept["2"] == PAN and kept["11"] == "777777" and kept["7"] == "0908064519"
    assert kept["32"] == "200" and kept["33"] == "7" and kept["4"] == "000000001000"
    assert not set(kept) & set(SENSITIVE)
    assert PIN_BLOCK not in kept.values() and ICC not in kept.values()


def test_pan_comes_from_track2_when_only_track2_came() -> None:
    fields = sale(de2=None)
    fields["35"] = TRACK2
    kept = reversal_source_fields(fields, make_dialect(), None)
    assert kept["2"] == PAN
    assert "35" not in kept
    assert all("=" not in value for value in kept.values())


def test_dialect_cannot_make_track_data_copied() -> None:
    rules = ReversalRules(copy_fields=("2", "4", "35", "52", "55"))
    fields = {**sale(), "35": TRACK2}
    # nor can its match, duplicate or echo fields, which are kept too
    dialect = make_dialect(
        reversal=rules,
        match_fields=("41", "11", "35"),
        duplicate_fields=("41", "11", "52"),
        response_echo_fields=("11", "55"),
    )
    kept = reversal_source_fields(fields, dialect, None)
    assert set(kept) == {"2", "4", "7", "11", "32", "41"}
    message = reversal_message_fields(
        "0200", {**kept, "35": TRACK2}, rules, stan="1", reason_code="68", approval_code=None
    )
    assert not set(message) & set(SENSITIVE)


def test_message_fields_reason_approval_and_de90() -> None:
    rules = ReversalRules()
    source = reversal_source_fields(sale(), make_dialect(), None)
    message = reversal_message_fields(
        "0200", source, rules, stan="000123", reason_code="68", approval_code="A1B2C3"
    )
    assert message["11"] == "000123" and message["39"] == "68" and message["38"] == "A1B2C3"
    assert message["90"] == "020000331609080645190000000020000000000000"
    assert "7" not in message  # each attempt sets its own transmission time
    assert message["41"] == "TERM0001" and message["2"] == PAN


def test_message_fields_without_de90_or_approval_code() -> None:
    rules = ReversalRules(original_data="none", include_approval_code=False)
    source = reversal_source_fields(sale(), make_dialect(reversal=rules), None)
    message = reversal_message_fields(
        "0200", source, rules, stan="1", reason_code="98", approval_code="A1B2C3"
    )
    assert "90" not in message and "38" not in message
