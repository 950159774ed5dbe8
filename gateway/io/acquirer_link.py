"""One link to the acquirer: connect with backoff and failover, sign on, echo test when idle.

The link owns only the connection. Financial messages go to the listener (the service), which
hands them to the core; the link consumes just network management: the answers to its own
echo tests and sign-on (0810), and the acquirer's own 0800s, which it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.config import ConfigError
from gateway.core.clock import transmission_time
from gateway.io.framed import FramedProtocol
from gateway.wire.codec import Codec, CodecError, FieldView
from gateway.wire.framing import Frame, Framing, FramingError, swap_tpdu

log = structlog.get_logger("gateway.acquirer_link")

ECHO_TEST = "301"
SIGN_ON = "001"
SIGN_OFF = "002"
# DE 70 of an acquirer's 0800 that the link answers 00 itself.
_ANSWERED_NETWORK_CODES = frozenset({ECHO_TEST, SIGN_ON, SIGN_OFF})


@dataclass(frozen=True, slots=True)
class LinkSettings:
    addresses: Sequence[tuple[str, int]]  # failover order, the first is the primary
    connect_timeout: float = 5.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    echo_interval: float = 30.0  # 0 = no echo tests
    echo_timeout: float = 10.0
    sign_on: bool = False
    # TPDU and header of the link's own 0800s; None: the framing needs parts nobody configured
    # (acquirer.tpdu / acquirer.header), so the link sends none (no echo tests).
    own_frame_parts: tuple[bytes, bytes] | None = (b"", b"")
    tls: ssl.SSLContext | None = None  # None: plain TCP
    tls_server_name: str = ""  # name the acquirer's certificate must carry; "": the host dialled


class LinkListener(Protocol):
    def on_link_up(self, link: AcquirerLink) -> None: ...
    def on_link_down(self, link: AcquirerLink) -> None: ...
    def on_link_message(self, link: AcquirerLink, frame: Frame, view: FieldView) -> None: ...
    def on_link_format_error(self, link: AcquirerLink, error: Exception) -> None: ...


# A connection that lasts this long, or brings any message, counts as having worked: the
# backoff starts afresh after it ends.
_STABLE_SECONDS = 5.0


class _LinkProtocol(FramedProtocol):
    def __init__(self, link: AcquirerLink, framing: Framing) -> None:
        super().__init__(framing)
        self._link = link

    def on_frame(self, frame: Frame) -> None:
        self._link._on_frame(frame)

    def on_framing_error(self, error: FramingError) -> None:
        self._link._listener.on_link_format_error(self._link, error)

    def on_disconnected(self, exc: Exception | None) -> None:
        self._link._on_disconnected(exc)


class AcquirerLink:
    def __init__(
        self,
        link_id: int,
        settings: LinkSettings,
        framing: Framing,
        codec: Codec,
        listener: LinkListener,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.link_id = link_id
        self.settings = settings
        self._framing = framing
        self._codec = codec
        self._listener = listener
        self._rng = rng or random.Random()
        self._protocol: _LinkProtocol | None = None
        self._up = False
        self._stopping = False
        self._last_received = 0.0
        self._connected_at = 0.0  # when the current connection was made
        self._own_stans: dict[str, asyncio.Future[str]] = {}
        self._stan = self._rng.randrange(1, 999_999)
        self.address: tuple[str, int] | None = None
        self.reconnects = 0
        self.echo_failures = 0
        self._task: asyncio.Task[None] | None = None
        # Whether it can send its own 0800s at all: framing parts known, DE 70 in the dialect.
        why_not = self._why_no_network_management()
        self._echo_interval = settings.echo_interval if why_not is None else 0.0
        if why_not is not None and settings.sign_on:
            raise ConfigError(f"acquirer.sign_on: no sign-on can be sent: {why_not}")
        if why_not is not None and settings.echo_interval > 0:
            log.warning("acquirer_echo_off", link=link_id, reason=why_not)

    # public -------------------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self._up

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"link-{self.link_id}"
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._protocol is not None:
            self._protocol.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def address_text(self) -> str | None:
        """HOST:PORT of the address connected last, None before the first connection."""
        return f"{self.address[0]}:{self.address[1]}" if self.address else None

    @property
    def connection(self) -> FramedProtocol | None:
        """The current connection, if any (for its addresses)."""
        return self._protocol

    def send(self, frame: Frame) -> bool:
        """Write a frame; False when the link is not up (nothing was written)."""
        protocol = self._protocol
        if not self._up or protocol is None:
            return False
        return protocol.write_frame(frame)

    # connection lifecycle ------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for can swallow a cancel that lands as a connect fails.
                raise asyncio.CancelledError
            connected = await self._connect_any()
            if connected:
                await self._serve()
                if self._stopping:
                    return
                self.reconnects += 1
                if self._connection_worked():
                    attempt = 0  # reconnect at once, back off afresh
                # else: dropped before the acquirer said anything (a refused TLS client
                # certificate, a host that accepts and hangs up): the backoff keeps growing.
            # Exponential backoff with full jitter, so that many gateways do not reconnect
            # to a recovering acquirer in lock step.
            delay = min(self.settings.reconnect_max, self.settings.reconnect_min * 2**attempt)
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(self._rng.uniform(self.settings.reconnect_min / 2, delay))

    async def _connect_any(self) -> bool:
        loop = asyncio.get_running_loop()
        tls = self.settings.tls
        for host, port in self.settings.addresses:
            try:
                _, protocol = await asyncio.wait_for(  # the TLS handshake included
                    loop.create_connection(
                        lambda: _LinkProtocol(self, self._framing),
                        host,
                        port,
                        ssl=tls,
                        server_hostname=(self.settings.tls_server_name or host) if tls else None,
                    ),
                    self.settings.connect_timeout,
                )
            except (OSError, TimeoutError) as error:
                # A certificate the gateway refuses will not mend itself: said louder than a
                # host that is down.
                refused = isinstance(error, ssl.SSLError)
                (log.warning if refused else log.info)(
                    "acquirer_tls_failed" if refused else "acquirer_connect_failed",
                    link=self.link_id,
                    address=f"{host}:{port}",
                    error=str(error) or type(error).__name__,
                )
                continue
            if self._stopping:
                # Python 3.11's wait_for can swallow a cancel that races with the connect
                # completing: never keep a connection made after stop() was called.
                protocol.abort()
                return False
            self._protocol = protocol
            self.address = (host, port)
            self._last_received = self._connected_at = time.monotonic()
            log.info("acquirer_connected", link=self.link_id, address=f"{host}:{port}")
            return True
        return False

    async def _serve(self) -> None:
        protocol = self._protocol
        assert protocol is not None
        try:
            if self.settings.sign_on and not await self._network_management(SIGN_ON):
                log.warning("acquirer_sign_on_failed", link=self.link_id)
                protocol.abort()
                return
            if protocol.is_open:
                self._up = True
                self._listener.on_link_up(self)
            await self._keep_alive(protocol)
        finally:
            await protocol.closed
            if self._up:
                self._up = False  # send() refuses from here on
                # The listener still sees the connection (its addresses, for the tap).
                self._listener.on_link_down(self)
            self._protocol = None
            for future in self._own_stans.values():
                future.cancel()
            self._own_stans.clear()

    async def _keep_alive(self, protocol: _LinkProtocol) -> None:
        """Echo-test an idle link; an unanswered echo declares it dead."""
        interval = self._echo_interval
        while protocol.is_open:
            if interval <= 0:
                await protocol.closed
                return
            idle = time.monotonic() - self._last_received
            if idle < interval:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(protocol.closed), interval - idle)
                continue
            if not await self._network_management(ECHO_TEST):
                self.echo_failures += 1
                log.warning("acquirer_echo_unanswered", link=self.link_id)
                protocol.abort()
                return

    async def _network_management(self, code: str) -> bool:
        """Send an 0800 with DE 70 = code and wait for its 0810."""
        protocol = self._protocol
        if protocol is None:
            return False
        self._stan = self._stan % 999_999 + 1
        stan = f"{self._stan:06d}"
        tpdu, header = self.settings.own_frame_parts or (b"", b"")
        try:
            frame = Frame(self._network_message(stan, code), tpdu, header)
            protocol.write_frame(frame)
        except (CodecError, ValueError) as error:  # checked at start: not expected here
            log.error("network_management_not_sent", link=self.link_id, error=str(error))
            return False  # treated as unanswered: the link reconnects, after a backoff
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._own_stans[stan] = future
        try:
            response_code = await asyncio.wait_for(future, self.settings.echo_timeout)
        except (TimeoutError, asyncio.CancelledError):
            return False
        finally:
            self._own_stans.pop(stan, None)
        return response_code == "00"

    def _network_message(self, stan: str, code: str) -> bytes:
        fields = {"7": transmission_time(time.time()), "11": stan, "70": code}
        return self._codec.encode("0800", fields)

    def _why_no_network_management(self) -> str | None:
        if self.settings.own_frame_parts is None:
            return "the dialect's framing needs acquirer.tpdu / acquirer.header for it"
        try:
            self._network_message("000001", ECHO_TEST)
        except CodecError as error:
            return f"the dialect cannot encode an 0800 with DE 7, 11 and 70 ({error})"
        return None

    # incoming -----------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        self._last_received = time.monotonic()
        if frame.is_keepalive:
            return
        try:
            view = self._codec.scan(frame.message)
            mti = view.mti
            if mti == "0810":
                future = self._own_stans.get(view.get("11") or "")
                if future is not None:
                    if not future.done():
                        future.set_result(view.get("39") or "")
                    return
            if mti == "0800":
                self._answer_network_management(frame, view)
                return
        except CodecError as error:
            # Counted and dropped: raised out of data_received, it would close the link and
            # lose the answers that came in the same read.
            self._listener.on_link_format_error(self, error)
            return
        self._listener.on_link_message(self, frame, view)

    def _answer_network_management(self, frame: Frame, view: FieldView) -> None:
        """The acquirer's own 0800: an echo test (or its sign-on/off) is answered 0810 with
        00, as a host drops a link that leaves its echo tests unanswered; anything else (key
        exchange, ...) is refused with 12, which this gateway does not manage."""
        code = view.get("70") or ""
        response_code = "00" if code in _ANSWERED_NETWORK_CODES else "12"
        fields = {key: value for key in ("7", "11", "70") if (value := view.get(key))}
        fields["39"] = response_code
        try:
            message = self._codec.encode("0810", fields)
            tpdu = swap_tpdu(frame.tpdu) if frame.tpdu else b""
            if self._protocol is not None:
                self._protocol.write_frame(Frame(message, tpdu, frame.header))
        except (CodecError, ValueError) as error:
            log.warning(
                "acquirer_network_management_unanswered", link=self.link_id, error=str(error)
            )
            return
        if response_code != "00":
            log.warning("acquirer_network_management_refused", link=self.link_id, code=code)

    def _connection_worked(self) -> bool:
        """The connection brought a message, or lasted ``_STABLE_SECONDS``."""
        return (
            self._last_received > self._connected_at
            or time.monotonic() - self._connected_at >= _STABLE_SECONDS
        )

    def _on_disconnected(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl.SSLError):
            log.warning(
                "acquirer_tls_failed", link=self.link_id, address=self.address_text, error=str(exc)
            )
        elif self.settings.tls is not None and not self._connection_worked():
            # With TLS 1.3 the gateway's handshake is done before the acquirer has checked
            # the gateway's certificate: a refusal (none, or one it does not trust) ends a
            # connection that looked up, before the acquirer has said anything, and asyncio
            # reports it as an ordinary close.
            log.warning(
                "acquirer_closed_before_any_answer",
                link=self.link_id,
                address=self.address_text,
                error=str(exc) if exc else None,
                hint="TLS: did the acquirer refuse the gateway's certificate (acquirer.tls_cert)?",
            )
        else:
            log.info("acquirer_disconnected", link=self.link_id, error=str(exc) if exc else None)
