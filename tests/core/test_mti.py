from __future__ import annotations

import pytest

from gateway.core.mti import (
    attempt_mti,
    base_mti,
    is_repeat,
    is_response,
    is_reversal,
    is_valid_mti,
    repeat_mti,
    request_mti,
    response_mti,
)


@pytest.mark.parametrize(
    ("request_mti", "expected"),
    [
        ("0100", "0110"),
        ("0101", "0110"),
        ("0200", "0210"),
        ("0201", "0210"),
        ("0400", "0410"),
        ("0401", "0410"),
        ("0420", "0430"),
        ("0421", "0430"),
        ("0800", "0810"),
        ("0220", "0230"),
        ("0102", "0112"),
    ],
)
def test_response_mti_is_request_plus_ten_for_repeats_too(request_mti: str, expected: str) -> None:
    assert response_mti(request_mti) == expected


def test_a_response_has_no_response_mti() -> None:
    with pytest.raises(ValueError, match="0210"):
        response_mti("0210")


@pytest.mark.parametrize(("mti", "repeat"), [("0100", False), ("0101", True), ("0421", True)])
def test_repeat_flag(mti: str, repeat: bool) -> None:
    assert is_repeat(mti) is repeat
    assert base_mti(mti) == mti[:3] + "0"


def test_repeat_and_attempt_mtis() -> None:
    assert repeat_mti("0400") == "0401"
    assert repeat_mti("0421") == "0421"
    assert [attempt_mti("0400", n) for n in (1, 2, 3)] == ["0400", "0401", "0401"]
    assert [attempt_mti("0420", n) for n in (1, 2)] == ["0420", "0421"]


def test_classes() -> None:
    assert is_reversal("0400") and is_reversal("0421")
    assert not is_reversal("0410") and not is_reversal("0200")
    assert is_response("0210") and is_response("0430") and not is_response("0800")
    assert is_valid_mti("0200")
    assert not is_valid_mti("02x0") and not is_valid_mti("200")
    assert not is_valid_mti("\uff10\uff12\uff10\uff10")  # full-width digits


@pytest.mark.parametrize(
    ("response", "expected"), [("0110", "0100"), ("0210", "0200"), ("0430", "0420")]
)
def test_request_mti_is_what_a_response_answers(response: str, expected: str) -> None:
    assert request_mti(response) == expected
    assert response_mti(request_mti(response)) == response


def test_a_request_has_no_request_mti() -> None:
    with pytest.raises(ValueError):
        request_mti("0200")
