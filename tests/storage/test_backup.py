"""``cityos db backup`` / ``cityos db restore``: SQLite online backup under writes, and a
``pg_dump`` / ``pg_restore`` round trip of a PostgreSQL test database."""

from __future__ import annotations

import sqlite3
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from cityos.cli import app
from cityos.settings import Settings
from cityos.storage.migrations import latest_version
from cityos.storage.postgres import PostgresStorage
from cityos.storage.transfer import copy_installation
from tests.conftest import NGSI, start_server
from tests.storage.installations import dump, fill, sensor, sqlite_url


def said(output: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(output.split())


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_backup_of_a_quiet_installation_restores_to_equal_data(tmp_path: Path) -> None:
    fill(Settings(data_dir=tmp_path / "source", auth="off"))
    archive = tmp_path / "cityos.backup"
    invoke("db", "backup", "--to", str(archive), "--data-dir", str(tmp_path / "source"))
    invoke("db", "restore", "--from", str(archive), "--data-dir", str(tmp_path / "restored"))
    assert dump(sqlite_url(tmp_path / "restored")) == dump(sqlite_url(tmp_path / "source"))


def test_backup_of_a_running_server_under_writes_is_consistent(tmp_path: Path) -> None:
    """Each file is one snapshot: every entity's value is the last value of its history."""
    running = start_server(Settings(data_dir=tmp_path / "live", auth="off"))
    stop = threading.Event()
    written: list[float] = []

    def write() -> None:
        with httpx.Client(base_url=running.base_url + NGSI) as http:
            value = 0.0
            while not stop.is_set():
                value += 1
                http.patch(
                    "/entities/urn:ngsi-ld:Sensor:1/attrs",
                    json={"temperature": {"type": "Property", "value": value}},
                ).raise_for_status()
                written.append(value)

    try:
        api = running.base_url + NGSI
        assert httpx.post(api + "/entities", json=sensor(1, 0.0, "2024-01-01T00:00:00.000Z"))
        writer = threading.Thread(target=write)
        writer.start()
        while len(written) < 20:
            stop.wait(0.01)
        archive = tmp_path / "live.backup"
        invoke("db", "backup", "--to", str(archive), "--data-dir", str(tmp_path / "live"))
        during = len(written)
        stop.set()
        writer.join()
    finally:
        stop.set()
        running.stop()
    invoke("db", "restore", "--from", str(archive), "--data-dir", str(tmp_path / "restored"))
    restored = dump(sqlite_url(tmp_path / "restored"))
    (entity,) = restored["entities"][""]
    value = entity["attrs"]["https://uri.etsi.org/ngsi-ld/default-context/temperature"][0]["value"]
    history = [
        row[3]["value"]
        for row in restored["history"][("", "urn:ngsi-ld:Sensor:1")]
        if row[0].endswith("/temperature")
    ]
    assert 20 <= value <= during
    assert history == [0.0, *range(1, int(value) + 1)], "history ends with the entity's value"
    db = sqlite3.connect(tmp_path / "restored" / "cityos.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


def test_restore_refuses_an_existing_installation_without_force(tmp_path: Path) -> None:
    fill(Settings(data_dir=tmp_path / "a", auth="off"))
    archive = tmp_path / "a.backup"
    invoke("db", "backup", "--to", str(archive), "--data-dir", str(tmp_path / "a"))
    result = CliRunner().invoke(
        app, ["db", "restore", "--from", str(archive), "--data-dir", str(tmp_path / "a")]
    )
    assert result.exit_code == 2
    assert "--force" in said(result.output)
    invoke("db", "restore", "--from", str(archive), "--data-dir", str(tmp_path / "a"), "--force")


def test_restore_refuses_a_file_that_is_not_a_backup(tmp_path: Path) -> None:
    archive = tmp_path / "other.tar"
    (tmp_path / "notes.txt").write_text("hello")
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "notes.txt", arcname="notes.txt")
    result = CliRunner().invoke(
        app, ["db", "restore", "--from", str(archive), "--data-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "not a cityos SQLite backup" in said(result.output)
    assert not (tmp_path / "x").exists()


def test_pg_dump_and_pg_restore_round_trip(
    new_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    fill(Settings(data_dir=tmp_path / "source", auth="off"))
    source = new_postgres_database()
    copy_installation(sqlite_url(tmp_path / "source"), source)
    archive = tmp_path / "cityos.dump"
    invoke("db", "backup", "--to", str(archive), "--database", source)
    target = new_postgres_database()
    invoke("db", "restore", "--from", str(archive), "--database", target)
    assert dump(target) == dump(source)
    PostgresStorage(target).close()  # the restored schema is current


def test_pg_restore_refuses_a_database_with_a_schema_without_force(
    new_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    source = new_postgres_database()
    PostgresStorage(source, upgrade=True).close()
    archive = tmp_path / "cityos.dump"
    invoke("db", "backup", "--to", str(archive), "--database", source)
    result = CliRunner().invoke(
        app, ["db", "restore", "--from", str(archive), "--database", source]
    )
    assert result.exit_code == 2 and "--force" in said(result.output)
    invoke("db", "restore", "--from", str(archive), "--database", source, "--force")
    with psycopg.connect(source) as conn:
        found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    assert found == (latest_version("postgres"),)


def test_missing_client_tool_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(
        app,
        [
            "db",
            "backup",
            "--to",
            str(tmp_path / "x"),
            "--database",
            "postgresql://nobody@127.0.0.1/x",
        ],
    )
    assert result.exit_code == 2
    assert "pg_dump is not installed" in said(result.output)
