"""Structured logs: JSON lines, console on a terminal, the logging module in the same pipeline,
masking in the pipeline itself, and the gateway's canonical lines with their context."""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from gateway.journal import SqliteJournal
from gateway.ops.journal_errors import JournalErrorLog
from gateway.ops.logging import (
    _LineWriter,
    configure_logging,
    flush_logs,
    log_context_var,
    log_event,
    merge_bound_context,
    wait_logs_written,
)
from gateway.ops.mqtt import MqttPublisher
from gateway.ops.sink import FanOut, LogSink
from gateway.sim.rules import Rule
from tests.e2e.harness import PAN, TRACK2, StackFactory, auth
from tests.journal.factories import make_auth

from .test_mqtt import TeeSink, free_port, mqtt_settings, wait_until

MASKED = "476173******0119"
Configure = Callable[..., io.StringIO]


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured_logs() -> Iterator[Configure]:
    """Configure the gateway's logging into a StringIO; restore pytest's handlers after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def configure(level: str = "debug", fmt: str = "json", tty: bool = False) -> io.StringIO:
        stream = TtyStringIO() if tty else io.StringIO()
        # Not cached: every test's configuration must reach every logger.
        configure_logging(level, fmt, stream, cache_loggers=False)  # type: ignore[arg-type]
        return stream

    yield configure
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    flush_logs()
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_by_default_off_a_terminal(captured_logs: Configure) -> None:
    stream = captured_logs(fmt="auto")
    structlog.get_logger("test").info("hello", n=1, ratio=0.5, ok=True, nothing=None)
    [line] = lines(stream)
    assert line["event"] == "hello" and line["level"] == "info"
    assert (line["n"], line["ratio"], line["ok"], line["nothing"]) == (1, 0.5, True, None)
    assert line["timestamp"].endswith("Z")


def test_console_rendering_on_a_terminal(captured_logs: Configure) -> None:
    stream = captured_logs(fmt="auto", tty=True)
    structlog.get_logger("test").warning("hello", card=PAN)
    text = stream.getvalue()
    assert "hello" in text and MASKED in text and PAN not in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text.splitlines()[0])


def test_lines_below_the_level_are_not_written(captured_logs: Configure) -> None:
    stream = captured_logs(level="warning")
    structlog.get_logger("test").info("quiet")
    logging.getLogger("aiomqtt").info("quiet too")
    structlog.get_logger("test").warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_standard_library_loggers_go_through_the_same_pipeline(captured_logs: Configure) -> None:
    stream = captured_logs()
    logging.getLogger("asyncio").warning("socket.send() raised for card %s", PAN)
    try:
        raise ConnectionError(f"broker said {TRACK2}")
    except ConnectionError:
        logging.getLogger("aiomqtt").exception("connection failed")
    asyncio_line, aiomqtt_line = lines(stream)
    assert asyncio_line["logger"] == "asyncio" and asyncio_line["level"] == "warning"
    assert asyncio_line["event"] == f"socket.send() raised for card {MASKED}"
    assert aiomqtt_line["logger"] == "aiomqtt" and aiomqtt_line["level"] == "error"
    assert "ConnectionError" in aiomqtt_line["exception"]
    assert PAN not in stream.getvalue() and TRACK2 not in stream.getvalue()


def test_masking_reaches_every_kind_of_value(captured_logs: Configure) -> None:
    """No call site can leak: strings, containers, exceptions, bytes, objects, tracebacks."""
    stream = captured_logs()
    log = structlog.get_logger("test")
    log.info(
        f"message with {PAN}",
        text=f"track {TRACK2} in free text",
        nested={"deep": [PAN, (TRACK2,)]},
        error=ValueError(f"bad card {PAN}"),
        raw=PAN.encode(),
        path=Path(f"/tmp/{PAN}.txt"),
    )
    try:
        raise RuntimeError(f"cannot route {PAN}")
    except RuntimeError:
        log.exception("routing_failed")
    text = stream.getvalue()
    assert PAN not in text and TRACK2 not in text
    first, second = lines(stream)
    assert first["event"] == f"message with {MASKED}"
    assert first["text"] == f"track {MASKED}=<track data removed> in free text"
    assert first["nested"] == {"deep": [MASKED, [f"{MASKED}=<track data removed>"]]}
    assert first["error"] == f"bad card {MASKED}"
    assert MASKED in first["raw"] and MASKED in first["path"]
    assert f"RuntimeError: cannot route {MASKED}" in second["exception"]


def test_log_sink_levels(captured_logs: Configure) -> None:
    stream = captured_logs()
    sink = LogSink()
    sink.notify("transaction_completed", {"outcome": "approved"})
    sink.notify("late_response", {"stan": "000001"})
    sink.notify("acquirer_link_down", {"link_id": 1})
    sink.notify("reversal_failed", {"reversal_id": 3})
    assert [(line["event"], line["level"]) for line in lines(stream)] == [
        ("transaction_completed", "info"),
        ("late_response", "warning"),
        ("acquirer_link_down", "warning"),
        ("reversal_failed", "error"),
    ]


async def test_one_canonical_line_per_transaction_and_one_per_reversal_attempt(
    captured_logs: Configure, make_stack: StackFactory
) -> None:
    stream = captured_logs(level="info")
    rules = [
        Rule(terminal_id=frozenset({"TERMDROP"}), mti=frozenset({"0200"}), fault="drop"),
        Rule(mti=frozenset({"0400"}), fault="drop", times=1),  # the first attempt is lost
    ]
    stack = await make_stack(rules=rules, simulator_paused=True)
    stack.service.sink = TeeSink(LogSink())
    await stack.simulator.resume()
    await stack.links_up()
    terminal = await stack.terminal()
    approved = auth(1, track2=True)
    assert (await terminal.send("0200", approved)).get("39") == "00"  # type: ignore[union-attr]
    assert (await terminal.send("0200", approved)).get("39") == "00"  # type: ignore[union-attr]
    timed_out = auth(2, terminal="TERMDROP")
    assert (await terminal.send("0200", timed_out)).get("39") == "91"  # type: ignore[union-attr]
    await stack.acknowledged()

    logged = [line for line in lines(stream) if "timestamp" in line]
    completed = [line for line in logged if line["event"] == "transaction_completed"]
    assert len(completed) == 2  # one per transaction (the repeat is a duplicate_request)
    ok, timeout = completed
    assert ok["mti"] == "0200" and ok["outcome"] == "approved" and ok["response_code"] == "00"
    assert (ok["stan"], ok["rrn"], ok["terminal_id"]) == ("000001", "000000000001", "TERM0001")
    assert ok["masked_pan"] == MASKED and isinstance(ok["txn_id"], int)
    assert ok["gateway_seconds"] >= 0 and ok["acquirer_seconds"] >= 0  # latencies
    assert ok["link"] == 1 and "conn" not in ok  # handled while the acquirer's answer was
    assert "reversal_id" not in ok
    assert timeout["outcome"] == "timeout" and timeout["terminal_id"] == "TERMDROP"
    # Its timer fired in a context of its own: no connection or link is claimed.
    assert "conn" not in timeout and "link" not in timeout
    reversal_id = timeout["reversal_id"]

    [duplicate] = [line for line in logged if line["event"] == "duplicate_request"]
    assert duplicate["outcome"] == "cached" and isinstance(duplicate["conn"], int)

    reversal_lines = [line for line in logged if line["event"].startswith("reversal_")]
    assert [(line["event"], line["attempts"]) for line in reversal_lines] == [
        ("reversal_owed", 0),
        ("reversal_sent", 1),
        ("reversal_sent", 2),
        ("reversal_acknowledged", 2),
    ]
    for line in reversal_lines:
        assert line["reversal_id"] == reversal_id and line["txn_id"] == timeout["txn_id"]
        assert line["reason"] == "timeout" and line["rrn"] == "000000000002"
    assert PAN not in stream.getvalue() and TRACK2 not in stream.getvalue()


def test_a_failing_sink_is_logged_and_never_stops_the_others(captured_logs: Configure) -> None:
    stream = captured_logs()

    class Broken:
        def notify(self, kind: str, data: Any) -> None:
            raise RuntimeError(f"cannot handle {PAN}")

    after = TeeSink()
    FanOut([Broken(), after]).notify("reversal_owed", {"reversal_id": 1})
    assert after.kinds() == ["reversal_owed"]
    [line] = lines(stream)
    assert line["event"] == "event_sink_failed" and line["level"] == "error"
    assert (line["sink"], line["kind"]) == ("Broken", "reversal_owed")
    assert MASKED in line["exception"] and PAN not in stream.getvalue()


async def test_an_mqtt_outage_is_one_warning_not_one_per_retry(captured_logs: Configure) -> None:
    stream = captured_logs()
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    settings = mqtt_settings(url, gateway_id="gw-logs", reconnect_min=0.01, reconnect_max=0.02)
    publisher = MqttPublisher(settings)
    await publisher.start()
    try:
        await wait_until(
            lambda: stream.getvalue().count("mqtt_connect_failed") >= 3, "three failed attempts"
        )
    finally:
        await publisher.stop()
    failures = [line for line in lines(stream) if line["event"] == "mqtt_connect_failed"]
    assert [line["level"] for line in failures[:3]] == ["warning", "debug", "debug"]
    assert failures[0]["broker"] == url and "refused" in failures[0]["error"].lower()


async def test_on_the_loop_info_lines_linger_and_warnings_go_out_at_the_iteration_end(
    captured_logs: Configure,
) -> None:
    stream = captured_logs(level="info")
    logger = structlog.get_logger("test")
    logger.info("first")
    logger.info("second")
    await asyncio.sleep(0)
    assert stream.getvalue() == ""  # gathered, not one write per line
    logger.warning("trouble")
    await asyncio.sleep(0)
    wait_logs_written()  # the writer thread's write
    # A warning takes the lines before it along, in order.
    assert [line["event"] for line in map(orjson.loads, stream.getvalue().splitlines())] == [
        "first",
        "second",
        "trouble",
    ]
    logger.info("third")
    await asyncio.sleep(_LineWriter.LINGER_SECONDS * 3)
    wait_logs_written()
    assert stream.getvalue().splitlines()[-1].find('"third"') > 0  # written without a flush


def test_merging_bound_context_agrees_with_structlog() -> None:
    # merge_bound_context reads structlog's private registry of bound variables: if a
    # structlog release changes it, this catches the difference.
    conn = log_context_var("conn")
    token = conn.set(7)
    bound = structlog.contextvars.bind_contextvars(request="r1", empty=...)
    try:
        ours = merge_bound_context(None, "info", {"event": "x", "request": "own value"})
        theirs = structlog.contextvars.merge_contextvars(
            None, "info", {"event": "x", "request": "own value"}
        )
        assert ours == theirs == {"event": "x", "request": "own value", "conn": 7}
    finally:
        structlog.contextvars.reset_contextvars(**bound)
        conn.reset(token)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING, logging.ERROR])
def test_event_lines_match_what_structlog_writes(captured_logs: Configure, level: int) -> None:
    # log_event writes JSON lines itself (speed); they must be structlog's lines, byte for
    # byte apart from the timestamp: same keys in the same order, same masking, same context.
    stream = captured_logs(level="info")
    data = {
        "txn_id": 7,
        "ok": True,
        "ratio": 0.5,
        "nothing": None,
        "stan": "000001",
        "note": f"card {PAN} seen",
        "nested": {"pan": PAN, "list": [PAN, 1]},
        "path": Path("/tmp/x"),
    }
    conn = log_context_var("conn")
    token = conn.set(3)
    try:
        log_event(level, "some_event", data)
        getattr(structlog.get_logger("gateway.events"), logging.getLevelName(level).lower())(
            "some_event", **data
        )
    finally:
        conn.reset(token)
    ours, theirs = lines(stream)
    assert ours.pop("timestamp")[:10] == theirs.pop("timestamp")[:10]
    assert list(ours.items()) == list(theirs.items())
    assert PAN not in stream.getvalue()
    assert ours["conn"] == 3 and ours["note"] == f"card {MASKED} seen"


def test_event_lines_below_the_level_are_not_written(captured_logs: Configure) -> None:
    stream = captured_logs(level="warning")
    log_event(logging.INFO, "quiet", {"n": 1})
    log_event(logging.WARNING, "loud", {"n": 2})
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_event_lines_on_a_console_go_through_structlog(captured_logs: Configure) -> None:
    stream = captured_logs(level="info", fmt="console")
    log_event(logging.INFO, "pretty", {"pan": PAN})
    flush_logs()
    text = stream.getvalue()
    assert "pretty" in text and MASKED in text and PAN not in text


def test_journal_failures_are_logged_once_then_reminded_then_recovered(
    captured_logs: Configure,
) -> None:
    stream = captured_logs(level="info")
    now = [100.0]
    errors = JournalErrorLog(clock=lambda: now[0])
    locked = sqlite3.OperationalError("database is locked")
    for _ in range(50):  # retries, several a second
        errors.failed(locked)
        now[0] += 0.2
    now[0] += 30
    errors.failed(locked)
    errors.committed(7)
    errors.committed(8)  # nothing more to say
    logged = [(line["event"], line.get("failures")) for line in lines(stream)]
    assert logged == [
        ("journal_commit_failed", 1),
        ("journal_commit_failed", 51),
        ("journal_commit_recovered", 51),
    ]
    first = lines(stream)[0]
    assert first["level"] == "error" and first["error"] == "OperationalError: database is locked"


async def test_a_locked_journal_is_logged_by_the_running_gateway(
    captured_logs: Configure, tmp_path: Path
) -> None:
    stream = captured_logs(level="info")
    errors = JournalErrorLog()
    journal = SqliteJournal(tmp_path / "j.db", on_error=errors.failed)
    journal.on_commit(errors.committed)
    await journal.start()
    try:
        blocker = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # an operator's command holding the write lock
        journal.put(make_auth(1))
        journal.request_commit()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if journal.commit_errors:
                break
        blocker.execute("ROLLBACK")
        blocker.close()
        await journal.flush()
    finally:
        await journal.close()
    events = [line["event"] for line in lines(stream)]
    assert events[0] == "journal_commit_failed" and events[-1] == "journal_commit_recovered"


def test_lines_of_a_later_event_loop_are_written_too(captured_logs: Configure) -> None:
    # A flush scheduled on a loop that then closed never runs; the next loop schedules its own.
    stream = captured_logs(level="info")
    logger = structlog.get_logger("test")

    async def log_and_leave(event: str) -> None:
        logger.info(event)

    asyncio.run(log_and_leave("first"))  # its flush handle dies with the loop

    async def log_and_wait() -> None:
        logger.info("second")
        await asyncio.sleep(_LineWriter.LINGER_SECONDS * 3)

    asyncio.run(log_and_wait())
    events = [line["event"] for line in map(orjson.loads, stream.getvalue().splitlines())]
    assert events == ["first", "second"]


class _BrokenPipe(io.BytesIO):
    """A stream whose reader went away after the first write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        if self.writes > 1:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)


