"""`iso-gateway status`: from a live gateway's /metrics, and from the journal when it is down.

The live cases run the CLI (CliRunner) in a thread while the gateway serves its metrics on this
test's event loop. Every output is checked for the card data the journal or the traffic holds.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import cli
from gateway.core.records import AuthState, ReversalState
from gateway.journal.sqlite import SqliteJournal
from gateway.ops.status import StatusError, metrics_url, render, status_from_metrics
from gateway.sim.rules import Rule
from tests.e2e.harness import PAN, TRACK2, auth
from tests.journal.factories import make_auth, make_reversal

from .metered import Metered, start_metered


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


# CliRunner swaps sys.stdout for the whole process while it runs, so lines the in-process
# gateway logs meanwhile (structlog's default printer) land in the CLI's captured output.
_GATEWAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def screen(result: Result) -> str:
    """What the status command printed, without the gateway's own log lines."""
    lines = result.stdout.splitlines(keepends=True)
    return "".join(line for line in lines if not _GATEWAY_LOG_LINE.match(line))


async def run_beside_loop(*args: str) -> Result:
    """The CLI blocks on HTTP: run it in a thread so this loop keeps serving /metrics."""
    return await asyncio.to_thread(run, *args)


def assert_no_card_data(result: Result) -> None:
    text = result.stdout + result.stderr
    assert PAN not in text and TRACK2 not in text and PAN[-10:] not in text


@pytest.fixture
async def owing(tmp_path: Path) -> AsyncIterator[Metered]:
    """A gateway whose acquirer never answers 0200s or reversals: one reversal stays owed."""
    drop = Rule(mti=frozenset({"0200", "0400", "0401"}), fault="drop")
    gateway = await start_metered(tmp_path, rules=[drop], **{"reversal.retry_delays": [5.0]})
    yield gateway
    await gateway.stop()


