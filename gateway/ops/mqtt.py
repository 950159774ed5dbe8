"""MQTT events: the gateway's news for other systems, published with aiomqtt.

Topics, under ``{topic_prefix}/{gateway_id}``:
- ``events/{kind}``: one JSON object per event (reversal owed / sent / acknowledged / failed /
  cancelled / requeued at ``reversal_qos``; late and undeliverable responses, acquirer link
  up / down, and with ``publish_transactions`` every completed transaction at ``event_qos``);
- ``status``: retained; ``online`` once connected, ``offline`` on a clean stop, and the same
  ``offline`` as the last will when the connection dies.

The transaction path only calls ``notify``, which appends to a bounded queue and returns.
When the queue is full the NEW event is dropped (counted in ``dropped``): what was already
queued keeps its order and is published once the broker is back, and every event carries
``seq``, so a consumer sees where the gap is. A background task drains the queue, reconnects
with exponential backoff and jitter, and never lets a broker failure (down, refusing our
credentials, TLS trouble) reach the terminals: the journal is the truth, events are news.

Delivery: an event leaves the queue only once published (QoS 1: acknowledged by the broker),
so a connection lost mid-publish repeats it after the reconnect: at least once, consumers
deduplicate by ``(gateway_id, seq)``. ``seq`` restarts at 1 with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import orjson
import structlog

from gateway import __version__
from gateway.config import ConfigError, MqttSection, client_tls_context, tls_key_names
from gateway.core import notices
from gateway.ops.logging import redact_value
from gateway.ops.sink import ACQUIRER_LINK_DOWN, ACQUIRER_LINK_UP

log = structlog.get_logger("gateway.mqtt")

REVERSAL_KINDS = (
    notices.REVERSAL_OWED,
    notices.REVERSAL_SENT,
    notices.REVERSAL_ACKNOWLEDGED,
    notices.REVERSAL_FAILED,
    notices.REVERSAL_CANCELLED,
    notices.REVERSAL_REQUEUED,
)
OTHER_KINDS = (
    notices.LATE_RESPONSE,
    notices.UNDELIVERABLE_RESPONSE,
    ACQUIRER_LINK_UP,
    ACQUIRER_LINK_DOWN,
)
MQTT_PORT = 1883
MQTTS_PORT = 8883
OPERATION_TIMEOUT = 10.0  # seconds for a CONNACK or a PUBACK
# A connection that lasted this long ended an outage (its loss starts a new one).
STABLE_SECONDS = 10.0
STOP_TIMEOUT = 2.0  # seconds stop() gives the queue to drain before going offline
OFFLINE_TIMEOUT = 1.0  # then, seconds for the offline status alone (the rest is dropped)


class MqttConfigError(ValueError):
    """The ``[mqtt]`` settings cannot be used; the message names the key and never repeats
    the URL (it may hold a password)."""


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # what logs show: never the credentials
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> Broker:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, port 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise MqttConfigError(f"mqtt.url must start with mqtt:// or mqtts://, not {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError:
        raise MqttConfigError("mqtt.url: the port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise MqttConfigError("mqtt.url names no host (mqtt://HOST[:PORT])")
    tls = parts.scheme == "mqtts"
    return Broker(
        host=parts.hostname,
        port=port or (MQTTS_PORT if tls else MQTT_PORT),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def broker_of(settings: MqttSection) -> Broker:
    """The URL's broker, with the credentials of ``mqtt.username`` / ``mqtt.password`` if set."""
    broker = parse_broker_url(settings.url)
    password = settings.password.get_secret_value()
    return Broker(
        broker.host,
        broker.port,
        broker.tls,
        settings.username or broker.username,
        password or broker.password,
    )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# (seq, time of the event, topic, qos, kind, data): built on the transaction path, so a tuple.
_Queued = tuple[int, float, str, int, str, Mapping[str, Any]]


