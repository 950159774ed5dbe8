"""The /metrics endpoint: numbers that move with what happens, scraped over real HTTP.

A gateway (built as `iso-gateway serve` builds it, metrics.listen set) in front of the acquirer
simulator on 127.0.0.1; faults come from simulator rules. Pure parts (the sink, MTI labels,
histogram buckets) are tested without sockets.
"""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from gateway.app import _mqtt_publisher
from gateway.ops.gc_pauses import PAUSES
from gateway.ops.metrics import GatewayCollector, Histogram, MetricsSink, mti_label
from gateway.service import ServiceCounters
from gateway.sim.rules import Rule
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import Frame, encode_frame
from tests.conftest import need_tool
from tests.e2e.harness import PAN, PIN_BLOCK, TRACK2, auth

from .metered import Metered, Samples, get, parse, start_metered, value

MeteredFactory = Callable[..., Awaitable[Metered]]


@pytest.fixture
async def metered(tmp_path: Path) -> AsyncIterator[MeteredFactory]:
    started: list[Metered] = []

    async def factory(**options: Any) -> Metered:
        stack = await start_metered(tmp_path / f"gw{len(started)}", **options)
        started.append(stack)
        return stack

    yield factory
    for stack in started:
        await stack.stop()


def drop(*mtis: str, times: int | None = None) -> Rule:
    return Rule(mti=frozenset(mtis), fault="drop", times=times)


# scenarios ---------------------------------------------------------------------------------


async def test_timeout_reversal_and_approval_move_the_counters(metered: MeteredFactory) -> None:
    gw = await metered(rules=[drop("0200", times=1)])
    await gw.links_up()
    before = await gw.samples()
    assert value(before, "iso_gateway_requests_total", mti="0200", outcome="timeout") == 0
    assert value(before, "iso_gateway_acquirer_link_up", link="1") == 1
    assert value(before, "iso_gateway_build_info", dialect="iso87-binary") == 1

    terminal = await gw.terminal()
    declined = await terminal.send("0200", auth(1))
    assert declined is not None and declined.get("39") == "91"
    await gw.seen("reversal_acknowledged")
    approved = await terminal.send("0200", auth(2))
    assert approved is not None and approved.get("39") == "00"

    after = await gw.samples()
    assert value(after, "iso_gateway_requests_total", mti="0200", outcome="timeout") == 1
    assert value(after, "iso_gateway_requests_total", mti="0200", outcome="approved") == 1
    assert value(after, "iso_gateway_reversals_total", reason="timeout", result="owed") == 1
    assert value(after, "iso_gateway_reversals_total", reason="timeout", result="acknowledged") == 1
    assert value(after, "iso_gateway_reversals_total", result="failed") == 0
    assert value(after, "iso_gateway_reversal_attempts_total", reason="timeout") >= 1
    # Both requests were written to the acquirer; only the approval came back.
    assert value(after, "iso_gateway_gateway_added_latency_seconds_count") == 2
    assert value(after, "iso_gateway_acquirer_round_trip_seconds_count") == 1
    assert value(after, "iso_gateway_acquirer_round_trip_seconds_sum") > 0
    assert value(after, "iso_gateway_in_flight_requests") == 0
    assert value(after, "iso_gateway_reversals_owed") == 0
    assert value(after, "iso_gateway_oldest_owed_reversal_age_seconds") == 0
    assert value(after, "iso_gateway_terminal_connections_open") == 1
    assert value(after, "iso_gateway_terminal_connections_total") == 1
    # Journal: the authorizations and the reversal were committed, in group commits.
    assert value(after, "iso_gateway_journal_commit_seconds_count") >= 1
    assert value(after, "iso_gateway_journal_commit_records_sum") >= 3
    # The collector (gateway/io/runtime.py): frozen heap, and passes per generation.
    assert after["iso_gateway_gc_frozen_objects"] == [({}, gc.get_freeze_count())]
    assert value(after, "iso_gateway_gc_pause_seconds_bucket", le="+Inf") == sum(PAUSES.counts)
    assert {labels["generation"] for labels, _ in after["python_gc_collections_total"]} == {
        "0",
        "1",
        "2",
    }

    completed = [data for kind, data in gw.recorder.events if kind == "transaction_completed"]
    assert [data["outcome"] for data in completed] == ["timeout", "approved"]
    assert "gateway_seconds" in completed[0] and "acquirer_seconds" not in completed[0]
    assert completed[1]["acquirer_seconds"] > 0 and completed[1]["gateway_seconds"] > 0