async def test_status_from_live_metrics(owing: Metered) -> None:
    await owing.links_up()
    terminal = await owing.terminal()
    answer = await terminal.send("0200", auth(1, track2=True))
    assert answer is not None and answer.get("39") == "91"
    await owing.seen("reversal_sent")

    port = str(owing.endpoint.port)
    result = await run_beside_loop("status", "--metrics", f"127.0.0.1:{port}", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"] == "metrics"
    assert summary["links"] == [{"link": "1", "up": True, "reconnects": 0, "echo_failures": 0}]
    assert summary["in_flight"] == 0
    assert summary["reversals"]["owed"] == 1 and summary["reversals"]["failed"] == 0
    assert summary["reversals"]["oldest_owed_age_seconds"] >= 0
    assert summary["requests"]["by_outcome"] == {"timeout": 1}
    assert summary["rates"]["interval_seconds"] == 1.0
    assert summary["attention"] == []
    assert_no_card_data(result)

    text = await run_beside_loop("status", "--metrics", owing.url, "--sample", "0")
    assert text.exit_code == 0, text.output
    assert screen(text).startswith("OK")
    assert "1/1 up: link 1 up" in text.stdout
    assert "1 owed, 0 failed" in text.stdout
    assert "timeout 1" in text.stdout
    assert "rate " not in text.stdout  # one scrape: no rates
    assert len(screen(text).splitlines()) <= 24  # one screen
    assert_no_card_data(text)


async def test_status_says_when_the_acquirer_is_unreachable(owing: Metered) -> None:
    await owing.links_up()
    await owing.simulator.pause()
    await owing.settle(lambda: owing.service.status()["links_up"] == 0, "the link down")
    result = await run_beside_loop("status", "--metrics", owing.url, "--sample", "0")
    assert result.exit_code == 0, result.output
    assert screen(result).startswith("ATTENTION")
    assert "no acquirer link is up" in result.stdout
    assert "link 1 DOWN" in result.stdout


async def journal_with_open_records(path: Path) -> None:
    """Two owed reversals (one sent before the stop), one failed, two authorizations in
    doubt, one being reversed: every record with a PAN in its fields."""
    now = time.time()
    async with SqliteJournal(path) as journal:
        for record in (
            make_auth(1, AuthState.IN_FLIGHT, created_at=now - 30),
            make_auth(2, AuthState.APPROVED, created_at=now - 90),
            make_auth(3, AuthState.REVERSING),
            make_auth(4, AuthState.DELIVERED),
            make_reversal(1, ReversalState.OWED, txn_id=3, created_at=now - 1800),
            make_reversal(2, ReversalState.SENT, created_at=now - 60),
            make_reversal(3, ReversalState.FAILED),
            make_reversal(4, ReversalState.ACKNOWLEDGED),
        ):
            journal.put(record)
        await journal.flush()


async def test_status_from_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    await journal_with_open_records(path)

    result = await run_beside_loop("status", "--journal", str(path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"] == "journal" and summary["path"] == str(path)
    assert summary["reversals"]["owed"] == 2
    assert summary["reversals"]["sent_before_stop"] == 1
    assert summary["reversals"]["failed"] == 1
    assert 1790 <= summary["reversals"]["oldest_owed_age_seconds"] <= 1900
    assert summary["in_doubt_authorizations"] == 2
    assert 80 <= summary["oldest_in_doubt_age_seconds"] <= 200
    assert_no_card_data(result)

    text = await run_beside_loop("status", "--journal", str(path))
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0] == "ATTENTION"
    assert "1 failed reversal(s)" in lines[1]  # the most urgent first
    assert "the oldest owed reversal is 30 min old" in text.stdout
    assert "2 authorization(s) in doubt" in text.stdout
    assert_no_card_data(text)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_status_falls_back_to_the_journal_when_the_gateway_is_down(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    await journal_with_open_records(path)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[metrics]\nlisten = "0.0.0.0:{closed_port()}"\n[journal]\npath = "{path}"\n'
    )
    result = await run_beside_loop("status", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    assert "reading the journal" in result.stderr
    assert json.loads(result.stdout)["source"] == "journal"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--metrics", "127.0.0.1:{port}"], 1, "error: cannot read http://127.0.0.1:"),
        (["--metrics", "file:///etc/passwd"], 1, "error: not an http(s) URL"),
        (["--metrics", "127.0.0.1:1", "--journal", "x.sqlite3"], 2, "not both"),
        (["--journal", "{missing}"], 1, "error: no journal at"),
    ],
)
def test_status_errors_are_one_line(
    tmp_path: Path, args: Sequence[str], code: int, message: str
) -> None:
    filled = [a.format(port=closed_port(), missing=tmp_path / "none.sqlite3") for a in args]
    result = run("status", "--sample", "0", *filled)
    assert result.exit_code == code
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_metrics_that_are_not_a_gateways() -> None:
    with pytest.raises(StatusError, match="iso_gateway_build_info"):
        status_from_metrics("# TYPE up gauge\nup 1\n")
    with pytest.raises(StatusError, match="not Prometheus text"):
        status_from_metrics("this is { not metrics\n")


def test_metrics_url_forms() -> None:
    assert metrics_url("127.0.0.1:9100") == "http://127.0.0.1:9100/metrics"
    assert metrics_url("0.0.0.0:9100") == "http://127.0.0.1:9100/metrics"
    assert metrics_url(":9100") == "http://127.0.0.1:9100/metrics"
    assert metrics_url("https://gw.example:443/metrics") == "https://gw.example:443/metrics"


def test_rates_from_two_scrapes() -> None:
    def scrape(approved: int, timeouts: int) -> str:
        return (
            'iso_gateway_build_info{version="1",dialect="d"} 1\n'
            'iso_gateway_acquirer_link_up{link="1"} 1\n'
            f'iso_gateway_requests_total{{mti="0200",outcome="approved"}} {approved}\n'
            f'iso_gateway_requests_total{{mti="0200",outcome="timeout"}} {timeouts}\n'
        )

    summary = status_from_metrics(scrape(120, 4), scrape(100, 2), 2.0)
    assert summary["rates"] == {
        "interval_seconds": 2.0,
        "requests_per_second": 11.0,
        "by_outcome": {"approved": 10.0, "timeout": 1.0},
    }
    assert "rate           11.0/s over 2 s: approved 10.0/s, timeout 1.0/s" in render(summary)
    # The gateway restarted between the scrapes: counters went down, no negative rate.
    assert status_from_metrics(scrape(3, 0), scrape(100, 2), 1.0)["rates"]["by_outcome"] == {
        "approved": 3.0
    }
