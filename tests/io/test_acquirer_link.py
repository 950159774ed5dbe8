"""Acquirer links over real sockets: failover, sign-on, echo tests, reconnect."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.rules import Rule

from ..e2e.harness import StackFactory, auth


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
