"""Replaying the captures through a real gateway (GatewayService in this event loop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.replay.report import DEFAULT_IGNORED, render

from .helpers import CAPTURES, capture_files, card_numbers, replay_through_gateway


def outcome_rows(report):
    return [
        (t.number, t.captured, t.replayed, t.verdict, len(t.reversals)) for t in report.transactions
    ]


@pytest.mark.parametrize("path", capture_files(), ids=lambda p: p.name)
async def test_same_outcomes_and_reversals_exactly_where_no_answer_came(
    tmp_path: Path, path: Path
) -> None:
    report, capture = await replay_through_gateway(tmp_path, path)
    assert report.ok, render(report)
    assert len(report.transactions) == len(capture.transactions)
    unanswered = {t.number for t in capture.transactions if t.response is None}
    for line, txn in zip(report.transactions, capture.transactions, strict=True):
        assert line.forwarded  # every request reached the built-in host, as it reached the host
        if txn.number in unanswered:
            # The terminal got nothing then; now it gets the gateway's decline, and the
            # approval the host may have held is reversed, once.
            assert line.verdict == "repaired"
            assert line.replayed == "91"
            assert len(line.reversals) == 1
        else:
            assert line.verdict == "same"
            assert line.replayed == line.captured == txn.response.response_code
            assert not line.reversals
    reversed_txns = {r.reverses for r in report.reversals}
    assert reversed_txns == unanswered
    assert all(r.by == "gateway" and r.answer == "00" and r.mti == "0400" for r in report.reversals)
    assert not report.problems
    if "clean" in path.name:
        assert not report.reversals


async def test_the_reordered_capture_replays_identically(tmp_path: Path) -> None:
    original, _ = await replay_through_gateway(tmp_path, CAPTURES / "iso87-binary_dropped.pcapng")
    reordered, _ = await replay_through_gateway(
        tmp_path, CAPTURES / "iso87-binary_dropped_reordered.pcapng"
    )
    assert outcome_rows(reordered) == outcome_rows(original)
    assert reordered.ok


async def test_captured_pace(tmp_path: Path) -> None:
    path = CAPTURES / "cup-pos_dropped.pcapng"
    report, capture = await replay_through_gateway(tmp_path, path, speed=8.0)
    assert report.ok, render(report)
    assert report.pace == "captured pace x8"
    span = capture.transactions[-1].request.time - capture.transactions[0].request.time
    # Paced: the last request cannot go out before its captured offset / speed.
    assert report.elapsed >= span / 8.0 * 0.95


async def test_a_gateway_that_waits_longer_than_the_terminal_differs(tmp_path: Path) -> None:
    """Configured differently: its acquirer timeout exceeds the terminal's own wait, so the
    terminals that got no answer then get none now either."""
    report, capture = await replay_through_gateway(
        tmp_path,
        CAPTURES / "iso87-binary_dropped.pcapng",
        gateway={"acquirer.timeout": 5.0},
        response_timeout=0.8,
        settle=0.3,
    )
    assert not report.ok
    unanswered = {t.number for t in capture.transactions if t.response is None}
    differing = {t.number for t in report.transactions if t.verdict == "differs"}
    assert differing == unanswered
    for line in report.transactions:
        if line.number in unanswered:
            assert line.replayed == "no answer"
            assert any("should decline" in d for d in line.differences)
            # Still reversed: when the gateway stops, its grace period ends with their decline
            # and reversal, before the host stops.
            assert not any("reversed" in d for d in line.differences)
    text = render(report)
    assert f"{len(unanswered)} differ" in text and "result: " in text


async def test_stan_rewrite_is_a_difference_unless_de11_is_ignored(tmp_path: Path) -> None:
    """A gateway that rewrites DE 11 towards the acquirer: the built-in host still finds the
    captured answers (by content), and the report shows the forwarded STAN changed."""
    path = CAPTURES / "cup-pos_clean.pcapng"
    rewrite = {"acquirer.stan_mode": "rewrite"}
    report, _ = await replay_through_gateway(tmp_path, path, gateway=rewrite)
    assert not report.ok
    assert all(t.replayed == t.captured for t in report.transactions)  # answers still right
    for line in report.transactions:
        assert line.verdict == "differs"
        assert [d for d in line.differences if "forwarded request DE 11" in d] == line.differences
    relaxed, _ = await replay_through_gateway(
        tmp_path, path, gateway=rewrite, ignore=DEFAULT_IGNORED | {"11"}
    )
    assert relaxed.ok, render(relaxed)


async def test_report_text_never_shows_a_full_pan(tmp_path: Path) -> None:
    report, capture = await replay_through_gateway(
        tmp_path,
        CAPTURES / "iso87-binary_linkcut.pcapng",
        gateway={"acquirer.stan_mode": "rewrite"},  # differences, so field values are shown
    )
    text = render(report)
    as_json = json.dumps(report.to_dict())
    for pan in card_numbers(capture):
        assert pan not in text and pan not in as_json
    assert "forwarded request DE 11" in text


async def test_a_second_replay_through_the_same_gateway_meets_its_duplicate_window(
    tmp_path: Path,
) -> None:
    """The gateway remembers the requests it answered: the same capture again is all
    duplicates, answered from its cache and never forwarded. The report says so, with a hint."""
    report, capture = await replay_through_gateway(
        tmp_path, CAPTURES / "iso87-binary_dropped.pcapng", rounds=2
    )
    assert not report.ok
    assert all(line.verdict == "differs" and not line.forwarded for line in report.transactions)
    assert all(line.captured in (line.replayed, "no answer") for line in report.transactions)
    assert all(
        any(d.startswith("not forwarded to the acquirer now") for d in line.differences)
        for line in report.transactions
    )
    assert not report.reversals  # the first round's reversals are done; no new ones
    assert any("duplicate window" in hint for hint in report.hints)
    assert "hint: " in render(report)
    assert len(report.transactions) == len(capture.transactions)