async def test_acquirer_down_then_back(metered: MeteredFactory) -> None:
    gw = await metered()
    await gw.links_up()
    terminal = await gw.terminal()
    await gw.simulator.pause()
    await gw.settle(lambda: gw.service.status()["links_up"] == 0, "the link down")
    down = await gw.samples()
    assert value(down, "iso_gateway_acquirer_link_up", link="1") == 0
    answer = await terminal.send("0200", auth(3))
    assert answer is not None and answer.get("39") == "91"

    await gw.simulator.resume()
    await gw.links_up()
    back = await gw.samples()
    assert value(back, "iso_gateway_acquirer_link_up", link="1") == 1
    assert value(back, "iso_gateway_acquirer_reconnects_total", link="1") >= 1
    assert value(back, "iso_gateway_requests_total", mti="0200", outcome="no_link") == 1


async def test_link_cut_after_send_counts_link_down(metered: MeteredFactory) -> None:
    gw = await metered(
        rules=[Rule(mti=frozenset({"0200"}), fault="close", times=1)],
        **{"acquirer.timeout": 5.0},
    )
    await gw.links_up()
    terminal = await gw.terminal()
    answer = await terminal.send("0200", auth(4), timeout=3.0)
    assert answer is not None and answer.get("39") == "91"
    await gw.seen("reversal_acknowledged")
    samples = await gw.samples()
    assert value(samples, "iso_gateway_requests_total", mti="0200", outcome="link_down") == 1
    assert value(samples, "iso_gateway_reversals_total", reason="link_lost", result="owed") == 1
    assert value(samples, "iso_gateway_acquirer_reconnects_total", link="1") >= 1


async def test_unanswered_reversal_is_owed_then_failed(metered: MeteredFactory) -> None:
    gw = await metered(
        rules=[drop("0200", "0400", "0401")],
        **{"reversal.max_attempts": 2, "reversal.retry_delays": [1.0]},
    )
    await gw.links_up()
    terminal = await gw.terminal()
    await terminal.send("0200", auth(5))
    await gw.seen("reversal_sent")
    owed = await gw.samples()
    assert value(owed, "iso_gateway_reversals_owed") == 1
    assert value(owed, "iso_gateway_authorizations_open") == 1
    assert value(owed, "iso_gateway_oldest_owed_reversal_age_seconds") > 0
    assert value(owed, "iso_gateway_reversals_failed") == 0

    await gw.seen("reversal_failed")
    failed = await gw.samples()
    assert value(failed, "iso_gateway_reversals_failed") == 1
    assert value(failed, "iso_gateway_reversals_owed") == 0
    assert value(failed, "iso_gateway_reversals_total", reason="timeout", result="failed") == 1
    assert value(failed, "iso_gateway_reversal_attempts_total", reason="timeout") == 2


async def test_format_errors_late_and_duplicate(metered: MeteredFactory) -> None:
    gw = await metered(rules=[Rule(mti=frozenset({"0200"}), fault="late", seconds=0.6, times=1)])
    await gw.links_up()
    terminal = await gw.terminal()
    framing = gw.service.dialect.framing
    terminal.send_raw(encode_frame(framing, Frame(b"\xff\x00not an ISO 8583 message")))
    request = auth(6)
    answer = await terminal.send("0200", request)
    assert answer is not None and answer.get("39") == "91"
    await gw.seen("late_response")
    again = await terminal.send("0200", request)  # the same request again: a duplicate
    assert again is not None
    samples = await gw.samples()
    assert value(samples, "iso_gateway_format_errors_total", side="terminal", kind="message") == 1
    assert value(samples, "iso_gateway_requests_total", outcome="format_error") == 1
    assert value(samples, "iso_gateway_late_responses_total") == 1
    assert value(samples, "iso_gateway_requests_total", mti="0200", outcome="duplicate") == 1


