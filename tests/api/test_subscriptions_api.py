"""Subscriptions against a real server: validation, CRUD, persistence, HTTP and MQTT delivery.

Notifications go to a real HTTP receiver on loopback and to the real Mosquitto on
127.0.0.1:1883; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cityos.broker.notifier import DeliveryPolicy, Notifier
from cityos.settings import Settings
from tests.conftest import NGSI, RunningServer, free_port, start_server

ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


@dataclass
class Receiver:
    """A loopback HTTP server recording every notification it is sent."""

    port: int
    status: int = 200
    received: queue.Queue[tuple[dict[str, str], dict[str, Any]]] = field(
        default_factory=queue.Queue
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    def next(self, timeout_s: float = 5.0) -> tuple[dict[str, str], dict[str, Any]]:
        return self.received.get(timeout=timeout_s)

    def nothing_within(self, timeout_s: float) -> bool:
        try:
            self.received.get(timeout=timeout_s)
        except queue.Empty:
            return True
        return False


def serve_receiver(port: int = 0) -> tuple[Receiver, ThreadingHTTPServer]:
    """Start a receiver (on ``port``, or any free one)."""
    state = Receiver(port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if state.status == 200:
                state.received.put((dict(self.headers.items()), json.loads(body)))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state, server = serve_receiver()
    yield state
    server.shutdown()
    server.server_close()


def subscription(uid: str, endpoint: str, **members: Any) -> dict[str, Any]:
    notification = members.pop("notification", {})
    return {
        "id": f"urn:ngsi-ld:Subscription:{uid}",
        "type": "Subscription",
        "entities": [{"type": f"Sensor{uid}"}],
        "notification": {"endpoint": {"uri": endpoint}, **notification},
        **members,
    }


def sensor(uid: str, n: int = 1, value: float = 1.0) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Sensor{uid}:{n}",
        "type": f"Sensor{uid}",
        "temperature": {"type": "Property", "value": value},
    }


def set_temperature(client: httpx.Client, uid: str, value: float, n: int = 1) -> None:
    response = client.patch(
        f"/entities/urn:ngsi-ld:Sensor{uid}:{n}/attrs",
        json={"temperature": {"type": "Property", "value": value}},
    )
    assert response.status_code == 204, response.text


def create(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/subscriptions", json=body)


def delivery_status(client: httpx.Client, sub_id: str, until: str) -> dict[str, Any]:
    """The notification status once its ``status`` is ``until`` (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        status: dict[str, Any] = client.get(f"/subscriptions/{sub_id}").json()["notification"]
        if status.get("status") == until or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"entities": None}, "neither entities nor watchedAttributes"),
        ({"notification": {"endpoint": {"uri": "not a uri"}}}, "bad endpoint URI"),
        ({"notification": {"endpoint": {"uri": "ftp://example.org/x"}}}, "bad endpoint scheme"),
        ({"q": "temperature>>"}, "bad q"),
        (
            {"geoQ": {"georel": "near", "geometry": "Point", "coordinates": [137.2, 36.7]}},
            "bad geoQ",
        ),
        ({"expiresAt": "2001-01-01T00:00:00Z"}, "expiresAt in the past"),
        ({"throttling": 5, "timeInterval": 10}, "throttling with timeInterval"),
        ({"throttling": -1}, "negative throttling"),
        ({"notificationTrigger": ["whenever"]}, "unknown trigger"),
    ],
)
def test_invalid_subscription_is_400(
    client: httpx.Client, uid: str, change: dict[str, Any], why: str
) -> None:
    body = subscription(uid, "http://127.0.0.1:9/notify")
    for key, value in change.items():
        if value is None:
            body.pop(key)
        elif key == "notification":
            body["notification"] = value
        else:
            body[key] = value
    response = create(client, body)
    assert response.status_code == 400, why
    assert response.json()["type"] == ERRORS + "BadRequestData"


def test_invalid_id_is_400(client: httpx.Client, uid: str) -> None:
    body = subscription(uid, "http://127.0.0.1:9/notify") | {"id": "not-a-uri"}
    assert create(client, body).status_code == 400


# ------------------------------------------------------------------------ CRUD


