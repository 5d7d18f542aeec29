"""The one settings object. Nothing else in cityos reads ``os.environ``.

Every field can be set by an environment variable with the ``CITYOS_`` prefix,
for example ``CITYOS_DATA_DIR=/var/lib/cityos`` or ``CITYOS_AUTH=off``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of one cityos process."""

    model_config = SettingsConfigDict(env_prefix="CITYOS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(
        default=1,
        ge=1,
        description=(
            "API processes serving the one port (`cityos serve --workers N`). Meant for "
            "PostgreSQL; SQLite serialises their writes and cannot share /events between them."
        ),
    )
    data_dir: Path = Path("data")
    database: str | None = Field(
        default=None,
        description=(
            "Database URL: postgresql://user@host:port/dbname for PostgreSQL + PostGIS, "
            "sqlite:///path for a SQLite file; unset means <data_dir>/cityos.sqlite3."
        ),
    )
    upgrade_on_start: bool = Field(
        default=False,
        description=(
            "Apply pending PostgreSQL schema migrations when the server starts "
            "(otherwise an out-of-date schema stops it; run `cityos db upgrade`). "
            "SQLite files are always upgraded when opened."
        ),
    )
    auth: Literal["on", "off"] = "on"
    public_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Entity types (short names or IRIs) anyone may read without a key; comma-separated."
        ),
    )
    max_body_bytes: int = 1_000_000
    default_page_limit: int = 20
    max_page_limit: int = 1000
    context_cache_map: Path | None = Field(
        default=None,
        description="JSON file mapping @context URLs to local files, served instead of fetching.",
    )
    context_fetch_timeout_s: float = 5.0
    log_level: str = "info"
    retention: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "History retention per entity type: a JSON object of type name (or IRI) to "
            'ISO 8601 duration, e.g. {"WaterObserved": "P1Y"}. Types not named keep '
            "everything."
        ),
    )
    temporal_instance_limit: int = Field(
        default=1000,
        ge=1,
        description=(
            "Temporal pagination (NGSI-LD §6.3.10): the most instances per attribute one "
            "temporal response returns; more are cut with 206 Partial Content and a "
            "Content-Range header. The ETSI conformance suite expects a limit between 5 and 19 "
            "(run it with CITYOS_TEMPORAL_INSTANCE_LIMIT=10)."
        ),
    )
    retention_interval_s: float = Field(
        default=3600.0, description="How often the retention task deletes expired history."
    )
    events_buffer_size: int = Field(
        default=10_000, description="Live events kept for Last-Event-ID replay (GET /events)."
    )
    events_buffer_age_s: float = Field(
        default=600.0, description="Live events older than this are not replayed."
    )
    events_heartbeat_s: float = Field(
        default=15.0, description="Idle event streams get a comment this often (proxies)."
    )
    events_retry_ms: int = Field(
        default=3000, description="Reconnection delay the event streams suggest to clients."
    )
    events_queue_limit: int = Field(
        default=1000, description="Events queued per stream before a slow client is dropped."
    )
    events_max_streams: int = Field(
        default=1000, description="Concurrent event streams per process; more get 503."
    )
    notification_lease_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "PostgreSQL: how long a process's undelivered notifications stay its own "
            "without a renewal; after that (the process died) another process delivers them."
        ),
    )
    state_resync_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "PostgreSQL: how often a process compares its subscriptions and @contexts with "
            "the database (changes of other processes normally arrive at once)."
        ),
    )

    mqtt_url: str | None = Field(
        default=None,
        description=(
            "MQTT broker of the LoRaWAN network server, e.g. mqtt://127.0.0.1:1883 "
            "(mqtts:// for TLS, user:password@ allowed); unset = no MQTT ingestion."
        ),
    )
    mqtt_client_id: str = Field(
        default="cityos-ingest",
        description="Fixed MQTT client id: the broker keeps this session's messages.",
    )
    mqtt_shared_group: str | None = Field(
        default=None,
        description="Subscribe as $share/GROUP/... so several workers split the traffic.",
    )
    mqtt_chirpstack_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["application/+/device/+/event/+"],
        description="ChirpStack v4 event topics (comma-separated).",
    )
    mqtt_ttn_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["v3/+/devices/+/+"],
        description="The Things Stack v3 topics (comma-separated).",
    )
    mqtt_session_expiry_s: int = Field(
        default=86_400, description="How long the broker keeps our session while we are away."
    )
    mqtt_receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65_535,
        description="Unacknowledged messages the broker may send us (bounds a batch).",
    )
    ingest_secret: str | None = Field(
        default=None,
        description=(
            "Shared secret HTTP ingestion requires in X-Ingest-Secret; unset = the HTTP "
            "ingestion endpoints answer 503."
        ),
    )
    ingest_max_body_bytes: int = Field(
        default=65_536, description="Larger ingestion messages are refused (dead-lettered)."
    )
    ingest_batch_size: int = Field(
        default=500, ge=1, description="Most messages stored in one transaction."
    )
    ingest_tenant: str = Field(default="", description="NGSI-LD tenant ingestion writes to.")
    ingest_dedupe_ttl_s: float = Field(
        default=86_400.0,
        description="How long the keys of stored uplinks are kept to drop redeliveries.",
    )
    ingest_dead_letter_retention_days: float = Field(
        default=90.0,
        gt=0,
        description=(
            "Dead letters (messages that could not be processed) are deleted this many days "
            "after their last attempt, so a broken sender cannot fill the disk."
        ),
    )
    ingest_health_interval_s: float = Field(
        default=60.0, description="How often silent devices are looked for (Alert entities)."
    )

    @field_validator("mqtt_chirpstack_topics", "mqtt_ttn_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_types", mode="before")
    @classmethod
    def _split_public_types(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def sqlite_path(self) -> Path:
        """Where the embedded SQLite database lives."""
        if self.database and self.database.startswith("sqlite:///"):
            return Path(self.database.removeprefix("sqlite:///"))
        return self.data_dir / "cityos.sqlite3"