# the exposition ----------------------------------------------------------------------------

ALLOWED_LABELS = {"mti", "outcome", "reason", "result", "link", "side", "kind", "version"}
ALLOWED_LABELS |= {"dialect", "le", "generation"}


async def test_labels_stay_low_cardinality_and_hold_no_card_data(metered: MeteredFactory) -> None:
    gw = await metered(rules=[drop("0200", times=2)])
    await gw.links_up()
    sent: list[dict[str, str]] = []
    for index, terminal_id in enumerate(("TERM0001", "TERM0002", "TERM0003")):
        terminal = await gw.terminal()
        for stan in range(100 + 10 * index, 103 + 10 * index):
            fields = auth(stan, terminal=terminal_id, track2=stan % 2 == 0)
            sent.append(fields)
            await terminal.send("0200", fields)
        for mti in ("0210", "9999"):  # not a request; a made-up MTI
            message = terminal.codec.encode(mti, auth(900 + index, terminal=terminal_id))
            terminal.send_frame(Frame(message, terminal.tpdu, terminal.header))
    await gw.seen("reversal_acknowledged", 2)
    await gw.seen("request_rejected", 6)
    text = await gw.scrape()
    samples = parse(text)

    forbidden = {PAN, TRACK2, PIN_BLOCK} | {
        fields[name] for fields in sent for name in ("11", "37", "41") if name in fields
    }
    labels = [
        (name, label_value)
        for series in samples.values()
        for series_labels, _ in series
        for name, label_value in series_labels.items()
    ]
    assert {name for name, _ in labels} <= ALLOWED_LABELS
    for name, label_value in labels:
        assert label_value not in forbidden, f"label {name} holds a request's own value"
        # A STAN is 6 digits, an RRN 12, a PAN 13-19: no label value is that long a number.
        assert not re.fullmatch(r"\d{5,}", label_value), f"label {name}={label_value!r}"
    # The seeded 0100/0200 series, the 0210 a terminal should not send, and "other".
    assert {value for name, value in labels if name == "mti"} == {"0100", "0200", "0210", "other"}
    assert PAN not in text and TRACK2 not in text and "TERM000" not in text
    series_count = sum(len(series) for series in samples.values())
    # Many requests, few series: nothing grows with the traffic.
    assert series_count < 400


async def test_promtool_check_metrics_accepts_the_scrape(metered: MeteredFactory) -> None:
    promtool = need_tool(shutil.which("promtool"), "promtool")
    gw = await metered(rules=[drop("0200", times=1)])
    await gw.links_up()
    terminal = await gw.terminal()
    await terminal.send("0200", auth(7))
    await terminal.send("0200", auth(8))
    await gw.seen("reversal_acknowledged")
    text = await gw.scrape()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


async def test_openmetrics_and_http_errors(metered: MeteredFactory) -> None:
    gw = await metered()
    body, content_type = await asyncio.to_thread(
        get, gw.url, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n") and "iso_gateway_build_info" in body
    plain, content_type = await asyncio.to_thread(get, gw.url)
    assert content_type.startswith("text/plain") and "# EOF" not in plain

    async def status_of(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.endpoint.port)
        writer.write(request)
        status_line = await reader.readline()
        writer.close()
        return status_line

    assert b" 404 " in await status_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 405 " in await status_of(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 400 " in await status_of(b"nonsense\r\n\r\n")
    # The endpoint still serves after bad requests.
    assert "iso_gateway_in_flight_requests" in await gw.scrape()


# pure parts --------------------------------------------------------------------------------


class FakeService:
    """What GatewayCollector reads, before the service is started (core None)."""

    def __init__(self) -> None:
        self.core = None
        self.dialect = get_dialect("iso87-binary")
        self.counters = ServiceCounters()
        self.links = {1: SimpleNamespace(is_up=True, reconnects=2, echo_failures=1)}
        self.journal = SimpleNamespace(commit_errors=0)
        self.terminals = SimpleNamespace(
            refused=3, cut={"write_timeout": 2}, tls_handshakes_failed=4
        )

    def status(self) -> dict[str, Any]:
        raise AssertionError("status() needs a started service")


def exposition(sink: MetricsSink, **options: Any) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(FakeService(), sink, **options))
    return parse(generate_latest(registry).decode())