async def test_a_log_stream_that_breaks_stops_being_written_and_nothing_else() -> None:
    stream = _BrokenPipe()
    writer = _LineWriter(stream)
    writer.msg(b"first")
    writer.flush()
    writer.msg_soon(b"second")  # EPIPE: remembered, not raised into the loop
    await asyncio.sleep(0)
    writer.wait_written(1)
    writer.msg_soon(b"third")
    await asyncio.sleep(0)
    assert writer.wait_written(1)
    assert isinstance(writer.broken, BrokenPipeError)
    assert stream.writes == 2  # not retried line after line
    assert writer.dropped == len(b"second\n") + len(b"third\n")
    assert stream.getvalue() == b"first\n"


class _StalledReader(io.BytesIO):
    """A stream whose reader stopped reading: every write blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, data: Any) -> int:
        self.release.wait(10)
        return super().write(data)


async def test_a_stalled_log_reader_stalls_no_transaction() -> None:
    stream = _StalledReader()
    writer = _LineWriter(stream)
    started = time.perf_counter()
    for n in range(200):
        writer.msg_soon(f"line {n}".encode())
        await asyncio.sleep(0)  # the end of an iteration: each warning is handed over
    assert time.perf_counter() - started < 1.0, "the loop waited for the log stream"
    stream.release.set()
    assert writer.wait_written(5)
    assert stream.getvalue().splitlines() == [f"line {n}".encode() for n in range(200)]
