"""Ingestion inside a running server: pipeline, intake, MQTT subscriber, health and
housekeeping tasks, started and stopped with the application (see ``create_app``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from cityos.broker.bulk_write import ObservationWriter
from cityos.broker.changes import ObservedStorage
from cityos.broker.entities import ExpandTerm
from cityos.broker.service import ContextBroker
from cityos.ingest.health import HealthMonitor
from cityos.ingest.intake import Intake
from cityos.ingest.networks import parse_event
from cityos.ingest.pipeline import DeviceRegistry, Pipeline, PipelineLimits
from cityos.ingest.stats import IngestStats
from cityos.ingest.transports.mqtt import MqttOptions, MqttSubscriber
from cityos.settings import Settings
from cityos.storage.base import TemporalStorage
from cityos.storage.ingest_tables import IngestTables
from cityos.storage.sqlite import SqliteStorage

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 600.0
MQTT_DUTY_RETRY_S = 10.0
MQTT_SHARED_SLOTS = 64
"""Most processes that subscribe together to a shared group."""
ENTITY_CACHE_SIZE = 200_000
"""Entities the writer keeps in memory (a Device and a target per sensor)."""
GATEWAY_FLUSH_INTERVAL_S = 10.0
"""Gateway entities (last seen, position) are written at most this often: every batch
touches most gateways, and their state is a summary, not a measurement."""


def clock_ms() -> int:
    """Unix milliseconds now (our receive time of messages; called per message)."""
    return time.time_ns() // 1_000_000


def mqtt_options(settings: Settings) -> MqttOptions | None:
    """The MQTT subscription the settings ask for (``None``: no MQTT ingestion)."""
    if not settings.mqtt_url:
        return None
    return MqttOptions(
        url=settings.mqtt_url,
        client_id=settings.mqtt_client_id,
        chirpstack_topics=tuple(settings.mqtt_chirpstack_topics),
        ttn_topics=tuple(settings.mqtt_ttn_topics),
        shared_group=settings.mqtt_shared_group,
        session_expiry_s=settings.mqtt_session_expiry_s,
        receive_maximum=settings.mqtt_receive_maximum,
    )


class IngestRuntime:
    """Everything ingestion runs in one server process."""

    def __init__(
        self,
        settings: Settings,
        *,
        storage: ObservedStorage,
        backend: TemporalStorage,
        tables: IngestTables,
        broker: ContextBroker,
        registry: Any,  # Any: the device registry (lookup, devices, note_gateways, ...)
        expand: ExpandTerm,
    ) -> None:
        self.settings = settings
        self.tables = tables
        self.registry = registry
        self.stats = IngestStats()
        # Only a SQLite file is written by this process alone, the condition of the
        # writer's entity cache (PostgreSQL may have other workers).
        cache_size = ENTITY_CACHE_SIZE if isinstance(backend, SqliteStorage) else 0
        writer = ObservationWriter(
            storage,
            backend,
            expand,
            settings.ingest_tenant,
            cache_size=cache_size,
            changed_elsewhere=tables.changed_elsewhere,
        )
        if cache_size:
            storage.add_listener(writer.on_changes)
        self.pipeline = Pipeline(
            storage=storage,
            tables=tables,
            writer=writer,
            registry=registry,
            parse=parse_event,
            stats=self.stats,
            limits=PipelineLimits(max_body_bytes=settings.ingest_max_body_bytes),
            clock_ms=clock_ms,
            after_commit=self._after_commit,
        )
        self.intake = Intake(self.pipeline, batch_size=settings.ingest_batch_size)
        self.health = HealthMonitor(
            broker,
            registry,
            tables,
            expand,
            tenant=settings.ingest_tenant,
            interval_s=settings.ingest_health_interval_s,
        )
        self._mqtt_options = mqtt_options(settings)
        self.mqtt: MqttSubscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_gateway_flush = 0.0

    def _after_commit(self, dev_euis: set[str], observed_at: str) -> None:
        flush: Callable[[], object] | None = getattr(self.registry, "flush_gateways", None)
        now = time.monotonic()
        if flush is not None and now >= self._next_gateway_flush:
            self._next_gateway_flush = now + GATEWAY_FLUSH_INTERVAL_S
            try:
                flush()
            except Exception:
                log.exception("Writing gateway states failed")
        if dev_euis:
            self.health.note_seen(dev_euis, observed_at)

    def mqtt_status(self) -> dict[str, Any] | None:  # Any: JSON document
        """The MQTT subscriber's state for ``GET /ingest/stats``."""
        if self._mqtt_options is None:
            return None
        if self.mqtt is None:
            return {
                "url": _without_password(self._mqtt_options.url),
                "connected": False,
                "standby": "another process of this database subscribes",
            }
        return {
            "url": _without_password(self.mqtt.options.url),
            "connected": self.mqtt.connected,
            "connections": self.mqtt.connections,
        }

    async def start(self) -> None:
        """Start the batch loop, the MQTT subscriber and the periodic tasks."""
        if self._mqtt_options is not None or self.settings.ingest_secret:
            # Ingestion allocates and drops tens of thousands of small objects per second
            # while the entity cache holds millions for good: with the default
            # thresholds the collector walks that whole heap every few batches (about 40%
            # of the ingest CPU time measured). Reference counting frees nearly all of
            # it anyway; cycles are collected less often.
            gc.set_threshold(50_000, 50, 100)
        self.intake.start()
        self._tasks = [
            asyncio.create_task(self._take_mqtt_duty(), name="cityos-mqtt-duty"),
            asyncio.create_task(self.health.run_forever(), name="cityos-device-health"),
            asyncio.create_task(self._housekeeping(), name="cityos-ingest-housekeeping"),
        ]

    async def stop(self) -> None:
        """Stop receiving, store what was received, stop the tasks."""
        if self.mqtt is not None:
            self.mqtt.stop()
        await self.intake.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _take_mqtt_duty(self) -> None:
        """Subscribe once this process holds an MQTT duty, trying again every
        ``MQTT_DUTY_RETRY_S`` (another worker holds it; it may die and free it).

        Without a shared group one process of the database subscribes, with the
        configured client id (two clients with one id would keep throwing each other
        off the broker). With ``CITYOS_MQTT_SHARED_GROUP`` every process subscribes,
        each with a numbered slot of its own (``{client id}-{slot}``), stable across
        restarts, so each persistent session is picked up again by some process.
        """
        options = self._mqtt_options
        if options is None:
            return
        while self.mqtt is None:
            slot = self._claim_mqtt_slot(options)
            if slot is not None:
                if options.shared_group:
                    options = dataclasses.replace(options, client_id=f"{options.client_id}-{slot}")
                self.mqtt = MqttSubscriber(options, self.intake, clock_ms)
                self.mqtt.start()
                log.info("MQTT ingestion runs in this process as %s", options.client_id)
                return
            await asyncio.sleep(MQTT_DUTY_RETRY_S)

    def _claim_mqtt_slot(self, options: MqttOptions) -> int | None:
        slots = range(MQTT_SHARED_SLOTS) if options.shared_group else range(1)
        for slot in slots:
            if self.tables.claim_duty(f"mqtt-{slot}"):
                return slot
        return None

    async def _housekeeping(self) -> None:
        """Forget the keys of uplinks stored longer ago than any redelivery comes, and dead
        letters past their retention."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            try:
                ttl_ms = int(self.settings.ingest_dedupe_ttl_s * 1000)
                removed = self.tables.expire_uplink_keys(clock_ms() - ttl_ms)
                if removed:
                    log.info("Forgot %d uplink keys older than the dedupe window", removed)
                keep_ms = int(self.settings.ingest_dead_letter_retention_days * 86_400_000)
                removed = self.tables.expire_dead_letters(clock_ms() - keep_ms)
                if removed:
                    log.info("Deleted %d dead letters past their retention", removed)
            except Exception:
                log.exception("Ingestion housekeeping failed")


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


__all__ = ["DeviceRegistry", "IngestRuntime", "mqtt_options"]