def test_sink_counts_every_notice_kind() -> None:
    sink = MetricsSink(get_dialect("iso87-binary"))
    notices: list[tuple[str, dict[str, Any]]] = [
        ("transaction_completed", {"mti": "0200", "outcome": "approved", "gateway_seconds": 0.002,
                                   "acquirer_seconds": 0.04}),
        ("transaction_completed", {"mti": "0100", "outcome": "timeout", "gateway_seconds": 0.001}),
        ("transaction_completed", {"mti": "0200", "outcome": "no_link"}),
        ("duplicate_request", {"mti": "0200", "outcome": "cached"}),
        ("request_rejected", {"mti": "0210", "reason": "not_a_request"}),
        ("terminal_reversal", {"mti": "0400", "outcome": "forwarded"}),
        ("reversal_owed", {"reason": "undeliverable"}),
        ("reversal_sent", {"reason": "undeliverable"}),
        ("reversal_sent", {"reason": "undeliverable"}),
        ("reversal_acknowledged", {"reason": "undeliverable"}),
        ("reversal_failed", {"reason": "in_doubt"}),
        ("reversal_cancelled", {"reason": "timeout"}),
        ("reversal_requeued", {"reason": "in_doubt"}),
        ("late_response", {"mti": "0210"}),
        ("unmatched_response", {"reason": "no_request", "may_hold": False}),
        ("unmatched_response", {"reason": "no_request", "may_hold": True}),
        ("undeliverable_response", {"outcome": "write_failed"}),
        ("acquirer_link_up", {"link_id": 1}),  # read from the links, not counted here
        ("a_kind_from_the_future", {"mti": "0200"}),
    ]  # fmt: skip
    for kind, data in notices:
        sink.notify(kind, data)
    samples = exposition(sink)

    def requests(mti: str, outcome: str) -> float:
        return value(samples, "iso_gateway_requests_total", mti=mti, outcome=outcome)

    assert requests("0200", "approved") == 1
    assert requests("0100", "timeout") == 1
    assert requests("0200", "no_link") == 1
    assert requests("0200", "duplicate") == 1
    assert requests("0210", "rejected") == 1
    assert requests("0400", "forwarded") == 1
    assert value(samples, "iso_gateway_requests_total") == 6

    def reversals(reason: str, result: str) -> float:
        return value(samples, "iso_gateway_reversals_total", reason=reason, result=result)

    assert reversals("undeliverable", "owed") == 1
    assert reversals("undeliverable", "acknowledged") == 1
    assert reversals("in_doubt", "failed") == 1
    assert reversals("timeout", "cancelled") == 1
    assert reversals("in_doubt", "requeued") == 1
    assert value(samples, "iso_gateway_reversal_attempts_total", reason="undeliverable") == 2
    assert value(samples, "iso_gateway_late_responses_total") == 1
    assert value(samples, "iso_gateway_unmatched_responses_total", reason="no_request") == 2
    assert value(samples, "iso_gateway_unmatched_approvals_total") == 1
    assert value(samples, "iso_gateway_undeliverable_responses_total", outcome="write_failed") == 1
    assert value(samples, "iso_gateway_gateway_added_latency_seconds_count") == 2
    assert value(samples, "iso_gateway_acquirer_round_trip_seconds_count") == 1
    assert value(samples, "iso_gateway_acquirer_round_trip_seconds_bucket", le="0.05") == 1
    assert value(samples, "iso_gateway_acquirer_round_trip_seconds_bucket", le="0.025") == 0
    # Links are read at scrape time; no core yet, so no core gauges.
    assert value(samples, "iso_gateway_acquirer_reconnects_total", link="1") == 2
    assert value(samples, "iso_gateway_acquirer_echo_failures_total", link="1") == 1
    assert "iso_gateway_in_flight_requests" not in samples
    # Terminal connections refused and cut, read from the terminal server.
    assert value(samples, "iso_gateway_terminal_connections_refused_total") == 3
    assert value(samples, "iso_gateway_terminal_connections_cut_total", reason="write_timeout") == 2
    assert value(samples, "iso_gateway_terminal_connections_cut_total", reason="idle_timeout") == 0
    assert value(samples, "iso_gateway_terminal_tls_handshakes_failed_total") == 4
    assert value(samples, "iso_gateway_acquirer_sends_dropped_total", reason="journal_late") == 0