class MqttPublisher:
    """An EventSink and a Component: ``notify`` queues, ``start``/``stop`` run the publisher.

    ``connected`` and ``dropped`` (and ``published``, ``queued``) are read by the metrics.
    """

    def __init__(
        self,
        settings: MqttSection,
        *,
        version: str = __version__,
        started_at: float | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.broker = broker_of(settings)
        self.gateway_id = settings.gateway_id
        self.client_id = settings.client_id or f"iso-gateway-{settings.gateway_id}"
        base = f"{settings.topic_prefix}/{settings.gateway_id}"
        self.status_topic = f"{base}/status"
        kinds = dict.fromkeys(REVERSAL_KINDS, settings.reversal_qos)
        kinds.update(dict.fromkeys(OTHER_KINDS, settings.event_qos))
        if settings.publish_transactions:
            kinds[notices.TRANSACTION_COMPLETED] = settings.event_qos
        self._routes = {kind: (f"{base}/events/{kind}", qos) for kind, qos in kinds.items()}
        self._settings = settings
        self._version = version
        self._started_at = time.time() if started_at is None else started_at
        self._stop_timeout = stop_timeout
        self._capacity = settings.queue_size
        self._queue: deque[_Queued] = deque()
        self._seq = 0
        self._overflowing = False
        self._wakeup = asyncio.Event()  # something was queued, or the connection ended
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._abandoning = False  # stop() ran out of time: what is queued is not published
        self._task: asyncio.Task[None] | None = None
        self._tls_context: ssl.SSLContext | None = None
        self.connected = False
        self.connections = 0  # successful connects, so reconnects = connections - 1
        self._connected_at = 0.0  # when the last connection came up (monotonic)
        self.last_error: str | None = None  # why the last connection failed or ended
        self.dropped = 0
        self.published = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def topic_of(self, kind: str) -> str | None:
        route = self._routes.get(kind)
        return route[0] if route else None

    # the transaction path ---------------------------------------------------------------

    def notify(self, kind: str, data: Mapping[str, Any]) -> None:
        route = self._routes.get(kind)
        if route is None:
            return
        # Notices are fresh dicts nobody changes once the core's step returns: no copy.
        self._seq += 1
        if len(self._queue) >= self._capacity:
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning("mqtt_queue_full", queue_size=self._capacity, dropping="newest")
            return
        self._queue.append((self._seq, time.time(), route[0], route[1], kind, data))
        self._wakeup.set()

    # Component --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.broker.tls:
            self._tls_context = self._make_tls_context()  # reads files: once, before serving
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-publisher")

    async def stop(self) -> None:
        """Publish what is queued (within ``stop_timeout``), then ``offline``, then disconnect
        cleanly, so the broker does not send the last will."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._stop_requested.set()
        self._wakeup.set()
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(task), self._stop_timeout)
        except TimeoutError:
            # Out of time: drop the queue, but still publish offline before the clean
            # DISCONNECT (which cancels the will): cancelled at once, the retained status
            # would stay "online" for good.
            timed_out = True
            self._abandoning = True
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), OFFLINE_TIMEOUT)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left = len(self._queue)
        if left or timed_out:
            # The broker away at stop (or too slow): what is still queued is lost; said and
            # counted like any other drop.
            self.dropped += left
            self._queue.clear()
            log.warning("mqtt_events_unpublished_at_stop", unpublished=left, timed_out=timed_out)

    def _make_tls_context(self) -> ssl.SSLContext:
        """A missing or bad file is a configuration error: said at start, not retried."""
        settings = self._settings
        try:
            return client_tls_context(
                tls_key_names("mqtt"), settings.tls_ca, settings.tls_cert, settings.tls_key
            )
        except ConfigError as error:
            raise MqttConfigError(str(error)) from None

    # the background task ----------------------------------------------------------------

    async def _run(self) -> None:
        settings = self._settings
        delay = settings.reconnect_min
        failures = 0
        while not self._stopping:
            connections = self.connections
            try:
                await self._session()
                return  # stopped cleanly
            except Exception as error:  # whatever it is, the answer is: reconnect later
                was_connected = self.connections > connections
                self.last_error = _describe(error)
                # A connection that held is a new outage now; one dropped at once (another
                # client with our id, a broker refusing us after CONNACK) is the same outage:
                # the backoff goes on growing and no new warning is logged.
                held = was_connected and time.monotonic() - self._connected_at >= STABLE_SECONDS
                failures = 1 if held else failures + 1
                if held:
                    delay = settings.reconnect_min
                # Jitter: a fleet of gateways does not reconnect in step after a broker restart.
                wait = random.uniform(delay / 2, delay)
                # One warning per outage; the retries that follow are debug lines.
                report = log.warning if failures == 1 else log.debug
                report(
                    "mqtt_connection_lost" if was_connected else "mqtt_connect_failed",
                    broker=str(self.broker),
                    error=self.last_error,
                    retry_in=round(wait, 2),
                    queued=len(self._queue),
                )
                delay = min(delay * 2, settings.reconnect_max)
            if not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), wait)

    async def _session(self) -> None:
        """One connection: online, then publish until stopped (clean) or the link dies."""
        settings = self._settings
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=self.broker.username,
            password=self.broker.password,
            identifier=self.client_id,
            will=aiomqtt.Will(self.status_topic, self._will, qos=1, retain=True),
            keepalive=settings.keepalive,
            timeout=OPERATION_TIMEOUT,
            tls_context=self._tls_context,
            logger=logging.getLogger("aiomqtt"),
        )
        async with client:
            self.connected = True
            self.connections += 1
            self._connected_at = time.monotonic()
            log.info("mqtt_connected", broker=str(self.broker), client_id=self.client_id)
            lost = asyncio.ensure_future(self._until_lost(client))
            try:
                online = self._status("online")
                await self._publish(client, lost, self.status_topic, online, 1, retain=True)
                await self._drain(client, lost)
                offline = self._status("offline", "shutdown")
                await self._publish(client, lost, self.status_topic, offline, 1, retain=True)
            finally:
                lost.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await lost
                self.connected = False
        log.info("mqtt_disconnected", broker=str(self.broker), unpublished=len(self._queue))

    async def _until_lost(self, client: aiomqtt.Client) -> None:
        """Raises MqttError when the connection ends (we subscribe to nothing: the message
        iterator is aiomqtt's public way to hear of a disconnection)."""
        try:
            async for _ in client.messages:
                pass
        finally:
            self._wakeup.set()

    async def _drain(self, client: aiomqtt.Client, lost: asyncio.Future[None]) -> None:
        queue = self._queue
        while True:
            while queue and not self._abandoning:
                seq, at, topic, qos, kind, data = queue[0]
                await self._publish(client, lost, topic, self._payload(seq, at, kind, data), qos)
                queue.popleft()  # only now: an event lost with the connection goes again
                self.published += 1
            self._overflowing = False
            if self._stopping:
                return
            self._wakeup.clear()
            if lost.done():
                lost.result()  # raises why the connection ended
            await self._wakeup.wait()

    async def _publish(
        self,
        client: aiomqtt.Client,
        lost: asyncio.Future[None],
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
    ) -> None:
        # aiomqtt waits for a PUBACK until its timeout even when the connection is gone:
        # racing the publish against `lost` notices a dead broker at once.
        publishing = asyncio.ensure_future(client.publish(topic, payload, qos, retain))
        try:
            await asyncio.wait((publishing, lost), return_when=asyncio.FIRST_COMPLETED)
            if not publishing.done():
                lost.result()
            publishing.result()
        finally:
            if not publishing.done():
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await publishing

    # payloads ---------------------------------------------------------------------------

    def _payload(self, seq: int, at: float, kind: str, data: Mapping[str, Any]) -> bytes:
        # The core's notices hold masked PANs only; every string is redacted all the same.
        body = {key: redact_value(value) for key, value in data.items()}
        body.update(event=kind, gateway_id=self.gateway_id, seq=seq, time=_iso(at))
        return orjson.dumps(body)

    def _status(self, status: str, reason: str | None = None) -> bytes:
        body = self._status_body(status)
        body["time"] = _iso(time.time())
        if reason is not None:
            body["reason"] = reason
        return orjson.dumps(body)

    @property
    def _will(self) -> bytes:
        """What the broker publishes for us when the connection dies (written at connect
        time, so it carries no time of its own)."""
        body = self._status_body("offline")
        body["reason"] = "connection_lost"
        return orjson.dumps(body)

    def _status_body(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "gateway_id": self.gateway_id,
            "version": self._version,
            "started_at": _iso(self._started_at),
        }


def _describe(error: BaseException) -> str:
    """aiomqtt wraps the cause ("Disconnected during message iteration"): show both."""
    text = str(error) or type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text
