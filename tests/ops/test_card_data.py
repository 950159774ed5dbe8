"""No card secret in any log line or MQTT payload, whatever happens.

Terminals send a known PAN, track 2 and PIN block through every scenario the gateway knows
(approved, declined, timeout + reversal, duplicate, terminal reversal, garbage frames, late
response, link cut, garbage from the acquirer, a terminal gone before its approval). All log
output (structlog and the logging module, at debug) and every MQTT payload the real broker
delivers are then searched for the full PAN, the track 2 string and the PIN block.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from gateway.ops.logging import configure_logging, flush_logs, log_event
from gateway.ops.mqtt import MqttPublisher
from gateway.ops.sink import LogSink
from gateway.sim.rules import Rule
from gateway.wire.framing import Frame, encode_frame
from tests.e2e.harness import PAN, PIN_BLOCK, TRACK2, Stack, StackFactory, auth, now_fields

from .test_mqtt import Subscriber, TeeSink, clear_retained, mqtt_settings, unique_id

SECRETS = {"full PAN": PAN, "track 2": TRACK2, "PIN block": PIN_BLOCK}


def rule(terminal: str, **behaviour: Any) -> Rule:
    return Rule(terminal_id=frozenset({terminal}), mti=frozenset({"0200"}), **behaviour)


RULES = [
    rule("TERMDECL", response_code="05"),
    rule("TERMDROP", fault="drop"),
    rule("TERMLATE", fault="late", seconds=0.8),
    rule("TERMCUTS", fault="close", times=1),
    rule("TERMGARB", fault="garbage"),
    rule("TERMGONE", fault="delay", seconds=0.3),
    # Neither the sale nor its reversal is answered: still in doubt when the gateway restarts.
    rule("TERMHELD", fault="drop"),
    Rule(terminal_id=frozenset({"TERMHELD"}), mti=frozenset({"0400", "0401"}), fault="drop"),
]


def card_present(stan: int, terminal: str = "TERM0001") -> dict[str, str]:
    """Track 2 and PIN block, no DE 2: a chip-and-PIN sale."""
    return auth(stan, terminal=terminal, track2=True)


def terminal_reversal(original: dict[str, str], stan: int) -> dict[str, str]:
    """The terminal's 0400 for ``original``, carrying its track data and PIN block too."""
    fields = {**original, **now_fields(), "11": f"{stan:06d}", "39": "68"}
    fields["90"] = "0200" + original["11"] + original["7"] + "0" * 22
    return fields


@pytest.fixture
def all_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("debug", "json", stream, cache_loggers=False)
    yield stream
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


async def run_every_scenario(stack: Stack) -> tuple[dict[str, str], dict[str, str]]:
    """Returns the sale the gateway reversed on its own (acquirer timeout) and an approved
    one, with DE 2."""
    terminal = await stack.terminal()

    async def answer(fields: dict[str, str], mti: str = "0200") -> str | None:
        response = await terminal.send(mti, fields, timeout=3.0)
        return response.get("39") if response is not None else None

    with_pan = auth(1)  # DE 2
    assert await answer(with_pan) == "00"
    approved = card_present(2)
    assert await answer(approved) == "00"
    assert await answer(approved) == "00"  # duplicate: the cached answer
    assert await answer(card_present(3, "TERMDECL")) == "05"
    timed_out = card_present(4, "TERMDROP")
    assert await answer(timed_out) == "91"  # timeout, reversed
    assert await answer(terminal_reversal(approved, 5), "0400") == "00"
    # Garbage from a terminal: a well-framed frame that is not ISO 8583 but holds the
    # secrets as text, then a real message cut short inside its fields.
    framing = stack.service.dialect.framing
    secrets = f"garbage {PAN} {TRACK2} {PIN_BLOCK}".encode()
    terminal.send_raw(encode_frame(framing, Frame(b"\xff\x00" + secrets)))
    message = terminal.codec.encode("0200", card_present(6))
    terminal.send_raw(encode_frame(framing, Frame(message[:-20])))
    assert await answer(card_present(7, "TERMLATE")) == "91"  # its approval comes late
    await stack.settle(
        lambda: "late_response" in stack.service.sink.kinds(),  # type: ignore[attr-defined]
        what="the late response",
    )
    assert await answer(card_present(8, "TERMCUTS")) == "91"  # the link is cut
    await stack.links_up()
    assert await answer(card_present(9, "TERMGARB")) == "91"  # garbage from the acquirer
    gone = await stack.terminal()
    assert await gone.send("0200", card_present(10, "TERMGONE"), timeout=0.05) is None
    await gone.close()  # before its approval: undeliverable, reversed
    await stack.settle(
        lambda: "undeliverable_response" in stack.service.sink.kinds(),  # type: ignore[attr-defined]
        what="the undeliverable approval",
    )
    await stack.no_reversals_open()
    return timed_out, with_pan


