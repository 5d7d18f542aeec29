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
  connection they came on; a message committed after the connection dropped is not
  acknowledged (the broker redelivers it, and the dedupe key drops the copy). paho
  discards packets queued before a reconnect, and the generation changes on disconnect.
- **Reconnects by itself**: paho's network thread retries with a growing delay.
- **Shared subscriptions** (``$share/GROUP/topic``): several cityos workers split the
  traffic of one subscription.
- **Per-message costs taken out of paho** (:class:`BatchingClient`): the network thread
  reads every packet waiting per wake-up instead of one, and the PUBACKs of a committed
  batch leave in one write instead of one wake-up and one ``send()`` each.

Why paho-mqtt 2 and not aiomqtt: paho is already a dependency (subscription
notifications), it has ``manual_ack`` and MQTT 5 properties, and its network thread
reads and parses packets while the event loop commits a batch; aiomqtt would put that
work on the event loop as well.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MessageType, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cityos.ingest.intake import Submission
from cityos.ingest.model import Network, RawMessage
from cityos.ingest.pipeline import Outcome

log = logging.getLogger(__name__)

CHIRPSTACK_TOPICS = ("application/+/device/+/event/+",)
TTN_TOPICS = ("v3/+/devices/+/+",)

READ_BURST = 1000
"""Most packets the network thread reads per wake-up (paho reads one per select())."""
_RECV_CHUNK = 65_536
_PUBACK = struct.Struct("!BBH")
"""A PUBACK without reason code (success) and properties, as paho writes it."""


class BatchingClient(mqtt.Client):
    """paho's client with per-message costs taken out, for draining a backlog:

    - :meth:`loop_read` reads every packet waiting (up to :data:`READ_BURST`, then what
      is buffered) where paho reads one and goes back to ``select()``;
    - the socket is read in chunks of 64 KiB: paho asks for a packet's first byte, its
      length bytes and its body separately, a ``recv()`` each;
    - :meth:`ack_many` queues the PUBACKs of many messages as ONE outgoing packet: one
      wake-up of the network thread and one ``send()``, where ``ack()`` costs a wake-up
      and a ``send()`` per message;
    - :meth:`_handle_on_message` hands a message to ``on_message`` without paho's topic
      filter lookup when no ``message_callback_add`` filter exists: that lookup builds a
      recursive closure per message, a reference cycle of six objects that only the
      cyclic garbage collector frees. At 2,000 messages/s those cycles set off a
      collection every few seconds that also walks every entity document written since
      the last one (60-100 ms with the event loop stopped: the p99 latency).

    Each system call also hands the GIL to the other thread (the event loop committing
    batches), so these matter twice. Written like paho's own ``loop_read``, ``_sock_recv``
    and ``_send_command_with_mid``, on its internals; the MQTT flow tests run them against
    Mosquitto. Packets queued before a reconnect are dropped by paho, as for ``ack()``,
    and the read buffer goes with the socket it was read from.
    """

    _received = b""
    _received_at = 0

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        for _ in range(max(max_packets, READ_BURST)):
            rc = self._read_packet()
            if rc is not None:
                return rc
        # Nothing may stay in the buffer: select() only sees the socket.
        while self._received_at < len(self._received):
            rc = self._read_packet()
            if rc is not None:
                return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _read_packet(self) -> MQTTErrorCode | None:
        """Read one packet; ``None`` to go on, else what :meth:`loop_read` returns."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        rc = self._packet_read()
        if rc > 0:
            return self._loop_rc_handle(rc)
        if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return None

    def _sock_recv(self, bufsize: int) -> bytes:
        data, start = self._received, self._received_at
        if start >= len(data):
            data = super()._sock_recv(_RECV_CHUNK)
            if not data:
                return data
            start = 0
        end = min(start + bufsize, len(data))
        self._received, self._received_at = data, end
        return data[start:end]

    def _sock_close(self) -> None:
        self._received, self._received_at = b"", 0
        super()._sock_close()

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        if self._on_message_filtered._root._children:  # filters added: paho's own way
            super()._handle_on_message(message)
            return
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def ack_many(self, mids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``) of the current connection."""
        if mids:
            packet = b"".join([_PUBACK.pack(MessageType.PUBACK, 2, mid) for mid in mids])
            self._packet_queue(MessageType.PUBACK, packet, 0, 1)


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


class MessageSink(Protocol):
    """Where received messages go (the :class:`~cityos.ingest.intake.Intake`)."""

    def submit(self, submission: Submission) -> None: ...


class MqttSubscriber:
    """Feeds an :class:`Intake` from an MQTT broker (see the module docstring)."""

    def __init__(
        self, options: MqttOptions, intake: MessageSink, clock_ms: Callable[[], int]
    ) -> None:
        self.options = options
        self.intake = intake
        self._clock_ms = clock_ms
        self._generation = 0
        self._connected = threading.Event()
        self._network_by_topic: dict[str, Network] = {}
        self._acks: list[tuple[int, int]] = []
        """(generation, mid) of committed QoS 1 messages, sent together (event loop)."""
        self._acks_scheduled = False
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

    def _new_client(self) -> BatchingClient:
        parts = urlsplit(self.options.url)
        client = BatchingClient(
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
        # Acknowledgements of this connection's messages must not reach the next one.
        self._generation += 1
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
            # Only on the connection the message came on (not "once subscribed": with a
            # session present, the broker sends queued messages before our SUBACK, and
            # leaving them unacknowledged would fill the Receive Maximum window).
            if generation != self._generation:
                return
            if qos != 1:
                client.ack(mid, qos)
                return
            self._acks.append((generation, mid))
            if self._acks_scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # completed outside an event loop: acknowledge at once
                self._send_acks()
                return
            # The intake completes a whole batch in one go: its PUBACKs leave together.
            self._acks_scheduled = True
            loop.call_soon(self._send_acks)

        self.intake.submit(Submission(raw, acknowledge))

    def _send_acks(self) -> None:
        self._acks_scheduled = False
        acks, self._acks = self._acks, []
        generation = self._generation
        self.client.ack_many([mid for born, mid in acks if born == generation])

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
