"""TLS terminals at the edges: a half-close without TLS's own close, a stop with peers still in
their handshake or reading nothing, a flood of handshakes that never finish."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme

from gateway.sim.rules import Rule
from gateway.wire.framing import Frame, FrameDecoder, encode_frame

from ..harness import Stack, StackFactory, auth, events
from .test_tls import (
    _acquirer_tls,
    _gateway_tls,
    _never_reading_terminal,
    _terminal_tls,
    _tls_stack,
    run_blocking_terminal,
    small_buffered_terminal,
)


def _halfclosing_terminal(
    port: int,
    context: ssl.SSLContext | _PlainContext,
    first: bytes,
    wave: bytes,
    read_after: float,
    go: threading.Event,
) -> bytes:
    """Sends `first` and a wave it does not read the answers of, then a TCP half-close (FIN
    without close_notify: what a terminal does with shutdown(SHUT_WR), or a crash of its TLS
    stack); reads every answer from `read_after` seconds on, until the gateway closes."""
    with small_buffered_terminal(port, context, timeout=10.0) as tls:
        go.wait(5.0)
        tls.sendall(first)
        time.sleep(0.2)
        tls.sendall(wave)
        time.sleep(0.5)  # the gateway's answers fill the buffers: it is write-blocked
        socket.socket.shutdown(tls, socket.SHUT_WR)  # TCP FIN only
        time.sleep(read_after)
        received = bytearray()
        with contextlib.suppress(OSError):
            while chunk := tls.recv(65536):
                received += chunk
        return bytes(received)


async def _half_close_then_read(
    stack: Stack, context: ssl.SSLContext | _PlainContext
) -> tuple[set[str], set[str]]:
    """A terminal that half-closes while the gateway's writes to it block (one answer comes
    1.5 s late, after the FIN), then reads all. The STANs approved that it received, and
    those whose holds the gateway kept (counted as delivered)."""
    codec, framing = stack.service.codec, stack.service.dialect.framing
    first = encode_frame(framing, Frame(codec.encode("0200", auth(1, amount=7777))))
    wave = b"".join(
        encode_frame(framing, Frame(codec.encode("0200", auth(stan)))) for stan in range(2, 1202)
    )
    terminal, _ = await run_blocking_terminal(
        stack, _halfclosing_terminal, context, first, wave, 3.0
    )
    received = await terminal
    got = {
        message.get("11") or ""
        for message in (
            codec.decode(frame.message) for frame in FrameDecoder(framing).feed(received)
        )
        if message.get("39") == "00"
    }
    await stack.settle(lambda: not stack.service.terminals.connections, what="gone")
    undeliverable = events(stack).kinds().count("undeliverable_response")
    if undeliverable:
        await stack.acknowledged(undeliverable)
    await asyncio.sleep(0.5)
    assert "000001" in {hold.key.stan for hold in stack.holds()}
    kept = {hold.key.stan or "" for hold in stack.holds() if not hold.released}
    return got, kept


_LATE_ANSWER = {
    "gateway__write_timeout": 20.0,
    "acquirer__timeout": 5.0,
    "rules": [Rule(amount_min=7777, amount_max=7777, fault="delay", seconds=1.5)],
}


async def test_an_approval_written_after_a_bare_fin_over_tls_is_reversed(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    """Plain TCP: the FIN closes the transport, a later approval is refused and reversed. Over
    TLS, asyncio's layer silently dropped later writes while its transport said it was open:
    the late approval counted as delivered, its hold left behind (_TerminalTls.eof_received)."""
    stack = await _tls_stack(make_stack, tmp_path, ca, **_LATE_ANSWER)
    got, kept = await _half_close_then_read(stack, _terminal_tls(ca))
    # Every approval the gateway counted as delivered (hold kept) reached the terminal.
    assert kept <= got, sorted(kept - got)


class _PlainContext:
    """Stands in for an SSLContext: the same terminal over plain TCP (the control case)."""

    def wrap_socket(self, raw: socket.socket, server_hostname: str) -> socket.socket:
        del server_hostname
        return socket.socket(fileno=raw.detach())


async def test_the_same_over_plain_tcp(make_stack: StackFactory) -> None:
    stack = await make_stack(**_LATE_ANSWER)
    await stack.links_up()
    got, kept = await _half_close_then_read(stack, _PlainContext())
    assert "000001" not in kept
    assert kept <= got, sorted(kept - got)


async def test_a_stop_drops_a_peer_still_in_its_handshake(
    make_stack: StackFactory,
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    stack = await _tls_stack(make_stack, tmp_path, ca, gateway__shutdown_grace=0.2)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    good = await stack.terminal(tls=_terminal_tls(ca))
    answer = await good.send("0200", auth(1))
    assert answer is not None and answer.get("39") == "00"
    pending = socket.create_connection(("127.0.0.1", stack.port))  # TCP up, no handshake yet
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await asyncio.wait_for(stack.service.shutdown(), 40)
    took = time.monotonic() - started
    pending.settimeout(2.0)
    try:
        still_open = pending.recv(1) != b""
    except TimeoutError:
        still_open = True
    except OSError:
        still_open = False
    pending.close()
    assert took < 10.0, took  # asyncio's own TLS shutdown would wait 30 s
    assert not errors, errors
    assert not stack.service.terminals.connections
    assert not still_open, "a terminal mid-handshake is left connected after shutdown"


async def test_shutdown_cuts_a_tls_terminal_that_takes_nothing(
    make_stack: StackFactory,
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    stack = await _tls_stack(
        make_stack, tmp_path, ca, gateway__shutdown_grace=0.2, acquirer__timeout=5.0
    )
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    codec, framing = stack.service.codec, stack.service.dialect.framing
    wave = b"".join(
        encode_frame(framing, Frame(codec.encode("0200", auth(stan, terminal="TERM0009"))))
        for stan in range(1, 1501)
    )
    flood, conn = await run_blocking_terminal(
        stack, _never_reading_terminal, _terminal_tls(ca), wave
    )
    await stack.settle(lambda: conn.write_blocked, what="blocked")
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.wait_for(stack.service.shutdown(), 40)
    took = time.monotonic() - started
    assert took < 10.0, took  # asyncio's own TLS shutdown would wait 30 s
    await stack.settle(lambda: conn.transport is None, 2.0, "the connection gone")
    assert not stack.service.terminals.connections
    assert not errors, errors
    await flood


async def test_peers_stuck_in_their_handshake_count_against_max_connections(
    make_stack: StackFactory,
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    """Each costs the TLS layer's buffers (~300 KB): a flood of them is refused beyond the
    limit, and each is dropped after tls_handshake_timeout."""
    stack = await _tls_stack(
        make_stack, tmp_path, ca, gateway__max_connections=2, gateway__tls_handshake_timeout=0.5
    )
    silent = [socket.create_connection(("127.0.0.1", stack.port)) for _ in range(5)]
    try:
        await stack.settle(lambda: stack.service.terminals.refused == 3, what="3 refused")
        with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
            refused = await stack.terminal(tls=_terminal_tls(ca), timeout=1.0)
            assert await refused.send("0200", auth(50), timeout=1.0) is None
        await stack.settle(
            lambda: stack.service.terminals.tls_handshakes_failed >= 2, what="the timeouts"
        )
        terminal = await stack.terminal(tls=_terminal_tls(ca))
        answer = await terminal.send("0200", auth(51))
        assert answer is not None and answer.get("39") == "00"
    finally:
        for peer in silent:
            peer.close()


async def test_an_acquirer_refusing_the_gateways_certificate_is_said_and_backed_off(
    make_stack: StackFactory, tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mutual TLS at the acquirer, the gateway without tls_cert. With TLS 1.3 the gateway's
    handshake is done before the acquirer checks the certificate: the refusal arrives as an
    alert on a link that looked up, reported as a plain close. It is said
    (acquirer_closed_before_any_answer, with a hint), and the link backs off
    instead of reconnecting at reconnect_min forever."""
    settings = _gateway_tls(tmp_path, ca)
    del settings["acquirer__tls_cert"]
    stack = await make_stack(
        simulator_tls=_acquirer_tls(ca), acquirer__reconnect_min=0.05, acquirer__reconnect_max=5.0,
        **settings,
    )  # fmt: skip
    await asyncio.sleep(1.5)
    terminal = await stack.terminal(tls=_terminal_tls(ca))
    answer = await terminal.send("0200", auth(40))
    assert answer is not None and answer.get("39") == "91"
    assert stack.requests_seen("0200") == 0
    out = capsys.readouterr().out
    assert "acquirer_closed_before_any_answer" in out and "acquirer.tls_cert" in out
    # Backing off from 0.05 s, doubling: at most about 6 rounds in 1.5 s (at reconnect_min,
    # it was 26 in 1 s).
    assert out.count("acquirer_connected") <= 8, out.count("acquirer_connected")