def test_journal_commit_stats_feed_the_histograms() -> None:
    sink = MetricsSink(get_dialect("iso87-binary"))
    sink.on_commit_stats(SimpleNamespace(seq=3, records=3, puts=4, latency=0.002))
    sink.on_commit_stats(SimpleNamespace(seq=9, records=40, puts=60, latency=0.3))
    samples = exposition(sink)
    assert value(samples, "iso_gateway_journal_commit_seconds_count") == 2
    assert value(samples, "iso_gateway_journal_commit_seconds_bucket", le="0.0025") == 1
    assert value(samples, "iso_gateway_journal_commit_seconds_bucket", le="0.5") == 2
    assert value(samples, "iso_gateway_journal_commit_records_sum") == 43
    assert value(samples, "iso_gateway_journal_commit_records_bucket", le="5.0") == 1


def test_histogram_bounds_are_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(observed)
    family = histogram.family("x_seconds", "x")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 2, "1.0": 4, "+Inf": 5}
    assert histogram.count == 5 and histogram.total == pytest.approx(8.65)


def test_mti_labels_are_bounded() -> None:
    assert mti_label("0200") == "0200" and mti_label("0421") == "0421"
    assert mti_label("0810") == "0810"
    for made_up in ("9999", "0990", "02a0", "020", "02000", "", "0\u0662" + "00"):
        assert mti_label(made_up) == "other"
    every_label = {mti_label(f"{n:04d}") for n in range(10_000)}
    assert len(every_label) <= 193


def test_mqtt_series_follow_the_publisher() -> None:
    sink = MetricsSink(get_dialect("iso87-binary"))
    publisher = SimpleNamespace(connected=True, dropped=0)
    assert "iso_gateway_mqtt_connected" not in exposition(sink)
    assert "iso_gateway_mqtt_connected" not in exposition(sink, mqtt=lambda: None)
    samples = exposition(sink, mqtt=lambda: publisher)
    assert value(samples, "iso_gateway_mqtt_connected") == 1
    publisher.connected, publisher.dropped = False, 17
    samples = exposition(sink, mqtt=lambda: publisher)
    assert value(samples, "iso_gateway_mqtt_connected") == 0
    assert value(samples, "iso_gateway_mqtt_events_dropped_total") == 17
    # The app finds the publisher among its components, whatever their order.
    recorder = SimpleNamespace(start=None, stop=None)
    assert _mqtt_publisher([recorder, publisher]) is publisher  # type: ignore[list-item]
    assert _mqtt_publisher([recorder]) is None  # type: ignore[list-item]


async def test_each_gateway_has_its_own_registry(metered: MeteredFactory) -> None:
    first = await metered(rules=[drop("0200", times=1)])
    second = await metered()
    await first.links_up()
    await second.links_up()
    terminal = await first.terminal()
    await terminal.send("0200", auth(9))
    timeouts = [
        value(await gw.samples(), "iso_gateway_requests_total", outcome="timeout")
        for gw in (first, second)
    ]
    assert timeouts == [1, 0]
    assert b"iso_gateway_" not in generate_latest(REGISTRY)
