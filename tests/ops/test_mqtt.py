"""The MQTT publisher against real Mosquitto brokers, with the gateway carrying real traffic.

The shared broker on 127.0.0.1:1883 (``mosquitto`` fixture) is only published to and
subscribed on, under a topic prefix of the test's own. Outages, refused credentials and TLS
use a PRIVATE mosquitto started by the test on a free port, which it kills and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from gateway.config import load_config
from gateway.ops.mqtt import MqttPublisher
from gateway.ops.sink import EventSink
from gateway.sim.rules import Rule
from tests.conftest import need_tool, port_open
from tests.e2e.harness import PAN, TRACK2, RecordingSink, Stack, StackFactory, auth

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")


def mqtt_settings(url: str, **mqtt: Any) -> Any:
    overrides = {"mqtt.url": url, **{f"mqtt.{key}": value for key, value in mqtt.items()}}
    return load_config(None, environ={}, overrides=overrides).mqtt


def unique_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


class TeeSink(RecordingSink):
    """The harness's recording sink, also feeding other sinks: the gateway's FanOut as
    app.build_components wires it, with the recording kept for the harness's waits."""

    def __init__(self, *sinks: EventSink) -> None:
        super().__init__()
        self.sinks = sinks

    def notify(self, kind: str, data: Mapping[str, Any]) -> None:
        super().notify(kind, data)
        for sink in self.sinks:
            sink.notify(kind, data)


def publish_from(stack: Stack, publisher: MqttPublisher) -> None:
    stack.service.sink = TeeSink(publisher)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Subscriber:
    """An aiomqtt client of the test's own, keeping every message under one topic filter."""

    def __init__(self, host: str, port: int, topic: str, **client: Any) -> None:
        self.client = aiomqtt.Client(host, port, **client)
        self.topic = topic
        self.messages: list[aiomqtt.Message] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = []
        for message in self.messages:
            if "/events/" in message.topic.value:
                body = orjson.loads(message.payload)  # type: ignore[arg-type]
                if kind is None or body["event"] == kind:
                    found.append(body)
        return found

    def statuses(self) -> list[tuple[dict[str, Any], bool]]:
        return [
            (orjson.loads(m.payload), m.retain)  # type: ignore[arg-type]
            for m in self.messages
            if m.topic.value.endswith("/status") and m.payload
        ]

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        await wait_until(condition, what)


async def clear_retained(host: str, port: int, topic: str) -> None:
    """Leave the shared broker as we found it: an empty retained message deletes ours."""
    async with aiomqtt.Client(host, port) as client:
        await client.publish(topic, b"", qos=1, retain=True)


# the shared broker ----------------------------------------------------------------------


