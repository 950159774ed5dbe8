"""The MQTT publisher without a broker: URLs, topics, the bounded queue and the payloads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiomqtt
import orjson
import pytest

from gateway.config import ConfigError, load_config
from gateway.ops import mqtt as mqtt_module
from gateway.ops.mqtt import Broker, MqttConfigError, MqttPublisher, broker_of, parse_broker_url

PAN = "4761739001010119"


def publisher(**mqtt: Any) -> MqttPublisher:
    settings = {"mqtt.url": "mqtt://127.0.0.1:1883", **{f"mqtt.{k}": v for k, v in mqtt.items()}}
    return MqttPublisher(load_config(None, environ={}, overrides=settings).mqtt)


def queued(pub: MqttPublisher) -> list[tuple[Any, ...]]:
    return list(pub._queue)


def payload_of(pub: MqttPublisher, index: int = 0) -> dict[str, Any]:
    seq, at, _topic, _qos, kind, data = pub._queue[index]
    result: dict[str, Any] = orjson.loads(pub._payload(seq, at, kind, data))
    return result


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", Broker("broker", 1883, False)),
        ("mqtt://10.0.0.5:1884", Broker("10.0.0.5", 1884, False)),
        ("mqtts://broker", Broker("broker", 8883, True)),
        ("mqtts://gw:p%40ss@broker:8884", Broker("broker", 8884, True, "gw", "p@ss")),
        ("mqtt://gw@[::1]:1883", Broker("::1", 1883, False, "gw", None)),
    ],
)
def test_broker_urls(url: str, expected: Broker) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["http://gw:hunter2@broker", "mqtt://gw:hunter2@", "mqtt://gw:hunter2@b:http", "b:hunter2"],
)
def test_bad_urls_are_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(MqttConfigError, match=r"mqtt\.url") as caught:
        parse_broker_url(url)
    assert "hunter2" not in str(caught.value)


def test_config_refuses_a_bad_url_without_showing_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={}, overrides={"mqtt.url": "mqtt://gw:hunter2@broker:99999"})
    assert "mqtt.url" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_credentials_in_the_config_win_over_the_url_and_never_show() -> None:
    config = load_config(
        None,
        environ={"ISO_GATEWAY__MQTT__PASSWORD": "from-env"},
        overrides={"mqtt.url": "mqtts://url-user:url-pass@broker", "mqtt.username": "cfg"},
    )
    broker = broker_of(config.mqtt)
    assert (broker.username, broker.password) == ("cfg", "from-env")
    for text in (str(broker), repr(broker), repr(config), str(config)):
        assert "from-env" not in text and "url-pass" not in text
    assert str(broker) == "mqtts://broker:8883"


@pytest.mark.parametrize(
    ("key", "value"), [("gateway_id", "a/b"), ("gateway_id", "gw+"), ("topic_prefix", "x/#")]
)
def test_topic_parts_cannot_hold_wildcards_or_extra_levels(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"mqtt.{key}"):
        load_config(None, environ={}, overrides={f"mqtt.{key}": value})


def test_topics_and_qos_per_kind() -> None:
    pub = publisher(topic_prefix="acme/payments", gateway_id="gw7")
    assert pub.status_topic == "acme/payments/gw7/status"
    assert pub.topic_of("reversal_owed") == "acme/payments/gw7/events/reversal_owed"
    assert pub.topic_of("transaction_completed") is None  # publish_transactions is off
    assert pub.topic_of("duplicate_request") is None
    for kind in ("reversal_owed", "reversal_sent", "reversal_acknowledged", "reversal_failed"):
        pub.notify(kind, {})
    for kind in ("late_response", "undeliverable_response", "acquirer_link_down"):
        pub.notify(kind, {})
    pub.notify("transaction_completed", {})  # not published: not even counted
    assert [(item[4], item[3]) for item in queued(pub)] == [
        ("reversal_owed", 1),
        ("reversal_sent", 1),
        ("reversal_acknowledged", 1),
        ("reversal_failed", 1),
        ("late_response", 0),
        ("undeliverable_response", 0),
        ("acquirer_link_down", 0),
    ]


def test_transactions_are_published_when_asked_at_the_configured_qos() -> None:
    pub = publisher(publish_transactions=True, event_qos=1, reversal_qos=2)
    pub.notify("transaction_completed", {"outcome": "approved"})
    pub.notify("reversal_owed", {})
    assert [item[3] for item in queued(pub)] == [1, 2]


def test_a_full_queue_drops_the_newest_and_counts_it() -> None:
    pub = publisher(queue_size=3)
    for n in range(5):
        pub.notify("reversal_owed", {"reversal_id": n})
    assert pub.dropped == 2
    assert pub.queued == 3
    assert [item[5]["reversal_id"] for item in queued(pub)] == [0, 1, 2]
    # seq still counts the dropped ones: a consumer sees the gap after 3.
    pub._queue.popleft()
    pub.notify("reversal_owed", {"reversal_id": 5})
    assert [item[0] for item in queued(pub)] == [2, 3, 6]


def test_payload_is_the_notice_plus_an_envelope_with_every_string_redacted() -> None:
    pub = publisher(gateway_id="gw9")
    data = {
        "reversal_id": 4,
        "masked_pan": "476173******0119",
        "reason": f"free text with {PAN} and {PAN}=25122011234567890 in it",
        "attempts": 2,
        "nested": {"note": PAN},
    }
    pub.notify("reversal_owed", data)
    body = payload_of(pub)
    assert body["event"] == "reversal_owed"
    assert body["gateway_id"] == "gw9"
    assert body["seq"] == 1
    assert body["time"].endswith("Z")
    assert body["reversal_id"] == 4 and body["attempts"] == 2
    assert body["masked_pan"] == "476173******0119"
    text = orjson.dumps(body).decode()
    assert PAN not in text and "25122011234567890" not in text
    assert "476173******0119=<track data removed>" in body["reason"]


def test_status_payloads() -> None:
    pub = MqttPublisher(
        load_config(None, environ={}, overrides={"mqtt.url": "mqtt://b"}).mqtt,
        version="9.9.9",
        started_at=0.0,
    )
    online = orjson.loads(pub._status("online"))
    assert online["status"] == "online"
    assert online["version"] == "9.9.9"
    assert online["started_at"] == "1970-01-01T00:00:00.000000Z"
    will = orjson.loads(pub._will)
    assert will["status"] == "offline" and will["reason"] == "connection_lost"
    offline = orjson.loads(pub._status("offline", "shutdown"))
    assert offline["status"] == "offline" and offline["reason"] == "shutdown"


async def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Any) -> None:
    pub = publisher(url="mqtts://broker", tls_ca=str(tmp_path / "nope.pem"))
    with pytest.raises(MqttConfigError, match=r"mqtt\.tls_ca"):
        await pub.start()


class FakeClient:
    """Stands in for aiomqtt.Client in the drain loop: fails, hangs or records publishes."""

    def __init__(self, failures: int = 0, hang: bool = False) -> None:
        self.failures = failures
        self.hang = hang
        self.published: list[tuple[str, int, bool, dict[str, Any]]] = []

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self.hang:
            await asyncio.Event().wait()  # a PUBACK that never comes
        if self.failures:
            self.failures -= 1
            raise aiomqtt.MqttError("connection lost")
        self.published.append((topic, qos, retain, orjson.loads(payload)))


async def test_an_event_whose_publish_fails_is_published_on_the_next_connection() -> None:
    pub = publisher()
    pub.notify("reversal_owed", {"reversal_id": 1})
    pub.notify("reversal_sent", {"reversal_id": 1})
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(aiomqtt.MqttError):
        await pub._drain(FakeClient(failures=1), lost)
    assert (pub.queued, pub.published) == (2, 0)
    pub._stopping = True  # drain what is queued, then return
    client = FakeClient()
    await pub._drain(client, lost)
    assert [body["event"] for *_, body in client.published] == ["reversal_owed", "reversal_sent"]
    assert [body["seq"] for *_, body in client.published] == [1, 2]
    assert (pub.queued, pub.published) == (0, 2)


async def test_a_connection_lost_during_a_publish_ends_the_wait_at_once() -> None:
    """aiomqtt would wait for the PUBACK until its timeout: the drain hears of the loss."""
    pub = publisher()
    pub.notify("reversal_owed", {"reversal_id": 1})
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(lost.set_exception, aiomqtt.MqttError("gone"))
    with pytest.raises(aiomqtt.MqttError, match="gone"):
        await pub._drain(FakeClient(hang=True), lost)
    assert pub.queued == 1


async def test_a_connection_that_drops_at_once_is_one_outage_with_a_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two gateways with one client id throw each other off the broker: each connect is
    dropped at once. That is one outage (one warning), its backoff growing, not a new
    outage every 0.7 s."""
    pub = publisher(reconnect_min=0.01, reconnect_max=0.16)
    said: list[tuple[str, str, float]] = []

    class Recorder:
        def warning(self, event: str, **fields: Any) -> None:
            said.append(("warning", event, fields.get("retry_in", 0.0)))

        def debug(self, event: str, **fields: Any) -> None:
            said.append(("debug", event, fields.get("retry_in", 0.0)))

    async def thrown_off() -> None:
        pub.connections += 1
        pub._connected_at = time.monotonic()
        raise aiomqtt.MqttError("session taken over")

    monkeypatch.setattr(mqtt_module, "log", Recorder())
    monkeypatch.setattr(pub, "_session", thrown_off)
    running = asyncio.create_task(pub._run())
    await asyncio.sleep(0.6)
    pub._stopping = True
    pub._stop_requested.set()
    await running
    assert [level for level, *_ in said].count("warning") == 1
    assert said[-1][2] > 0.05  # the waits grew towards reconnect_max
