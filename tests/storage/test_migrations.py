"""Schema migrations: versioned files, applied in order by ``cityos db upgrade`` or on open."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from cityos.cli import app
from cityos.storage import postgres, sqlite
from cityos.storage.base import HistoryScan
from cityos.storage.migrations import SchemaOutOfDateError, latest_version, load_migrations
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_migrations_are_numbered_from_one_without_gaps(dialect: str) -> None:
    versions = [m.version for m in load_migrations(dialect)]  # type: ignore[arg-type]
    assert versions == list(range(1, len(versions) + 1))
    assert versions


def test_postgres_upgrades_from_the_first_schema_to_the_newest(
    new_postgres_database: Callable[[], str],
) -> None:
    url = new_postgres_database()
    with psycopg.connect(url, autocommit=True) as conn:
        assert postgres.upgrade_schema(conn, target=1) == [1]
        assert postgres.schema_version(conn) == 1
        assert postgres.upgrade_schema(conn) == list(range(2, latest_version("postgres") + 1))
        assert postgres.schema_version(conn) == latest_version("postgres")
        assert postgres.upgrade_schema(conn) == []
    PostgresStorage(url).close()


def test_postgres_entity_stored_before_history_gets_history_from_its_next_update(
    new_postgres_database: Callable[[], str],
) -> None:
    url = new_postgres_database()
    entity = {"id": "urn:old", "type": ["urn:T"], "attrs": {"urn:a": [{"value": 1}]}}
    with psycopg.connect(url, autocommit=True) as conn:
        postgres.upgrade_schema(conn, target=1)
        conn.execute(
            "INSERT INTO entities (tenant, id, doc) VALUES ('', 'urn:old', %s)",
            (orjson.dumps(entity),),
        )
    storage = PostgresStorage(url, upgrade=True)
    try:
        assert storage.history("", "urn:old", HistoryScan()) == []
        storage.update("", {**entity, "attrs": {"urn:a": [{"value": 2}]}})
        rows = storage.history("", "urn:old", HistoryScan())
    finally:
        storage.close()
    assert [row.instance["value"] for row in rows] == [2]


def test_postgres_storage_refuses_an_out_of_date_schema_unless_asked_to_upgrade(
    new_postgres_database: Callable[[], str],
) -> None:
    url = new_postgres_database()
    with pytest.raises(SchemaOutOfDateError, match="cityos db upgrade"):
        PostgresStorage(url)
    PostgresStorage(url, upgrade=True).close()


def test_sqlite_upgrades_from_the_first_schema_to_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "cityos.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    assert sqlite.upgrade_schema(db, target=1) == [1]
    db.close()
    SqliteStorage(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    assert sqlite.schema_version(db) == latest_version("sqlite")
    assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    db.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_db_upgrade_command_applies_then_reports_up_to_date(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args = ["db", "upgrade", "--data-dir", str(tmp_path)]
    if backend == "postgres":
        args += ["--database", request.getfixturevalue("new_postgres_database")()]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "Applied migrations 1" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "already at version" in second.output
