"""TLS on both sides: terminals to the gateway, the gateway to the acquirer (mutual TLS).

Certificates come from a throwaway CA (trustme), made in memory for 127.0.0.1. Every test
runs on asyncio's loop and on uvloop's (conftest.py): the gateway serves on uvloop, whose TLS
transports differ from asyncio's in what a protocol can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme

from gateway.config import ConfigError, load_config
from gateway.io.terminals import TerminalConnection
from gateway.sim.rules import Rule
from gateway.sim.terminals import TerminalClient, TerminalFleet
from gateway.wire.framing import Frame, encode_frame

from ..harness import PAN, PIN_BLOCK, TRACK2, Stack, StackFactory, auth, build_service, events


def _pem(tmp_path: Path, name: str, blob: trustme.Blob) -> str:
    path = tmp_path / f"{name}.pem"
    blob.write_to_path(str(path))
    return str(path)


def _acquirer_tls(ca: trustme.CA, name: str = "127.0.0.1") -> ssl.SSLContext:
    """The simulated acquirer: a certificate for ``name``; gateways must present one too."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _terminal_tls(ca: trustme.CA, *, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if with_certificate:
        ca.issue_cert("terminal-0001").configure_cert(context)
    return context


def _gateway_tls(tmp_path: Path, ca: trustme.CA, **more: str) -> dict[str, object]:
    """The gateway's settings: TLS towards terminals, mutual TLS towards the acquirer."""
    return {
        "gateway__tls_cert": _pem(
            tmp_path, "gateway", ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem
        ),
        "acquirer__tls": True,
        "acquirer__tls_ca": _pem(tmp_path, "ca", ca.cert_pem),
        "acquirer__tls_cert": _pem(
            tmp_path, "gateway-client", ca.issue_cert("gateway").private_key_and_cert_chain_pem
        ),
        **more,
    }


async def _tls_stack(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA, **options: object
) -> Stack:
    stack = await make_stack(
        simulator_tls=_acquirer_tls(ca), **_gateway_tls(tmp_path, ca), **options
    )
    await stack.links_up()
    return stack


