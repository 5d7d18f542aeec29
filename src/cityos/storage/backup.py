"""``cityos db backup`` and ``cityos db restore``: one file per installation.

- SQLite: the three files of an installation (entities and history, API keys,
  subscriptions and outbox) are copied with SQLite's online backup API, which reads a
  consistent snapshot of each file while the server keeps writing (WAL readers do not
  block writers), and packed into one tar file. The files are snapshotted one after
  the other, not at one instant: a subscription created during the backup may be in
  one and not in the other, as after a crash.
- PostgreSQL: ``pg_dump -Fc`` (one consistent snapshot of the whole database) and
  ``pg_restore``; the client tools must be installed and of the server's major version
  or newer.

A restore refuses a target that holds an installation unless ``force`` is given.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from cityos.storage.postgres import is_postgres_url, schema_version
from cityos.storage.state_stores import sqlite_key_path, sqlite_subscription_path


class BackupError(RuntimeError):
    """A backup or restore cannot be made (its message says why and what to do)."""


def _installation_files(sqlite_path: Path) -> list[Path]:
    return [sqlite_path, sqlite_key_path(sqlite_path), sqlite_subscription_path(sqlite_path)]


def backup_sqlite(sqlite_path: Path, archive: Path) -> list[str]:
    """Write the installation at ``sqlite_path`` to the tar file ``archive``; return the
    names of the database files it holds. Safe while a server is writing."""
    if not sqlite_path.exists():
        raise BackupError(f"No SQLite database at {sqlite_path}")
    names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cityos-backup-") as tmp:
        for path, name in zip(_installation_files(sqlite_path), _ARCHIVE_NAMES, strict=True):
            if not path.exists():
                continue
            source = sqlite3.connect(path)
            target = sqlite3.connect(Path(tmp) / name)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
            names.append(name)
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            for name in names:
                tar.add(Path(tmp) / name, arcname=name)
        partial.replace(archive)
    return names


def restore_sqlite(archive: Path, sqlite_path: Path, *, force: bool = False) -> list[str]:
    """Put the installation in ``archive`` at ``sqlite_path``; return the files restored.

    The server must be stopped. An existing installation there is replaced only with
    ``force``."""
    targets = _installation_files(sqlite_path)
    with tempfile.TemporaryDirectory(prefix="cityos-restore-") as tmp:
        names = _extract(archive, Path(tmp))
        if any(path.exists() for path in targets) and not force:
            raise BackupError(f"An installation exists at {sqlite_path}; use --force to replace it")
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        restored = []
        for name, target in zip(_ARCHIVE_NAMES, targets, strict=True):
            for suffix in ("", "-wal", "-shm"):
                target.with_name(target.name + suffix).unlink(missing_ok=True)
            if name in names:
                shutil.move(Path(tmp) / name, target)
                restored.append(target.name)
    return restored


def _extract(archive: Path, folder: Path) -> list[str]:
    """Unpack a SQLite backup into ``folder``; the names of its files."""
    try:
        with tarfile.open(archive, "r") as tar:
            members = tar.getmembers()
            names = [member.name for member in members]
            if (
                _ARCHIVE_NAMES[0] not in names
                or any(name not in _ARCHIVE_NAMES for name in names)
                or not all(member.isfile() for member in members)
            ):
                raise BackupError(f"{archive} is not a cityos SQLite backup (it holds {names})")
            tar.extractall(folder, filter="data")
    except (OSError, tarfile.TarError) as error:
        raise BackupError(f"{archive} is not a cityos SQLite backup: {error}") from None
    return names


_ARCHIVE_NAMES = ("cityos.sqlite3", "keys.sqlite3", "subscriptions.sqlite3")
"""The names of an installation's files inside a backup, whatever they are called."""


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed; install the PostgreSQL client tools "
            f"(apt-get install postgresql-client) or run {name} yourself"
        )
    return found


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {result.stderr.strip()}")


def backup_postgres(url: str, archive: Path) -> None:
    """``pg_dump -Fc`` of the database at ``url`` into ``archive``."""
    partial = archive.with_name(archive.name + ".partial")
    _run([_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={partial}", url])
    partial.replace(archive)


def restore_postgres(archive: Path, url: str, *, force: bool = False) -> None:
    """``pg_restore`` of ``archive`` into the database at ``url`` (which must exist).

    A database that holds a cityos schema is replaced only with ``force``."""
    if not is_postgres_url(url):
        raise BackupError(f"Not a PostgreSQL URL: {url}")
    pg_restore = _tool("pg_restore")
    with psycopg.connect(url, autocommit=True) as conn:
        if schema_version(conn) > 0:
            if not force:
                raise BackupError("The database holds a cityos schema; use --force to replace it")
            _drop_relations(conn)
    _run([pg_restore, "--no-owner", "--exit-on-error", f"--dbname={url}", str(archive)])


def _drop_relations(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Drop every table, sequence and view of the current schema that no extension owns
    (PostGIS stays). ``pg_restore --clean`` cannot do it: it drops the primary keys of
    history partitions one by one, which PostgreSQL refuses for inherited constraints."""
    rows = conn.execute(
        "SELECT c.relkind, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'S', 'v', 'm') "
        "AND NOT c.relispartition AND NOT EXISTS (SELECT 1 FROM pg_depend d "
        " WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')"
    ).fetchall()
    kinds = {"r": "TABLE", "p": "TABLE", "S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW"}
    with conn.transaction():
        for kind in ("v", "m", "p", "r", "S"):
            for relkind, name in rows:
                if relkind == kind:
                    conn.execute(
                        sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
                            sql.SQL(kinds[kind]), sql.Identifier(str(name))
                        )
                    )
