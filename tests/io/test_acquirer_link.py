"""Acquirer links over real sockets: failover, sign-on, echo tests, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import build_service
from gateway.config import ConfigError, load_config
from gateway.io.tap import Address, Side
from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.rules import Rule
from gateway.wire.codec import Codec, Message
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import Frame, encode_frame

from ..e2e.harness import Stack, StackFactory, auth


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


async def test_failover_to_the_second_address(make_stack: StackFactory, tmp_path: Path) -> None:
    backup = AcquirerSimulator("iso87-binary")
    await backup.start("127.0.0.1", 0)
    try:
        stack = await make_stack(
            **{"acquirer.addresses": [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{backup.port}"]}
        )
        await stack.links_up()
        link = stack.service.links[1]
        assert link.address == ("127.0.0.1", backup.port)
        terminal = await stack.terminal()
        response = await terminal.send("0200", auth(1))
        assert response is not None and response.get("39") == "00"
        assert backup.counters.requests["0200"] == 1
    finally:
        await backup.stop()


async def test_primary_lost_moves_to_the_secondary(make_stack: StackFactory) -> None:
    backup = AcquirerSimulator("iso87-binary")
    await backup.start("127.0.0.1", 0)
    try:
        stack = await make_stack()
        primary = stack.simulator
        config_addresses = [f"127.0.0.1:{primary.port}", f"127.0.0.1:{backup.port}"]
        stack.config = stack.config.model_copy(
            update={
                "acquirer": stack.config.acquirer.model_copy(update={"addresses": config_addresses})
            }
        )
        await stack.restart_gateway()
        await stack.links_up()
        assert stack.service.links[1].address == ("127.0.0.1", primary.port)
        await primary.pause()
        await stack.settle(
            lambda: (
                stack.service.links[1].address == ("127.0.0.1", backup.port)
                and stack.service.links[1].is_up
            ),
            what="the link on the secondary",
        )
        terminal = await stack.terminal()
        response = await terminal.send("0200", auth(2))
        assert response is not None and response.get("39") == "00"
    finally:
        await backup.stop()


async def test_sign_on_before_the_link_is_up(make_stack: StackFactory) -> None:
    stack = await make_stack(**{"acquirer.sign_on": True})
    await stack.links_up()
    assert stack.requests_seen("0800") >= 1
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(3))
    assert response is not None and response.get("39") == "00"


async def test_refused_sign_on_keeps_the_link_down(make_stack: StackFactory) -> None:
    rules = [Rule(mti=frozenset({"0800"}), response_code="91")]
    stack = await make_stack(rules=rules, **{"acquirer.sign_on": True})
    await stack.settle(lambda: stack.requests_seen("0800") >= 2, what="sign-on retries")
    assert stack.service.status()["links_up"] == 0
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(4))
    assert response is not None and response.get("39") == "91"  # declined at once, not sent
    assert stack.requests_seen("0200") == 0


async def test_unanswered_echo_declares_the_link_dead(make_stack: StackFactory) -> None:
    rules = [Rule(mti=frozenset({"0800"}), fault="drop", times=1)]
    stack = await make_stack(
        rules=rules, **{"acquirer.echo_interval": 0.2, "acquirer.echo_timeout": 0.2}
    )
    await stack.links_up()
    link = stack.service.links[1]
    await stack.settle(lambda: link.echo_failures == 1, what="an echo failure")
    await stack.settle(lambda: link.is_up and link.reconnects >= 1, what="the reconnect")
    # Answered echoes keep it up: wait a few intervals.
    await asyncio.sleep(0.8)
    assert link.is_up and link.echo_failures == 1
    assert stack.requests_seen("0800") >= 3


async def test_no_echo_tests_without_the_tpdu_and_header(make_stack: StackFactory) -> None:
    """CUP POS frames carry a TPDU and a header, which no terminal lends the link's own 0800:
    without acquirer.tpdu / acquirer.header it sends none, and stays up (such an 0800 once
    raised inside the link and left it hanging)."""
    faulthandler.dump_traceback_later(60, exit=True)  # a blocked loop would hang the run
    try:
        stack = await make_stack(dialect="cup-pos", **{"acquirer.echo_interval": 0.05})
        await stack.links_up()
        started = time.monotonic()
        await asyncio.sleep(0.3)  # idle for six intervals
        assert time.monotonic() - started < 2.0, "the event loop was blocked"
        link = stack.service.links[1]
        assert link.is_up and link.echo_failures == 0 and link.reconnects == 0
        assert stack.requests_seen("0800") == 0
        # The acquirer goes away and comes back: the link reconnects (the link that had
        # raised never did).
        await stack.simulator.pause()
        await stack.settle(lambda: not link.is_up, what="the link down")
        await stack.simulator.resume()
        await stack.settle(lambda: link.is_up and link.reconnects == 1, what="the reconnect")
    finally:
        faulthandler.cancel_dump_traceback_later()


async def test_echo_tests_carry_the_configured_header(make_stack: StackFactory) -> None:
    """Visa BASE I frames carry a 24-byte header: the link's own 0800s use acquirer.header."""
    header = "16010200" + "00" * 20
    stack = await make_stack(
        dialect="visa-base1",
        **{"acquirer.echo_interval": 0.1, "acquirer.echo_timeout": 0.5, "acquirer.header": header},
    )
    await stack.links_up()
    await stack.settle(lambda: stack.requests_seen("0800") >= 3, what="three echo tests")
    link = stack.service.links[1]
    assert link.is_up and link.echo_failures == 0 and link.reconnects == 0