async def test_an_approval_and_a_reversal_travel_over_tls_on_both_sides(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = await _tls_stack(
        make_stack,
        tmp_path,
        ca,
        rules=[Rule(mti=frozenset({"0200"}), amount_min=5000, fault="drop")],
    )
    terminal = await stack.terminal(tls=_terminal_tls(ca))
    approved = await terminal.send("0200", auth(1))
    assert approved is not None and approved.get("39") == "00"
    # No answer from the acquirer: the terminal is declined, the reversal goes over TLS too.
    timed_out = await terminal.send("0200", auth(2, amount=6000, track2=True))
    assert timed_out is not None and timed_out.get("39") == "91"
    await stack.acknowledged()
    holds = {hold.key.stan: hold for hold in stack.holds()}
    assert not holds["000001"].released and holds["000002"].released
    assert stack.requests_seen("0400") == 1
    # Card data: none in the log lines or the events of a run over TLS.
    said = capsys.readouterr().out + repr(events(stack).events)
    assert "acquirer_connected" in said  # the log lines were captured
    for secret in (PAN, TRACK2, PIN_BLOCK):
        assert secret not in said


async def test_a_fleet_over_tls_keeps_the_invariant(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    stack = await _tls_stack(make_stack, tmp_path, ca)
    fleet = TerminalFleet(
        "127.0.0.1", stack.port, "iso87-binary", terminals=5, count=200, pipeline=4, seed=3,
        tls=_terminal_tls(ca),
    )  # fmt: skip
    results = await fleet.run()
    summary = results.summary()
    assert summary["approved"] + summary["declined"] == 200, summary
    assert len(stack.holds()) == summary["approved"]


async def test_a_plain_terminal_on_the_tls_port_is_dropped_and_others_keep_working(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    stack = await _tls_stack(make_stack, tmp_path, ca)
    secure = await stack.terminal(tls=_terminal_tls(ca))
    plain = await stack.terminal()  # TCP connects; the bytes are no TLS handshake
    plain_answer = asyncio.ensure_future(plain.send("0200", auth(10), timeout=2.0))
    for stan in range(11, 16):
        answer = await secure.send("0200", auth(stan))
        assert answer is not None and answer.get("39") == "00"
    assert await plain_answer is None
    assert await plain.wait_closed(timeout=2.0)
    assert stack.requests_seen("0200") == 5
    assert stack.service.terminals.tls_handshakes_failed == 1
    assert len(stack.service.terminals.connections) == 1  # it never became one
    assert stack.service.status()["links_up"] == 1


async def test_mutual_tls_refuses_a_terminal_without_a_certificate(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    stack = await _tls_stack(
        make_stack, tmp_path, ca, gateway__tls_client_ca=_pem(tmp_path, "terminal-ca", ca.cert_pem)
    )
    try:
        anonymous: TerminalClient | None = await stack.terminal(tls=_terminal_tls(ca))
    except (ssl.SSLError, ConnectionError):
        anonymous = None  # TLS 1.2: refused during the handshake
    if anonymous is not None:  # TLS 1.3: the server's refusal comes with the first read
        assert await anonymous.send("0200", auth(20), timeout=2.0) is None
        assert await anonymous.wait_closed(timeout=2.0)
    known = await stack.terminal(tls=_terminal_tls(ca, with_certificate=True))
    answer = await known.send("0200", auth(21))
    assert answer is not None and answer.get("39") == "00"
    assert stack.requests_seen("0200") == 1
    assert stack.service.terminals.tls_handshakes_failed == 1


async def test_an_acquirer_certificate_for_another_name_keeps_the_link_down(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    stack = await make_stack(
        simulator_tls=_acquirer_tls(ca, name="acquirer.example"), **_gateway_tls(tmp_path, ca)
    )
    terminal = await stack.terminal(tls=_terminal_tls(ca))
    await asyncio.sleep(0.5)  # several connect attempts, each refused at the handshake
    assert stack.service.status()["links_up"] == 0
    answer = await terminal.send("0200", auth(30))
    assert answer is not None and answer.get("39") == "91"  # never sent: nothing to reverse
    assert stack.requests_seen("0200") == 0


async def test_tls_server_name_names_the_acquirer_certificate(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    stack = await make_stack(
        simulator_tls=_acquirer_tls(ca, name="acquirer.example"),
        **_gateway_tls(tmp_path, ca, acquirer__tls_server_name="acquirer.example"),
    )
    await stack.links_up()
    terminal = await stack.terminal(tls=_terminal_tls(ca))
    answer = await terminal.send("0200", auth(31))
    assert answer is not None and answer.get("39") == "00"


def test_a_missing_certificate_file_is_said_at_start_naming_the_key(tmp_path: Path) -> None:
    for overrides, key in (
        ({"gateway.tls_cert": str(tmp_path / "missing.pem")}, "gateway.tls_cert/tls_key"),
        ({"acquirer.tls": True, "acquirer.tls_ca": str(tmp_path / "no-ca.pem")}, "acquirer.tls_ca"),
    ):
        config = load_config(None, environ={}, overrides=overrides)
        with pytest.raises(ConfigError, match=f"^{key}: cannot load"):
            build_service(config, tmp_path / "journal.sqlite3")


_T = TypeVar("_T")


async def run_blocking_terminal(
    stack: Stack, terminal: Callable[..., _T], *args: object
) -> tuple[asyncio.Future[_T], TerminalConnection]:
    """Run ``terminal(port, *args, go)`` (a blocking socket) in a thread. Once the gateway has
    accepted it, its send buffer towards this terminal is cut to 4 KB (kernel: 8 KB), and
    then the terminal is let go: the gateway's writes to it block early."""
    go = threading.Event()
    done = asyncio.get_running_loop().run_in_executor(None, terminal, stack.port, *args, go)
    await stack.settle(lambda: len(stack.service.terminals.connections) == 1, what="accepted")
    [conn] = stack.service.terminals.connections.values()
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    go.set()
    return done, conn


@contextlib.contextmanager
def small_buffered_terminal(
    port: int, context: ssl.SSLContext | Any, timeout: float
) -> Iterator[socket.socket]:
    """A blocking connection to the gateway with a 4 KB receive buffer (the kernel: 8 KB),
    wrapped by ``context`` (an SSLContext, or a stand-in for plain TCP)."""
    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", port))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
            yield wrapped


def _never_reading_terminal(
    port: int, context: ssl.SSLContext, wave: bytes, go: threading.Event
) -> None:
    """A TLS terminal that pipelines a wave of requests and reads nothing (a blocking socket:
    nothing reads for it), with a small receive buffer. It sends once ``go`` is set."""
    with small_buffered_terminal(port, context, timeout=6.0) as terminal:
        go.wait(5.0)
        with contextlib.suppress(OSError):  # the gateway stops reading, then cuts it
            terminal.sendall(wave)
        time.sleep(4.0)  # connected, reading nothing, until the gateway has cut it


async def test_a_tls_terminal_that_reads_nothing_has_its_unsent_approvals_reversed(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    """As over plain TCP (test_terminal_side.py): an approval counts as delivered only once
    the kernel took its bytes, not while they wait in the TLS layer's buffers."""
    stack = await _tls_stack(
        make_stack, tmp_path, ca, gateway__write_timeout=1.5, acquirer__timeout=5.0
    )
    codec, framing = stack.service.codec, stack.service.dialect.framing
    answer_size = len(encode_frame(framing, Frame(codec.encode("0210", {**auth(1), "39": "00"}))))
    wave = b"".join(
        encode_frame(framing, Frame(codec.encode("0200", auth(stan, terminal="TERM0009"))))
        for stan in range(1, 1501)
    )
    flood, _ = await run_blocking_terminal(stack, _never_reading_terminal, _terminal_tls(ca), wave)
    await stack.settle(lambda: stack.service.terminals.cut["write_timeout"] == 1, what="the cut")
    undeliverable = events(stack).kinds().count("undeliverable_response")
    await stack.acknowledged(undeliverable)
    holds = stack.holds()
    assert sum(hold.released for hold in holds) == undeliverable > 0
    # Approvals counted as delivered fit in the two small socket buffers (4 KB each, which
    # the kernel doubles). Counted once they reached the TLS layer's own TCP transport, about
    # 800-930 of the 1,500 were (100-116 KB): reversed never, their holds left behind.
    delivered = [hold for hold in holds if not hold.released]
    assert len(delivered) * answer_size <= 32 * 1024, len(delivered)
    assert all(hold.duplicate_reversals == 0 for hold in holds)
    await flood