def test_create_retrieve_query_update_delete(client: httpx.Client, uid: str) -> None:
    body = subscription(uid, "http://127.0.0.1:9/notify", watchedAttributes=["temperature"])
    response = create(client, body)
    assert response.status_code == 201
    sub_id = body["id"]
    assert response.headers["Location"].endswith(sub_id)
    assert create(client, body).status_code == 409

    got = client.get(f"/subscriptions/{sub_id}").json()
    assert got["entities"] == body["entities"]
    assert got["watchedAttributes"] == ["temperature"]
    assert got["status"] == "active"
    assert got["notificationTrigger"] == ["attributeCreated", "attributeUpdated"]
    assert sub_id in [s["id"] for s in client.get("/subscriptions", params={"limit": 1000}).json()]

    assert client.patch(f"/subscriptions/{sub_id}", json={"isActive": False}).status_code == 204
    assert client.get(f"/subscriptions/{sub_id}").json()["status"] == "paused"

    assert client.delete(f"/subscriptions/{sub_id}").status_code == 204
    missing = client.get(f"/subscriptions/{sub_id}")
    assert missing.status_code == 404
    assert missing.json()["type"] == ERRORS + "ResourceNotFound"


def test_subscriptions_persist_across_restart(tmp_path: Path, uid: str) -> None:
    settings = Settings(data_dir=tmp_path, auth="off")
    body = subscription(uid, "http://127.0.0.1:9/notify")
    first = start_server(settings)
    try:
        assert httpx.post(first.base_url + NGSI + "/subscriptions", json=body).status_code == 201
    finally:
        first.stop()
    second = start_server(settings)
    try:
        got = httpx.get(f"{second.base_url}{NGSI}/subscriptions/{body['id']}")
        assert got.status_code == 200
        assert got.json()["entities"] == body["entities"]
    finally:
        second.stop()


# ---------------------------------------------------------------- notifications