@pytest.mark.services
async def test_no_card_secret_in_logs_or_mqtt_payloads(
    all_logs: io.StringIO, mosquitto: tuple[str, int], make_stack: StackFactory
) -> None:
    host, port = mosquitto
    gateway_id = unique_id()
    base = f"iso-gateway/{gateway_id}"
    settings = mqtt_settings(
        f"mqtt://{host}:{port}", gateway_id=gateway_id, publish_transactions=True
    )
    publisher = MqttPublisher(settings)
    stack = await make_stack(rules=RULES, simulator_paused=True)
    stack.service.sink = TeeSink(LogSink(), publisher)
    try:
        async with Subscriber(host, port, f"{base}/#") as subscriber:
            await publisher.start()
            await stack.simulator.resume()
            await stack.links_up()
            timed_out, approved = await run_every_scenario(stack)
            terminal = await stack.terminal()
            held = card_present(12, "TERMHELD")
            answer = await terminal.send("0200", held, timeout=3.0)
            assert answer is not None and answer.get("39") == "91"
            # A restart reads back the originals it reversed (with what ties them, never
            # card data): the terminal's own reversal of one is answered by the gateway. The
            # request still in doubt is remembered: its resend is declined, with no PAN.
            await stack.restart_gateway()
            stack.service.sink = TeeSink(LogSink(), publisher)
            await stack.links_up()
            terminal = await stack.terminal()
            answer = await terminal.send("0400", terminal_reversal(timed_out, 11), timeout=3.0)
            assert answer is not None and answer.get("39") == "00"
            resent = await terminal.send("0200", held, timeout=3.0)
            assert resent is not None and resent.get("39") == "91" and resent.get("2") is None
            # A delivered approval's resend: its answer rebuilt from the journal, no PAN.
            rebuilt = await terminal.send("0200", approved, timeout=3.0)
            assert rebuilt is not None and rebuilt.get("39") == "00" and rebuilt.get("2") is None
            await publisher.stop()  # publishes what is queued, then offline
            await subscriber.wait_for(
                lambda: any(s["status"] == "offline" for s, _ in subscriber.statuses()),
                "the publisher to finish",
            )
    finally:
        await publisher.stop()
        await clear_retained(host, port, f"{base}/status")

    flush_logs()  # info lines linger up to 50 ms before they are written
    logs = all_logs.getvalue()
    payloads = [bytes(m.payload).decode() for m in subscriber.messages]  # type: ignore[arg-type]
    # The search is only worth something if the scenarios really ran and were captured.
    logged = {(line["event"], line.get("outcome")) for line in map(orjson.loads, logs.splitlines())}
    for expected in [
        ("transaction_completed", "approved"),
        ("transaction_completed", "declined"),
        ("transaction_completed", "timeout"),
        ("transaction_completed", "link_down"),
        ("duplicate_request", "cached"),
        ("terminal_reversal", "forwarded"),
        ("terminal_message_malformed", None),
        ("late_response", None),
        ("acquirer_link_down", None),
        ("acquirer_message_malformed", None),
        ("undeliverable_response", "closed"),
        ("reversal_acknowledged", None),
        ("terminal_reversal", "answered"),  # after the restart
        ("duplicate_request", "declined"),  # the in-doubt request's resend, after it
        ("duplicate_request", "rebuilt"),  # a delivered approval's resend, after it
    ]:
        assert expected in logged, f"{expected} was not logged"
    assert any('"logger":"aiomqtt"' in line for line in logs.splitlines())
    published = {orjson.loads(p).get("event") for p in payloads}
    assert {"transaction_completed", "reversal_acknowledged", "late_response"} <= published
    assert "476173******0119" in logs and any("476173******0119" in p for p in payloads)

    for name, secret in SECRETS.items():
        for where, text in [("logs", logs), *(("MQTT", p) for p in payloads)]:
            assert secret.lower() not in text.lower(), f"the {name} appears in {where}"


def test_a_pan_held_as_a_number_is_masked_too(all_logs: io.StringIO) -> None:
    structlog.get_logger("test").info("odd_event", pan_as_number=int(PAN), small=12345)
    log_event(logging.INFO, "odd_notice", {"pan_as_number": int(PAN), "txn_id": 7})
    flush_logs()
    text = all_logs.getvalue()
    assert PAN not in text and text.count("476173******0119") == 2
    assert "12345" in text