async def test_without_the_header_a_visa_link_sends_no_echo(make_stack: StackFactory) -> None:
    stack = await make_stack(dialect="visa-base1", **{"acquirer.echo_interval": 0.05})
    await stack.links_up()
    await asyncio.sleep(0.3)
    link = stack.service.links[1]
    assert link.is_up and link.reconnects == 0 and stack.requests_seen("0800") == 0


@pytest.mark.parametrize(
    ("dialect", "settings", "message"),
    [
        ("cup-pos", {"acquirer.sign_on": True}, "acquirer.sign_on: the link's own 0800 needs"),
        (
            "no-de70",
            {"acquirer.sign_on": True},
            "acquirer.sign_on: no sign-on can be sent: the dialect cannot encode an 0800",
        ),
        ("visa-base1", {"acquirer.header": "00" * 22}, "acquirer.header: 22 bytes"),
        ("iso87-binary", {"acquirer.tpdu": "6000010000"}, "acquirer.tpdu: 5 bytes"),
    ],
)
def test_own_messages_that_cannot_be_sent_are_refused_at_start(
    dialect: str, settings: dict[str, object], message: str, tmp_path: Path
) -> None:
    # A dialect whose DE 70 cannot hold a network management code.
    (tmp_path / "no-de70.toml").write_text(
        'name = "no-de70"\nextends = "iso87-binary"\n[spec]\n"70" = { data_enc = "ascii", '
        'len_enc = "ascii", len_type = 0, max_len = 2, desc = "too short" }\n'
    )
    overrides = {
        "gateway.dialect": dialect,
        "gateway.specs_dirs": [tmp_path],
        "gateway.data_dir": tmp_path,
        **settings,
    }
    config = load_config(None, environ={}, overrides=overrides)
    with pytest.raises(ConfigError) as raised:
        build_service(config)  # as `iso-gateway serve` builds it
    assert str(raised.value).startswith(message)


ISO87 = get_dialect("iso87-binary")
ISO87_CODEC = Codec(ISO87)