@pytest.mark.services
async def test_reversal_events_arrive_in_order_masked_at_qos_1(
    mosquitto: tuple[str, int], make_stack: StackFactory
) -> None:
    host, port = mosquitto
    gateway_id = unique_id()
    base = f"iso-gateway/{gateway_id}"
    stack = await make_stack(
        rules=[Rule(mti=frozenset({"0200"}), fault="drop")], simulator_paused=True
    )
    publisher = MqttPublisher(mqtt_settings(f"mqtt://{host}:{port}", gateway_id=gateway_id))
    publish_from(stack, publisher)
    try:
        async with Subscriber(host, port, f"{base}/#") as subscriber:
            await publisher.start()
            await stack.simulator.resume()
            await stack.links_up()
            terminal = await stack.terminal()
            response = await terminal.send("0200", auth(2, track2=True))  # DE 35 + DE 52
            assert response is not None and response.get("39") == "91"  # timed out
            await stack.acknowledged()
            await subscriber.wait_for(
                lambda: bool(subscriber.events("reversal_acknowledged")), "the acknowledgement"
            )
            # A subscriber that comes later still learns the state: the status is retained.
            async with Subscriber(host, port, f"{base}/status") as late:
                await late.wait_for(lambda: bool(late.statuses()), "the retained status")
            await publisher.stop()
            await subscriber.wait_for(
                lambda: subscriber.statuses()[-1][0]["status"] == "offline", "offline"
            )
    finally:
        await publisher.stop()
        await clear_retained(host, port, f"{base}/status")

    reversal_messages = [m for m in subscriber.messages if "/events/reversal_" in m.topic.value]
    kinds = [orjson.loads(m.payload)["event"] for m in reversal_messages]  # type: ignore[arg-type]
    assert kinds == ["reversal_owed", "reversal_sent", "reversal_acknowledged"]
    assert [m.topic.value for m in reversal_messages] == [f"{base}/events/{k}" for k in kinds]
    assert all(m.qos == 1 for m in reversal_messages)
    bodies = [orjson.loads(m.payload) for m in reversal_messages]  # type: ignore[arg-type]
    assert len({body["reversal_id"] for body in bodies}) == 1
    assert all(body["masked_pan"] == "476173******0119" for body in bodies)
    assert all(body["gateway_id"] == gateway_id for body in bodies)
    assert all(body["reason"] == "timeout" for body in bodies)
    assert bodies[-1]["state"] == "acknowledged"
    seqs = [body["seq"] for body in bodies]
    assert seqs == sorted(seqs)
    [link_up] = subscriber.events("acquirer_link_up")
    assert link_up["link_id"] == 1
    assert not subscriber.events("transaction_completed")  # publish_transactions is off
    for message in subscriber.messages:
        text = bytes(message.payload).decode()  # type: ignore[arg-type]
        assert PAN not in text and TRACK2 not in text and "A1B2C3D4E5F60718" not in text

    [(online, online_retained), (offline, _)] = subscriber.statuses()
    assert online["status"] == "online" and offline["status"] == "offline"
    assert offline["reason"] == "shutdown"
    assert online["version"] and online["started_at"] == offline["started_at"]
    assert not online_retained  # a live subscriber sees it as published ...
    [(retained, is_retained)] = late.statuses()
    assert retained["status"] == "online" and is_retained  # ... a later one, as retained


