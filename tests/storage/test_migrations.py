"""Schema migrations: versioned files, applied in order by ``cityos db upgrade`` or on open."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from cityos.broker.model import AttributeInstance
from cityos.cli import app
from cityos.storage import postgres, sqlite
from cityos.storage.base import HistoryScan, numeric_value
from cityos.storage.migrations import SchemaOutOfDateError, latest_version, load_migrations
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_migrations_are_numbered_from_one_without_gaps(dialect: str) -> None:
    versions = [m.version for m in load_migrations(dialect)]
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


TEMP = "https://example.org/temperature"

# Instances of every shape that numeric_value tells apart; the migrations that fill
# value_num for rows written before it existed must agree with it on each.
INSTANCE_SHAPES: list[AttributeInstance] = [
    {"type": "Property", "value": 3},
    {"type": "Property", "value": -2.5e-300},
    {"value": 7},
    {"type": "Property", "value": True},
    {"type": "Property", "value": "12"},
    {"type": "Property", "value": "nul \u0000 inside"},
    {"type": "Property", "value": [1]},
    {"type": "Property", "value": {"n": 1}},
    {"type": "Property", "value": 1, "datasetId": "urn:ds"},
    {"type": "Property", "value": 1, "datasetId": None},
    {"type": "Property", "value": 1, "deletedAt": "2026-01-01T00:00:00Z"},
    {"type": None, "value": 1},
    {"type": "Relationship", "object": "urn:x"},
    {"type": "Relationship", "value": 1},
    {"type": "Property", "value": 5, "unitCode": "\u0000"},
]


def test_sqlite_file_of_the_inline_schema_1_gains_numeric_values(tmp_path: Path) -> None:
    # The history tables as cityos created them before migrations: version 1, history
    # included, no value_num.
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    sqlite.upgrade_schema(db, target=2)
    db.close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE temporal; CREATE TABLE temporal (tpk INTEGER NOT NULL, aid INTEGER NOT NULL,"
        " time_ms INTEGER NOT NULL, seq INTEGER NOT NULL, doc BLOB NOT NULL,"
        " PRIMARY KEY (tpk, aid, time_ms, seq)) WITHOUT ROWID;"
        " INSERT INTO temporal_entities (tenant, id, types) VALUES ('', 'urn:h', '[]');"
        f" INSERT INTO temporal_attrs (iri) VALUES ('{TEMP}');"
        ' INSERT INTO temporal VALUES (1, 1, 0, 1, \'{"type":"Property","value":3}\');'
        " UPDATE schema_version SET version = 1;"
    )
    db.commit()
    db.close()
    storage = SqliteStorage(path)
    summary = storage.aggregate_history("", "urn:h", TEMP, None, None, None, distinct=False)
    storage.close()
    assert summary is not None
    assert summary.buckets[0].total == 3.0


def test_sqlite_file_of_the_inline_schema_2_is_taken_as_version_3(tmp_path: Path) -> None:
    # The inline schema's version 2 is migrations 1-3; its number 2 must not make 0003
    # add value_num a second time.
    path = tmp_path / "inline2.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    sqlite.upgrade_schema(db, target=3)
    db.executescript(
        "INSERT INTO temporal_entities (tenant, id, types) VALUES ('', 'urn:h', '[]');"
        f" INSERT INTO temporal_attrs (iri) VALUES ('{TEMP}');"
        " INSERT INTO temporal VALUES (1, 1, 0, 1, '{\"value\":3}', 3.0);"
        " UPDATE schema_version SET version = 2;"
    )
    db.close()
    storage = SqliteStorage(path)
    summary = storage.aggregate_history("", "urn:h", TEMP, None, None, None, distinct=False)
    storage.close()
    assert summary is not None
    assert summary.buckets[0].total == 3.0
    db = sqlite3.connect(path, isolation_level=None)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [
        (latest_version("sqlite"),)
    ]
    db.close()


def test_sqlite_value_num_migration_agrees_with_numeric_value(tmp_path: Path) -> None:
    path = tmp_path / "cityos.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    sqlite.upgrade_schema(db, target=2)
    db.executemany(
        "INSERT INTO temporal (tpk, aid, time_ms, seq, doc) VALUES (1, 1, 0, ?, ?)",
        [(seq, orjson.dumps(doc)) for seq, doc in enumerate(INSTANCE_SHAPES)],
    )
    assert sqlite.upgrade_schema(db, target=3) == [3]
    filled = [value for (value,) in db.execute("SELECT value_num FROM temporal ORDER BY seq")]
    db.close()
    assert filled == [numeric_value(doc) for doc in INSTANCE_SHAPES]


def test_postgres_value_num_migration_agrees_with_numeric_value(
    new_postgres_database: Callable[[], str],
) -> None:
    url = new_postgres_database()
    with psycopg.connect(url, autocommit=True) as conn:
        postgres.upgrade_schema(conn, target=2)
        postgres.create_history_partition(conn, postgres.month_of(0))
        conn.cursor().executemany(
            "INSERT INTO temporal (tpk, aid, time, seq, dataset_id, deleted, doc) "
            "VALUES (1, 1, 'epoch', %s, %s, %s, %s)",
            [
                (seq, doc.get("datasetId"), "deletedAt" in doc, orjson.dumps(doc))
                for seq, doc in enumerate(INSTANCE_SHAPES)
            ],
        )
        assert postgres.upgrade_schema(conn, target=3) == [3]
        rows = conn.execute("SELECT value_num FROM temporal ORDER BY seq").fetchall()
    # PostgreSQL's JSON operators cannot read a document holding \u0000: the migration
    # leaves it NULL (aggregation over it falls back to the broker), never wrong.
    expected = [
        None if rb"\u0000" in orjson.dumps(doc) else numeric_value(doc) for doc in INSTANCE_SHAPES
    ]
    assert [value for (value,) in rows] == expected
