"""The MQTT subscriber against the real Mosquitto: acknowledgement rules.

The next stage is a recorder that completes every message at once (on paho's thread),
so the subscriber's own acknowledgement logic is what is tested.
"""

from __future__ import annotations

import gc
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cityos.ingest.intake import Submission
from cityos.ingest.pipeline import STORED
from cityos.ingest.transports.mqtt import BatchingClient, MqttOptions, MqttSubscriber
from tests.ingest.flow.conftest import MOSQUITTO, require_mosquitto, wait_for


@dataclass
class CompletingRecorder:
    """Stands in for the intake: records and completes each message immediately."""

    bodies: list[bytes] = field(default_factory=list)

    def submit(self, submission: Submission) -> None:
        self.bodies.append(submission.raw.body)
        submission.done(STORED)


def _subscriber(client_id: str, topic: str, recorder: CompletingRecorder) -> MqttSubscriber:
    options = MqttOptions(
        url=f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}",
        client_id=client_id,
        chirpstack_topics=(topic,),
        ttn_topics=(),
        receive_maximum=5,
    )
    return MqttSubscriber(options, recorder, lambda: int(time.time() * 1000))


def test_backlog_sent_before_the_suback_is_acknowledged_and_drained() -> None:
    # With a session present the broker sends queued messages right after CONNACK,
    # before our SUBACK: they must be acknowledged too, or the Receive Maximum window
    # (5 here) stays full and delivery stops.
    require_mosquitto()
    client_id = f"cityos-test-{uuid.uuid4().hex[:10]}"
    topic = f"t{uuid.uuid4().hex[:10]}/backlog"
    first = _subscriber(client_id, topic, CompletingRecorder())
    first.start()
    assert first.wait_connected(10)
    first.stop()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    publisher.connect(*MOSQUITTO)
    publisher.loop_start()
    for index in range(40):
        publisher.publish(topic, str(index).encode(), qos=1).wait_for_publish(10)
    publisher.loop_stop()
    publisher.disconnect()
    recorder = CompletingRecorder()

    second = _subscriber(client_id, topic, recorder)
    second.start()
    try:
        wait_for(lambda: len(set(recorder.bodies)) == 40, timeout_s=15, what="the backlog")
    finally:
        second.stop()


def _queue_for_session(client_id: str, topic: str, count: int) -> None:
    """Create ``client_id``'s persistent session on ``topic`` and queue ``count`` messages."""
    session = BatchingClient(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 300
    session.connect(*MOSQUITTO, clean_start=False, properties=properties)
    session.subscribe(topic, qos=1)
    session.loop_start()
    wait_for(session.is_connected, what="the session")
    time.sleep(0.2)
    session.disconnect()
    session.loop_stop()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    publisher.connect(*MOSQUITTO)
    publisher.loop_start()
    for index in range(count):
        publisher.publish(topic, f"{index:04d}".encode() * 50, qos=1).wait_for_publish(10)
    publisher.loop_stop()
    publisher.disconnect()


def _drain_session(client_id: str, topic: str, ack_every: int) -> list[bytes]:
    """Read ``client_id``'s backlog with a Receive Maximum of 100 for 3 s, acknowledging
    with ``ack_many`` every ``ack_every`` messages (from paho's thread)."""
    received: list[bytes] = []
    unacknowledged: list[int] = []
    client = BatchingClient(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )

    def on_message(paho: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(message.payload)
        unacknowledged.append(message.mid)
        if len(unacknowledged) >= ack_every:
            client.ack_many(unacknowledged)
            unacknowledged.clear()

    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 300
    properties.ReceiveMaximum = 100
    client.connect(*MOSQUITTO, clean_start=False, properties=properties)
    client.loop_start()
    time.sleep(3)
    client.disconnect()
    client.loop_stop()
    return received


def test_batching_client_reads_a_backlog_in_bursts_and_acknowledges_in_one_write() -> None:
    # 600 messages of 200 bytes arrive many to one read; their PUBACKs go 50 to a packet.
    # Were a PUBACK malformed or lost, the Receive Maximum (100) would stall delivery, and
    # the next connection of the session would get the unacknowledged ones again.
    require_mosquitto()
    client_id = f"cityos-test-{uuid.uuid4().hex[:10]}"
    topic = f"t{uuid.uuid4().hex[:10]}/burst"
    _queue_for_session(client_id, topic, 600)

    first = _drain_session(client_id, topic, ack_every=50)
    again = _drain_session(client_id, topic, ack_every=1)

    assert sorted(first) == [f"{index:04d}".encode() * 50 for index in range(600)]
    assert again == []


def _delivered(client: BatchingClient, topics: list[str]) -> list[str]:
    """Hand ``topics`` to the client as received PUBLISH packets; what ``on_message`` got."""
    received: list[str] = []
    client.on_message = lambda paho, userdata, message: received.append(message.topic)
    for mid, topic in enumerate(topics, start=1):
        message = mqtt.MQTTMessage(mid, topic.encode())
        message.qos = 1
        client._handle_on_message(message)
    return received


def test_batching_client_hands_messages_over_without_reference_cycles() -> None:
    # paho's topic filter lookup leaves a reference cycle per message; their collections
    # stopped the event loop for 60-100 ms every few seconds at 2,000 uplinks/s.
    client = BatchingClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    topics = [f"application/a/device/{index:016x}/event/up" for index in range(200)]
    gc.collect()
    gc.disable()
    try:
        received = _delivered(client, topics)
        garbage = gc.collect()
    finally:
        gc.enable()
    assert received == topics
    assert garbage == 0


def test_batching_client_keeps_paho_topic_filters() -> None:
    client = BatchingClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    filtered: list[str] = []
    client.message_callback_add(
        "application/+/device/+/event/join", lambda paho, userdata, m: filtered.append(m.topic)
    )
    up, join = "application/a/device/01/event/up", "application/a/device/01/event/join"

    received = _delivered(client, [up, join])

    assert (received, filtered) == ([up], [join])
