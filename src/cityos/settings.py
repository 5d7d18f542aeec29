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
