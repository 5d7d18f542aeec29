"""The SQLite write-ahead log is checkpointed on the checkpointer's thread, not in commits."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_checkpoint import FALLBACK_AUTOCHECKPOINT_PAGES


def _entity(index: int) -> dict[str, object]:
    return {
        "id": f"urn:ngsi-ld:Sensor:{index}",
        "type": ["https://example.org/Sensor"],
        "createdAt": "2026-11-24T00:00:00Z",
        "modifiedAt": "2026-11-24T00:00:00Z",
        "attrs": {"https://example.org/note": [{"type": "Property", "value": "x" * 2000}]},
    }


def _wait_for(check: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_committed_pages_reach_the_database_file_without_a_checkpoint_in_the_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cityos.sqlite3"
    storage = SqliteStorage(path)
    try:
        size_before = path.stat().st_size
        with storage.transaction():
            for index in range(1000):  # about 2 MB: far below the writer's own threshold
                storage.insert("", _entity(index))  # type: ignore[arg-type]

        # The commit left its pages in the log; the checkpointer copies them soon after.
        assert _wait_for(
            lambda: (
                storage._checkpointer.checkpoints >= 1
                and path.stat().st_size > size_before + 1_500_000
            )
        )
        autocheckpoint = storage._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert autocheckpoint == FALLBACK_AUTOCHECKPOINT_PAGES
    finally:
        storage.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM entities").fetchone()[0] == 1000


def test_close_stops_the_checkpointer_thread(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "cityos.sqlite3")
    thread = storage._checkpointer._thread

    storage.close()

    assert not thread.is_alive()
