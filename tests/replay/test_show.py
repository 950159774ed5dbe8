"""`iso-gateway capture show`: one line per message, pairing, unanswered flagged, no full PAN."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import cli
from gateway.replay.capture import read_capture
from gateway.wire.dialect import get_dialect

from .helpers import CAPTURES, card_numbers, dialect_of

MESSAGE_LINE = re.compile(r"^\d+\s+\d\d:\d\d:\d\d\.\d{6}\s")


def show(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["capture", "show", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "name", ["iso87-binary_dropped.pcapng", "cup-pos_linkcut.pcapng", "iso87-binary_clean.pcapng"]
)
def test_one_line_per_message_and_unanswered_flagged(name: str) -> None:
    path = CAPTURES / name
    code, out, _ = show(str(path), "--dialect", dialect_of(path))
    assert code == 0
    capture = read_capture(path, get_dialect(dialect_of(path)))
    lines = [line for line in out.splitlines() if MESSAGE_LINE.match(line)]
    assert len(lines) == len(capture.messages)
    flagged = [line for line in lines if "NO RESPONSE" in line or "CUT:" in line]
    unanswered = [t for t in capture.transactions if t.response is None]
    assert len(flagged) == len(unanswered)
    for line, txn in zip(flagged, unanswered, strict=True):
        assert txn.request.stan in line and "T>H" in line
        assert ("CUT:" in line) == (txn.fate == "cut")
    answered_lines = [line for line in lines if "answered in" in line]
    assert len(answered_lines) == len(capture.transactions) - len(unanswered)
    assert all("H>T" in line for line in answered_lines)
    if unanswered:
        numbers = ", ".join(str(t.number) for t in unanswered)
        assert f"requests without a response: {len(unanswered)} (transactions {numbers})" in out
    else:
        assert "every request got a response" in out


@pytest.mark.parametrize("as_json", [False, True])
def test_no_full_pan_in_the_output(as_json: bool) -> None:
    path = CAPTURES / "iso87-binary_dropped.pcapng"
    capture = read_capture(path, get_dialect("iso87-binary"))
    pans = card_numbers(capture)
    assert len(pans) > 5
    code, out, _ = show(str(path), "--dialect", "iso87-binary", *(["--json"] if as_json else []))
    assert code == 0
    for pan in pans:
        assert pan not in out
        assert f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}" in out  # masked, and shown


def test_json_pairs_requests_and_responses() -> None:
    path = CAPTURES / "cup-pos_dropped.pcapng"
    code, out, _ = show(str(path), "--dialect", "cup-pos", "--json")
    assert code == 0
    data = json.loads(out)
    messages = {m["number"]: m for m in data["messages"]}
    assert data["summary"]["transactions"] == len(data["transactions"])
    for txn in data["transactions"]:
        request = messages[txn["request"]]
        assert request["direction"] == "to_host" and request["transaction"] == txn["number"]
        if txn["response"] is None:
            assert txn["fate"] == "no_response" and request["note"] == "NO RESPONSE"
        else:
            response = messages[txn["response"]]
            assert response["direction"] == "to_terminal"
            assert response["stan"] == request["stan"]
            assert int(response["mti"]) == int(request["mti"]) + 10
    assert data["summary"]["no_response"] == sum(
        t["response"] is None for t in data["transactions"]
    )


def test_port_options() -> None:
    path = CAPTURES / "iso87-binary_clean.pcapng"
    code, out, _ = show(str(path), "--dialect", "iso87-binary", "--port", "1", "--json")
    assert code == 0 and json.loads(out)["summary"]["other_connections"] == 4
    code, out, _ = show(str(path), "--dialect", "iso87-binary", "--host-port", "18583")
    assert code == 0 and "from the given ports" in out


def test_errors_are_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pcapng"
    bogus.write_bytes(b"\x00" * 64)
    code, _, err = show(str(bogus), "--dialect", "iso87-binary")
    assert code == 2 and err.startswith("error: ") and "not a pcap or pcapng" in err
    code, _, err = show(str(CAPTURES / "cup-pos_clean.pcapng"), "--dialect", "nope")
    assert code == 2 and "unknown dialect" in err