@contextlib.asynccontextmanager
async def raw_acquirer(
    make_stack: StackFactory,
) -> AsyncIterator[tuple[Stack, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A gateway whose acquirer is a bare socket the test reads and writes (iso87-binary)."""
    connected: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    host = await asyncio.start_server(lambda r, w: connected.put_nowait((r, w)), "127.0.0.1", 0)
    port = host.sockets[0].getsockname()[1]
    try:
        stack = await make_stack(**{"acquirer.addresses": [f"127.0.0.1:{port}"]})
        reader, writer = await asyncio.wait_for(connected.get(), 10)
        await stack.links_up()
        yield stack, reader, writer
        writer.close()
    finally:
        host.close()


async def read_message(reader: asyncio.StreamReader) -> Message:
    length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
    return ISO87_CODEC.decode(await reader.readexactly(length))


async def test_the_acquirers_own_echo_tests_are_answered(make_stack: StackFactory) -> None:
    """A host that echo-tests the gateway and drops links that do not answer."""
    async with raw_acquirer(make_stack) as (stack, reader, writer):
        answers = []
        for stan, code in (("000101", "301"), ("000102", "161")):  # echo; a key change
            request = {"7": "1126040000", "11": stan, "70": code}
            writer.write(encode_frame(ISO87.framing, Frame(ISO87_CODEC.encode("0800", request))))
            answers.append(await read_message(reader))
        echo, key_change = answers
        assert echo.mti == "0810" and dict(echo.fields) == {
            "7": "1126040000",
            "11": "000101",
            "70": "301",
            "39": "00",
        }
        assert key_change.mti == "0810" and key_change.fields["39"] == "12"
        assert stack.service.links[1].is_up
        assert stack.service.counters.acquirer_format_errors == 0


async def test_a_malformed_network_message_from_the_acquirer_is_counted_not_fatal(
    make_stack: StackFactory,
) -> None:
    """An 0800 whose DE 70 and an 0810 whose DE 11 cannot be decoded (a byte that is not
    ASCII), then an echo test in the same read: the two are counted as malformed, the link
    stays up and the echo test is answered."""
    codec = ISO87_CODEC
    async with raw_acquirer(make_stack) as (stack, reader, writer):
        bad_0800 = codec.encode("0800", {"7": "1126040000", "11": "000201", "70": "301"})
        bad_0800 = bad_0800.replace(b"301", b"30\xff")
        bad_0810 = codec.encode("0810", {"7": "1126040000", "11": "000202", "39": "00"})
        bad_0810 = bad_0810.replace(b"000202", b"00020\xff")
        echo = codec.encode("0800", {"7": "1126040000", "11": "000203", "70": "301"})
        frames = (encode_frame(ISO87.framing, Frame(m)) for m in (bad_0800, bad_0810, echo))
        writer.write(b"".join(frames))
        answer = await read_message(reader)
        assert answer.mti == "0810" and answer.fields["11"] == "000203"
        assert stack.service.links[1].is_up
        assert stack.service.counters.acquirer_format_errors == 2


class _SentByLink:
    """A frame tap counting what the gateway wrote on each acquirer connection."""

    def __init__(self) -> None:
        self.by_local_port: Counter[int] = Counter()

    def connection_opened(self, side: Side, local: Address, peer: Address) -> None:
        pass

    def frame(self, side: Side, inbound: bool, local: Address, peer: Address, frame: Frame) -> None:
        if side == "acquirer" and not inbound:
            self.by_local_port[local[1]] += 1

    def connection_closed(self, side: Side, local: Address, peer: Address) -> None:
        pass


@pytest.mark.parametrize(("strategy", "links_used"), [("primary", 1), ("round_robin", 3)])
async def test_link_strategy(make_stack: StackFactory, strategy: str, links_used: int) -> None:
    stack = await make_stack(**{"acquirer.connections": 3, "acquirer.strategy": strategy})
    await stack.settle(lambda: stack.service.status()["links_up"] == 3, what="three links up")
    tap = _SentByLink()
    stack.service.tap = tap
    terminal = await stack.terminal()
    for stan in range(1, 10):
        response = await terminal.send("0200", auth(stan))
        assert response is not None and response.get("39") == "00"
    assert sorted(tap.by_local_port.values(), reverse=True) == (
        [9] if links_used == 1 else [3, 3, 3]
    )
