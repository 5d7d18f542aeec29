"""MQTT transport: subscribe to the network server's events on a broker (Mosquitto).

Delivery guarantees, and how:
- **QoS 1 with a persistent session** (MQTT 5: ``clean_start`` false and a session
  expiry interval, with a fixed client id): while cityos is down or reconnecting, the
  broker keeps queueing our messages, and redelivers those we had not acknowledged.
- **PUBACK only after commit**: paho-mqtt's ``manual_ack``; a message's PUBACK is sent
  from the intake's completion callback, i.e. after the batch holding it was committed
  (entity updates, dedupe key or dead letter). A crash before that leaves it
  unacknowledged, so the broker sends it again; the dedupe key makes the second copy
  a no-op when the first one had been committed after all.
- **Batches bigger than 20**: MQTT 5 ``Receive Maximum`` lets the broker have that many
  unacknowledged messages in flight to us (Mosquitto's own ``max_inflight_messages``
  default of 20 applies to MQTT 3.1.1 clients only), so a batch can hold hundreds.
- **Acknowledgements never cross connections**: message ids are only meaningful on the
  connection they came on; a message committed after a reconnect is not acknowledged
  (the broker redelivers it, and the dedupe key drops the copy).
- **Reconnects by itself**: paho's network thread retries with a growing delay.
- **Shared subscriptions** (``$share/GROUP/topic``): several cityos workers split the
  traffic of one subscription.

Why paho-mqtt 2 and not aiomqtt: paho is already a dependency (subscription
notifications), it has ``manual_ack`` and MQTT 5 properties, and its network thread
reads and parses packets while the event loop commits a batch; aiomqtt would put that
work on the event loop as well.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cityos.ingest.intake import Intake, Submission
from cityos.ingest.model import Network, RawMessage
from cityos.ingest.pipeline import Outcome

log = logging.getLogger(__name__)

CHIRPSTACK_TOPICS = ("application/+/device/+/event/+",)
TTN_TOPICS = ("v3/+/devices/+/+",)


@dataclass(frozen=True)
class MqttOptions:
    """How to reach the broker and what to subscribe to.

    ``url``: ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS).
    ``shared_group``: subscribe as ``$share/{group}/{topic}`` (several workers).
    """

    url: str
    client_id: str = "cityos-ingest"
    chirpstack_topics: Sequence[str] = CHIRPSTACK_TOPICS
    ttn_topics: Sequence[str] = TTN_TOPICS
    shared_group: str | None = None
    session_expiry_s: int = 86_400
    receive_maximum: int = 1000
    keepalive_s: int = 30
    reconnect_max_delay_s: int = 30
    topics: tuple[tuple[str, Network], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        pairs: list[tuple[str, Network]] = [(t, "chirpstack") for t in self.chirpstack_topics]
        pairs += [(t, "ttn") for t in self.ttn_topics]
        object.__setattr__(self, "topics", tuple(pairs))

    def subscription(self, topic: str) -> str:
        """The topic filter to subscribe with (shared when a group is set)."""
        return f"$share/{self.shared_group}/{topic}" if self.shared_group else topic


class MqttSubscriber:
    """Feeds an :class:`Intake` from an MQTT broker (see the module docstring)."""

    def __init__(self, options: MqttOptions, intake: Intake, clock_ms: Callable[[], int]) -> None:
        self.options = options
        self.intake = intake
        self._clock_ms = clock_ms
        self._generation = 0
        self._connected = threading.Event()
        self._network_by_topic: dict[str, Network] = {}
        self.connections = 0
        """How many times a connection was established (1 + reconnects)."""
        self.client = self._new_client()

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho's thread keeps the connection up."""
        parts = urlsplit(self.options.url)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.options.session_expiry_s
        properties.ReceiveMaximum = self.options.receive_maximum
        default_port = 8883 if parts.scheme == "mqtts" else 1883
        self.client.connect_async(
            parts.hostname or "127.0.0.1",
            parts.port or default_port,
            keepalive=self.options.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect (the session stays on the broker) and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected and subscribed (tests, start-up logs)."""
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        """True while the subscriber holds a connection with its subscriptions."""
        return self._connected.is_set()

    # -- paho callbacks (network thread) ----------------------------------------------

    def _new_client(self) -> mqtt.Client:
        parts = urlsplit(self.options.url)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.options.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if parts.username:
            client.username_pw_set(
                unquote(parts.username), unquote(parts.password) if parts.password else None
            )
        if parts.scheme == "mqtts":
            client.tls_set()
        client.reconnect_delay_set(1, self.options.reconnect_max_delay_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker refused the connection: %s", reason)
            return
        self._generation += 1
        self.connections += 1
        log.info(
            "Connected to MQTT broker %s (session present: %s)",
            self.options.url,
            flags.session_present,
        )
        # Subscribing again with a persistent session is harmless and covers a broker
        # that lost the session (restarted without persistence).
        client.subscribe(
            [(self.options.subscription(topic), 1) for topic, _ in self.options.topics]
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            log.error("MQTT broker refused subscriptions: %s", ", ".join(refused))
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if reason.is_failure:
            log.warning("Lost the MQTT broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = bytes(message._topic).decode("utf-8", "replace")
        raw = RawMessage(
            transport="mqtt",
            network=self._network(topic),
            address=topic,
            body=bytes(message.payload),
            content_type=None,
            received_at_ms=self._clock_ms(),
        )
        if message.qos == 0:
            self.intake.submit(Submission(raw, _no_ack))
            return
        generation, mid, qos = self._generation, message.mid, message.qos

        def acknowledge(outcome: Outcome) -> None:
            if generation == self._generation and self._connected.is_set():
                client.ack(mid, qos)

        self.intake.submit(Submission(raw, acknowledge))

    def _network(self, topic: str) -> Network:
        network = self._network_by_topic.get(topic)
        if network is None:
            network = "chirpstack"
            for pattern, candidate in self.options.topics:
                if mqtt.topic_matches_sub(pattern, topic):
                    network = candidate
                    break
            if len(self._network_by_topic) < 100_000:
                self._network_by_topic[topic] = network
        return network


def _no_ack(outcome: Outcome) -> None:
    """QoS 0 messages are not acknowledged."""
