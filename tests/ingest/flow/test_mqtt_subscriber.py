"""The MQTT subscriber against the real Mosquitto: acknowledgement rules.

The next stage is a recorder that completes every message at once (on paho's thread),
so the subscriber's own acknowledgement logic is what is tested.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cityos.ingest.intake import Submission
from cityos.ingest.pipeline import STORED
from cityos.ingest.transports.mqtt import MqttOptions, MqttSubscriber
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