def test_notification_is_posted_as_json_with_link(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    body = subscription(
        uid,
        receiver.url,
        notification={
            "format": "keyValues",
            "endpoint": {
                "uri": receiver.url,
                "receiverInfo": [{"key": "X-City", "value": "Toyama"}],
            },
        },
    )
    assert create(client, body).status_code == 201
    assert client.post("/entities", json=sensor(uid, value=21.5)).status_code == 201

    headers, notification = receiver.next()
    assert notification["type"] == "Notification"
    assert notification["subscriptionId"] == body["id"]
    assert notification["id"].startswith("urn:ngsi-ld:Notification:")
    assert notification["data"] == [
        {"id": f"urn:ngsi-ld:Sensor{uid}:1", "type": f"Sensor{uid}", "temperature": 21.5}
    ]
    assert headers["Content-Type"] == "application/json"
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in headers["Link"]
    assert headers["X-City"] == "Toyama"
    status = delivery_status(client, body["id"], until="ok")
    assert status["timesSent"] >= 1 and status["status"] == "ok"


def test_show_changes_gives_previous_value(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    client.post("/entities", json=sensor(uid, value=1.0))
    body = subscription(uid, receiver.url, notification={"showChanges": True})
    create(client, body)
    set_temperature(client, uid, 2.0)
    _, notification = receiver.next()
    temperature = notification["data"][0]["temperature"]
    assert temperature["value"] == 2.0
    assert temperature["previousValue"] == 1.0


def test_throttling_drops_notifications_inside_the_period(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    client.post("/entities", json=sensor(uid))
    create(client, subscription(uid, receiver.url, throttling=60))
    set_temperature(client, uid, 2.0)
    set_temperature(client, uid, 3.0)
    _, first = receiver.next()
    assert first["data"][0]["temperature"]["value"] == 2.0
    assert receiver.nothing_within(1.0)


def test_notifications_for_one_entity_arrive_in_order(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    client.post("/entities", json=sensor(uid))
    create(client, subscription(uid, receiver.url, notification={"format": "keyValues"}))
    for value in range(20):
        set_temperature(client, uid, float(value))
    values = [receiver.next()[1]["data"][0]["temperature"] for _ in range(20)]
    assert values == [float(v) for v in range(20)]


def test_dead_endpoint_is_recorded_and_does_not_block_others(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    client.post("/entities", json=sensor(uid))
    dead = subscription(uid, f"http://127.0.0.1:{free_port()}/notify")
    dead["id"] += ":dead"
    create(client, dead)
    create(client, subscription(uid, receiver.url))
    set_temperature(client, uid, 5.0)
    _, notification = receiver.next(timeout_s=2)
    assert notification["data"][0]["temperature"]["value"] == 5.0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = client.get(f"/subscriptions/{dead['id']}").json()["notification"]
        if status.get("timesFailed", 0) >= 2:
            break
        time.sleep(0.1)
    assert status["status"] == "failed"
    assert status["timesFailed"] >= 2, "a failed notification is retried"
    assert "lastFailure" in status


def test_endpoint_answering_500_is_retried_until_it_recovers(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    client.post("/entities", json=sensor(uid))
    body = subscription(uid, receiver.url)
    create(client, body)
    receiver.status = 500
    set_temperature(client, uid, 7.0)
    time.sleep(0.3)
    receiver.status = 200
    _, notification = receiver.next(timeout_s=5)
    assert notification["data"][0]["temperature"]["value"] == 7.0
    status = delivery_status(client, body["id"], until="ok")
    assert status["timesFailed"] >= 1 and status["status"] == "ok"


def test_queued_notification_is_delivered_after_restart(tmp_path: Path, uid: str) -> None:
    """At-least-once: a notification queued for an unreachable endpoint survives a restart."""
    port = free_port()
    settings = Settings(data_dir=tmp_path, auth="off")
    first = start_server(settings)
    try:
        api = first.base_url + NGSI
        httpx.post(
            api + "/subscriptions", json=subscription(uid, f"http://127.0.0.1:{port}/notify")
        )
        assert httpx.post(api + "/entities", json=sensor(uid, value=9.0)).status_code == 201
        time.sleep(0.2)
    finally:
        first.stop()
    receiver, server = serve_receiver(port)
    second: RunningServer | None = None
    try:
        second = start_server(settings)
        _, notification = receiver.next(timeout_s=5)
        assert notification["data"][0]["temperature"]["value"] == 9.0
    finally:
        if second is not None:
            second.stop()
        server.shutdown()
        server.server_close()


def _mosquitto_available() -> bool:
    try:
        socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=1).close()
    except OSError:
        return False
    return True


def test_notification_is_published_to_mqtt(client: httpx.Client, uid: str) -> None:
    if not _mosquitto_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Mosquitto is not running on 127.0.0.1:1883")
        pytest.skip("Mosquitto is not running on 127.0.0.1:1883")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"cityos/test/{uid}"
    messages: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2)
    subscriber.on_message = lambda _c, _u, message: messages.put(message.payload)
    subscriber.on_subscribe = lambda *_args: subscribed.set()
    subscriber.connect(MQTT_HOST, MQTT_PORT)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    try:
        assert subscribed.wait(5)
        endpoint = {
            "uri": f"mqtt://{MQTT_HOST}:{MQTT_PORT}/{topic}",
            "notifierInfo": [{"key": "MQTT-QoS", "value": "1"}],
        }
        body = subscription(uid, "", notification={"endpoint": endpoint})
        assert create(client, body).status_code == 201
        client.post("/entities", json=sensor(uid, value=3.5))
        message = json.loads(messages.get(timeout=5))
        assert message["metadata"]["Content-Type"] == "application/json"
        assert message["body"]["subscriptionId"] == body["id"]
        assert message["body"]["data"][0]["temperature"]["value"] == 3.5
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()


def test_entity_deletion_notifies_with_deleted_at(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    client.post("/entities", json=sensor(uid))
    create(client, subscription(uid, receiver.url, notificationTrigger=["entityDeleted"]))
    assert client.delete(f"/entities/urn:ngsi-ld:Sensor{uid}:1").status_code == 204
    _, notification = receiver.next()
    (entity,) = notification["data"]
    assert set(entity) == {"id", "type", "deletedAt"}


def test_attribute_deletion_notifies_with_null_value(
    client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    entity = sensor(uid) | {"humidity": {"type": "Property", "value": 40}}
    client.post("/entities", json=entity)
    create(client, subscription(uid, receiver.url, notificationTrigger=["attributeDeleted"]))
    path = f"/entities/urn:ngsi-ld:Sensor{uid}:1/attrs/humidity"
    assert client.delete(path).status_code == 204
    _, notification = receiver.next()
    assert notification["data"][0]["humidity"] == {"type": "Property", "value": "urn:ngsi-ld:null"}


# ------------------------------------------------------------- delivery policy


FAST_RETRIES = DeliveryPolicy(
    max_attempts=2, first_retry_s=0.01, max_retry_s=0.05, timeout_s=0.5, lanes=2
)


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own whose notifier retries within milliseconds."""
    running = start_server(Settings(data_dir=tmp_path, auth="off"))
    notifier_of(running).policy = FAST_RETRIES
    yield running
    running.stop()


@pytest.fixture
def fast_client(fast_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fast_server.base_url + NGSI, timeout=10) as http:
        yield http


def notifier_of(running: RunningServer) -> Notifier:
    notifier: Notifier = running.server.config.app.state.subscriptions.notifier
    return notifier


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_unreachable_endpoint_is_retried_until_it_comes_back(
    fast_client: httpx.Client, uid: str
) -> None:
    port = free_port()
    fast_client.post("/entities", json=sensor(uid))
    body = subscription(uid, f"http://127.0.0.1:{port}/notify")
    create(fast_client, body)
    set_temperature(fast_client, uid, 4.0)
    wait_for(
        lambda: (
            fast_client.get(f"/subscriptions/{body['id']}")
            .json()["notification"]
            .get("timesFailed", 0)
            > 2 * FAST_RETRIES.max_attempts
        )
    )
    receiver, server = serve_receiver(port)
    try:
        _, notification = receiver.next(timeout_s=5)
        assert notification["data"][0]["temperature"]["value"] == 4.0
    finally:
        server.shutdown()
        server.server_close()


def test_refused_notification_is_given_up_after_max_attempts(
    fast_client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    fast_client.post("/entities", json=sensor(uid))
    body = subscription(uid, receiver.url)
    create(fast_client, body)
    receiver.status = 400
    set_temperature(fast_client, uid, 1.5)
    wait_for(
        lambda: (
            fast_client.get(f"/subscriptions/{body['id']}")
            .json()["notification"]
            .get("timesFailed", 0)
            == FAST_RETRIES.max_attempts
        )
    )
    receiver.status = 200
    set_temperature(fast_client, uid, 2.5)
    _, notification = receiver.next()
    assert notification["data"][0]["temperature"]["value"] == 2.5


def test_full_endpoint_queue_drops_the_oldest_waiting(
    fast_server: RunningServer, fast_client: httpx.Client, uid: str
) -> None:
    notifier = notifier_of(fast_server)
    notifier.policy = replace(FAST_RETRIES, queue_limit=2, lanes=1)
    port = free_port()
    fast_client.post("/entities", json=sensor(uid))
    create(fast_client, subscription(uid, f"http://127.0.0.1:{port}/notify"))
    for value in range(1, 6):
        set_temperature(fast_client, uid, float(value))
        time.sleep(0.05)
    receiver, server = serve_receiver(port)
    try:
        values = [receiver.next()[1]["data"][0]["temperature"]["value"] for _ in range(3)]
        assert values == [1.0, 4.0, 5.0], "the one in flight, then the newest two"
        assert receiver.nothing_within(0.5)
    finally:
        server.shutdown()
        server.server_close()


def test_hung_endpoint_does_not_delay_others(
    fast_client: httpx.Client, uid: str, receiver: Receiver
) -> None:
    with socket.socket() as hung:
        # Listening but never accepting: connections complete and no answer ever comes.
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        fast_client.post("/entities", json=sensor(uid))
        dead = subscription(uid, f"http://127.0.0.1:{hung.getsockname()[1]}/notify")
        dead["id"] += ":hung"
        create(fast_client, dead)
        create(fast_client, subscription(uid, receiver.url))
        for value in range(10):
            set_temperature(fast_client, uid, float(value))
        values = [
            receiver.next(timeout_s=2)[1]["data"][0]["temperature"]["value"] for _ in range(10)
        ]
        assert values == [float(v) for v in range(10)]


def test_delivered_notifications_are_not_sent_again_after_restart(
    tmp_path: Path, uid: str, receiver: Receiver
) -> None:
    settings = Settings(data_dir=tmp_path, auth="off")
    first = start_server(settings)
    try:
        api = first.base_url + NGSI
        httpx.post(api + "/subscriptions", json=subscription(uid, receiver.url))
        httpx.post(api + "/entities", json=sensor(uid, value=3.0))
        receiver.next()
    finally:
        first.stop()
    second = start_server(settings)
    try:
        assert receiver.nothing_within(1.0)
    finally:
        second.stop()