LAST_WILL_SCRIPT = """
import asyncio, sys
from gateway.config import load_config
from gateway.ops.logging import configure_logging
from gateway.ops.mqtt import MqttPublisher

async def main():
    configure_logging("warning", "json")  # stderr: stdout is for "connected"
    url, gateway_id = sys.argv[1], sys.argv[2]
    overrides = {"mqtt.url": url, "mqtt.gateway_id": gateway_id}
    publisher = MqttPublisher(load_config(None, environ={}, overrides=overrides).mqtt)
    await publisher.start()
    while not publisher.connected:
        await asyncio.sleep(0.01)
    print("connected", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.services
@pytest.mark.slow
async def test_a_gateway_that_dies_goes_offline_by_its_last_will(
    mosquitto: tuple[str, int],
) -> None:
    host, port = mosquitto
    gateway_id = unique_id()
    status_topic = f"iso-gateway/{gateway_id}/status"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAST_WILL_SCRIPT,
        f"mqtt://{host}:{port}",
        gateway_id,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        async with Subscriber(host, port, status_topic) as subscriber:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 20)
            assert line.strip() == b"connected"
            await subscriber.wait_for(lambda: bool(subscriber.statuses()), "online")
            process.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
            await process.wait()
            await subscriber.wait_for(lambda: len(subscriber.statuses()) == 2, "the will")
        async with Subscriber(host, port, status_topic) as late:
            await late.wait_for(lambda: bool(late.statuses()), "the retained will")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await clear_retained(host, port, status_topic)
    [(online, _), (will, _)] = subscriber.statuses()
    assert online["status"] == "online"
    assert will["status"] == "offline" and will["reason"] == "connection_lost"
    assert will["gateway_id"] == gateway_id
    [(retained, is_retained)] = late.statuses()
    assert retained["status"] == "offline" and is_retained


@pytest.mark.services
async def test_a_stop_out_of_time_still_leaves_offline_retained(
    mosquitto: tuple[str, int],
) -> None:
    """stop() gives the queue ``stop_timeout`` to drain. Past it, the rest is dropped but the
    ``offline`` status still goes before the clean DISCONNECT (which cancels the will): a
    cancelled publisher used to disconnect cleanly with ``online`` still retained."""
    host, port = mosquitto
    gateway_id = unique_id()
    status_topic = f"iso-gateway/{gateway_id}/status"
    settings = mqtt_settings(f"mqtt://{host}:{port}", gateway_id=gateway_id, queue_size=20_000)
    publisher = MqttPublisher(settings, stop_timeout=0.01)
    await publisher.start()
    try:
        await wait_until(lambda: publisher.connected, "the publisher connected")
        for reversal_id in range(5_000):  # QoS 1 each: far more than 10 ms of PUBACKs
            publisher.notify("reversal_owed", {"reversal_id": reversal_id})
        await publisher.stop()
        assert publisher.dropped > 0, "the queue drained within the timeout: no test"
        async with Subscriber(host, port, status_topic) as late:
            await late.wait_for(lambda: bool(late.statuses()), "the retained status")
    finally:
        await publisher.stop()
        await clear_retained(host, port, status_topic)
    [(retained, is_retained)] = late.statuses()
    assert retained["status"] == "offline" and is_retained
    assert retained["reason"] == "shutdown"


# private brokers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateBroker:
    """A mosquitto of the test's own on 127.0.0.1:port, killed and restarted at will."""

    def __init__(self, binary: str, directory: Path, config: list[str]) -> None:
        """``config``: mosquitto.conf lines; ``{dir}`` stands for the broker's directory."""
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        # As root mosquitto drops to the "mosquitto" user, which cannot read tmp_path.
        user = ["user root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text(
            "\n".join(
                [
                    *user,
                    f"listener {self.port} 127.0.0.1",
                    *(c.format(dir=directory) for c in config),
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        log = (self.directory / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = (self.directory / "mosquitto.log").read_text(errors="replace")
                raise AssertionError(f"private mosquitto did not start:\n{text}")
            await asyncio.sleep(0.02)

    async def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            await asyncio.get_running_loop().run_in_executor(None, self.process.wait)
        self.process = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[..., PrivateBroker]]:
    binary = need_tool(MOSQUITTO, "mosquitto")
    brokers: list[PrivateBroker] = []

    def make(*config: str) -> PrivateBroker:
        broker = PrivateBroker(binary, tmp_path / f"broker{len(brokers)}", list(config))
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        if broker.process is not None and broker.process.poll() is None:
            broker.process.kill()
            broker.process.wait()


@contextlib.asynccontextmanager
async def running(publisher: MqttPublisher) -> AsyncIterator[MqttPublisher]:
    await publisher.start()
    try:
        yield publisher
    finally:
        await asyncio.wait_for(publisher.stop(), 10)


async def approvals(stack: Stack, first_stan: int, count: int) -> list[float]:
    """Send ``count`` sales one after another; every one must be approved. Their latencies."""
    terminal = await stack.terminal()
    latencies = []
    for stan in range(first_stan, first_stan + count):
        started = time.perf_counter()
        response = await terminal.send("0200", auth(stan))
        latencies.append(time.perf_counter() - started)
        assert response is not None and response.get("39") == "00", f"STAN {stan}"
    return latencies


def transaction_events(**mqtt: Any) -> dict[str, Any]:
    """Publish every completed transaction at QoS 1 (so ``published`` means the broker has it)
    through a small queue, reconnecting fast."""
    settings = {"publish_transactions": True, "event_qos": 1, "queue_size": 20}
    settings.update(reconnect_min=0.05, reconnect_max=0.2, **mqtt)
    return settings


@pytest.mark.services
@pytest.mark.slow
async def test_broker_killed_mid_run_changes_nothing_for_terminals(
    private_broker: Callable[..., PrivateBroker], make_stack: StackFactory
) -> None:
    broker = private_broker("allow_anonymous true")
    await broker.start()
    stack = await make_stack()
    await stack.links_up()
    settings = mqtt_settings(broker.url, gateway_id=unique_id(), **transaction_events())
    publisher = MqttPublisher(settings)
    publish_from(stack, publisher)
    async with running(publisher):
        await wait_until(lambda: publisher.connected, "the publisher to connect")
        await approvals(stack, 1, 10)
        await wait_until(lambda: publisher.published == 10, "10 events published")

        await broker.stop(signal.SIGKILL)
        await wait_until(lambda: not publisher.connected, "the publisher to see the outage")
        # Every one approved: had the transaction path waited for the dead broker, the
        # gateway's own acquirer timeout would have declined them (no timing assert needed).
        await approvals(stack, 11, 30)
        assert publisher.queued == 20  # what the queue holds waits for the broker ...
        assert publisher.dropped == 10  # ... the rest is dropped (the newest) and counted
        assert publisher.connections == 1

        await broker.start()  # same port
        await wait_until(
            lambda: publisher.connected and publisher.queued == 0, "reconnection and flush"
        )
        assert publisher.connections == 2
        assert publisher.published == 30  # the 20 queued during the outage went out
        await approvals(stack, 41, 5)
        await wait_until(lambda: publisher.published == 35, "events after the outage")
    assert publisher.dropped == 10


@pytest.mark.services
@pytest.mark.slow
async def test_events_queued_during_an_outage_reach_subscribers_after_it(
    private_broker: Callable[..., PrivateBroker], make_stack: StackFactory
) -> None:
    # SIGTERM: the broker saves its sessions, so our persistent subscriber's subscription
    # outlives the restart and the broker keeps for it what is published before it is back.
    broker = private_broker(
        "allow_anonymous true", "persistence true", "persistence_location {dir}/"
    )
    await broker.start()
    stack = await make_stack()
    await stack.links_up()
    gateway_id = unique_id()
    publisher = MqttPublisher(
        mqtt_settings(broker.url, gateway_id=gateway_id, **transaction_events())
    )
    publish_from(stack, publisher)
    topic = f"iso-gateway/{gateway_id}/events/transaction_completed"
    session = {"identifier": unique_id(), "clean_session": False}
    async with running(publisher):
        await wait_until(lambda: publisher.connected, "the publisher to connect")
        async with Subscriber("127.0.0.1", broker.port, topic, **session) as before:
            await approvals(stack, 1, 10)
            await before.wait_for(lambda: len(before.events()) == 10, "10 events")
        await broker.stop(signal.SIGTERM)
        await wait_until(lambda: not publisher.connected, "the publisher to see the outage")
        await approvals(stack, 11, 30)
        await broker.start()
        await wait_until(lambda: publisher.queued == 0, "the queue to be flushed")
        await approvals(stack, 41, 5)
        async with Subscriber("127.0.0.1", broker.port, topic, **session) as after:
            await after.wait_for(
                lambda: {e["seq"] for e in after.events()} >= {*range(11, 31), *range(41, 46)},
                "events 11-30 and 41-45",
            )
    assert [e["seq"] for e in before.events()] == list(range(1, 11))
    # 11-30 waited in the queue; 31-40 found it full and were dropped: the gap shows it.
    # QoS 1 is at least once: the broker may deliver again what the first subscriber had not
    # acknowledged when it left (seq <= 10), so compare what arrived after the outage.
    after_outage = [e for e in after.events() if e["seq"] > 10]
    assert sorted({e["seq"] for e in after_outage}) == [*range(11, 31), *range(41, 46)]
    in_order = list(dict.fromkeys(e["seq"] for e in after_outage))
    assert in_order == sorted(in_order)  # queued events keep their order
    stans = {e["seq"]: e["stan"] for e in after_outage}
    assert [stans[n] for n in range(11, 31)] == [f"{n:06d}" for n in range(11, 31)]
    assert publisher.dropped == 10


@pytest.mark.services
async def test_a_closed_port_from_the_start_changes_nothing_for_terminals(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    await stack.links_up()
    settings = mqtt_settings(
        f"mqtt://127.0.0.1:{free_port()}",
        gateway_id=unique_id(),
        **transaction_events(queue_size=5),
    )
    publisher = MqttPublisher(settings)
    publish_from(stack, publisher)
    async with running(publisher):
        await approvals(stack, 1, 12)
        assert not publisher.connected
        assert publisher.connections == 0
        assert (publisher.queued, publisher.dropped, publisher.published) == (5, 7, 0)
        await wait_until(lambda: publisher.last_error is not None, "a failed attempt")
        assert "refused" in (publisher.last_error or "").lower()
    # Stopped with the broker still away: the five queued events are lost, and counted.
    assert (publisher.queued, publisher.dropped) == (0, 12)


@pytest.mark.services
async def test_a_broker_refusing_our_credentials_changes_nothing_for_terminals(
    private_broker: Callable[..., PrivateBroker], make_stack: StackFactory, tmp_path: Path
) -> None:
    passwords = password_file(tmp_path, "gw", "right-password")
    broker = private_broker("allow_anonymous false", f"password_file {passwords}")
    await broker.start()
    stack = await make_stack()
    await stack.links_up()
    url = f"mqtt://gw:wrong-password@127.0.0.1:{broker.port}"
    refused = MqttPublisher(mqtt_settings(url, gateway_id=unique_id(), **transaction_events()))
    publish_from(stack, refused)
    async with running(refused):
        await approvals(stack, 1, 8)
        assert not refused.connected and refused.connections == 0
        await wait_until(lambda: refused.last_error is not None, "a refused attempt")
        assert "authori" in (refused.last_error or "").lower()  # refused, not unreachable
        assert refused.queued == 8
    # The broker itself is fine: the right password (from the config this time) gets in.
    accepted = MqttPublisher(
        mqtt_settings(
            f"mqtt://gw@127.0.0.1:{broker.port}", gateway_id=unique_id(), password="right-password"
        )
    )
    async with running(accepted):
        await wait_until(lambda: accepted.connected, "the right password to connect")


def password_file(directory: Path, user: str, password: str) -> Path:
    tool = need_tool(shutil.which("mosquitto_passwd"), "mosquitto_passwd")
    path = directory / "passwords"
    subprocess.run([tool, "-c", "-b", str(path), user, password], check=True, capture_output=True)
    return path


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    openssl = need_tool(shutil.which("openssl"), "openssl")
    ca_key, ca, key, csr, cert = (
        directory / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test-ca"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [
            *("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"),
            *("-out", cert, "-days", "1", "-extfile", ext),
        ],
    ):
        subprocess.run([openssl, *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


@pytest.mark.services
async def test_mqtts_with_credentials_in_the_url(
    private_broker: Callable[..., PrivateBroker], tmp_path: Path
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    passwords = password_file(tmp_path, "gw", "p@ss word")
    broker = private_broker(
        f"cafile {ca}",
        f"certfile {cert}",
        f"keyfile {key}",
        "allow_anonymous false",
        f"password_file {passwords}",
    )
    await broker.start()
    gateway_id = unique_id()
    url = f"mqtts://gw:p%40ss%20word@127.0.0.1:{broker.port}"
    publisher = MqttPublisher(mqtt_settings(url, gateway_id=gateway_id, tls_ca=str(ca)))
    async with running(publisher):
        await wait_until(lambda: publisher.connected, "a TLS connection")
        publisher.notify("reversal_failed", {"reversal_id": 1, "masked_pan": "476173******0119"})
        await wait_until(lambda: publisher.published == 1, "the event")
    # Without our CA the broker's certificate is not trusted: never connected, never fatal.
    untrusted = MqttPublisher(mqtt_settings(url, gateway_id=unique_id()))
    async with running(untrusted):
        await wait_until(lambda: untrusted.last_error is not None, "a failed attempt")
        assert not untrusted.connected and untrusted.connections == 0
        assert "certificate" in (untrusted.last_error or "").lower()
