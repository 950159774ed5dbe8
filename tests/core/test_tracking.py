"""The working objects build exactly the records the journal expects (field by field)."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.core import notices
from gateway.core.records import (
    AuthorizationRecord,
    AuthState,
    ReversalReason,
    ReversalRecord,
    ReversalState,
)
from gateway.core.tracking import Authorization, EchoFields, Reversal


def test_authorization_round_trips_through_its_record() -> None:
    record = AuthorizationRecord(
        txn_id=7, created_at=1.0, updated_at=2.0, state=AuthState.APPROVED, mti="0100",
        terminal_id="T1", stan="000001", acquirer_stan="000901", rrn="123", amount="500",
        response_code="00", approval_code="A1", tpdu=b"\x60\x00\x01\x00\x02",
        header=b"\x60\x31", reversal_fields={"2": "4761739001010119", "7": "0908064519"},
    )  # fmt: skip
    auth = Authorization.from_record(record)
    assert auth.record() == record
    assert auth.transmission_time == "0908064519"


def test_reversal_record_has_every_field_in_place() -> None:
    values = {
        "reversal_id": 3, "txn_id": 7, "created_at": 1.0, "updated_at": 2.0,
        "state": ReversalState.SENT, "reason": ReversalReason.TIMEOUT, "mti": "0420",
        "stan": "000777", "attempts": 2, "next_attempt_at": 9.0, "last_response_code": "91",
        "fields": {"11": "000777"}, "tpdu": b"t", "header": b"h", "expires_at": 99.0,
    }  # fmt: skip
    rev = Reversal(
        index_key=("0430", "000777"), match_values=(None, "000777"),
        auth=None, **values,  # type: ignore[arg-type]
    )  # fmt: skip
    assert rev.record() == ReversalRecord(**values)  # type: ignore[arg-type]
    assert [f.name for f in dataclasses.fields(ReversalRecord)] == list(values)


def test_a_closed_reversal_record_carries_no_fields() -> None:
    rev = Reversal(
        reversal_id=1, txn_id=1, auth=None, created_at=0.0, updated_at=0.0,
        state=ReversalState.ACKNOWLEDGED, reason=ReversalReason.TIMEOUT, mti="0400",
        stan="000001", fields={"2": "4761739001010119"}, tpdu=b"", header=b"", expires_at=1.0,
        index_key=("0410", "000001"), match_values=(),
    )  # fmt: skip
    assert rev.record().fields == {}


def test_notice_data_masks_the_pan_and_drops_track_data() -> None:
    data = notices.request_data(
        "0200", {"35": "4761739001010119=2512201", "11": "1", "52": "PIN"}, "approved"
    )
    assert data["masked_pan"] == "476173******0119"
    assert "4761739001010119" not in repr(data) and "PIN" not in repr(data)
    assert "=" not in repr(data)


def test_echo_fields_behave_as_the_mapping_they_replace() -> None:
    names = ("2", "3", "4", "11", "41")
    source = {"3": "000000", "4": "000000001000", "11": "000123", "35": "track", "99": "x"}
    echo = EchoFields(names, source)
    expected = {name: source[name] for name in names if name in source}
    assert dict(echo) == expected and len(echo) == 3 and list(echo) == ["3", "4", "11"]
    assert echo.get("4") == "000000001000" and echo.get("2") is None and echo.get("35") is None
    assert "11" in echo and "41" not in echo and "99" not in echo
    with pytest.raises(KeyError):
        echo["2"]
    assert echo == expected  # Mapping equality
