"""Checkpoints of the SQLite write-ahead log on a thread of their own.

SQLite copies the write-ahead log back into the database file (a checkpoint) when a
commit leaves the log longer than ``wal_autocheckpoint`` pages: inside that COMMIT, on
the committing thread, which in cityos is the event loop. Sensor ingestion dirties
thousands of scattered pages per batch (entity documents and history rows of hundreds
of devices), so nearly every batch commit paid for a checkpoint as well: about two
thirds of its COMMIT time (23 of 35 us per uplink, measured with bench_ingest).

:class:`WalCheckpointer` does that work on its own connection and thread instead:
after the commits it is told about (at most every ``interval_s``), a PASSIVE checkpoint,
which never blocks a writer or a reader. Python's sqlite3 releases the GIL while SQLite
works, so the copy runs on another core. Pages rewritten by several commits between two
checkpoints are copied once. The writer's own automatic checkpoint stays as a safety
net, at a longer log (:data:`FALLBACK_AUTOCHECKPOINT_PAGES`), for when this thread falls
behind or is stopped.

The price is a longer log file under continuous writing. SQLite starts the log over
only when a transaction begins while everything in it has been copied back; during a
backlog drain the next batch begins while the checkpoint of the last one still runs,
so the log keeps growing until the writer's own checkpoint (which then finds nearly
every page copied already) lets it start over: with bench_ingest's 10,000 devices the
``-wal`` file stayed under 90 MB over 150,000 uplinks (15 MB before), and the drain ran
at 4,577 uplinks/s instead of 3,610.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FALLBACK_AUTOCHECKPOINT_PAGES = 16_000
"""The writer checkpoints itself past this many log pages (64 MiB of 4 KiB pages)."""


class WalCheckpointer:
    """Checkpoints ``path``'s write-ahead log in the background (see the module doc)."""

    def __init__(self, path: Path, *, interval_s: float = 0.1) -> None:
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0
        """Checkpoints run so far (tests, diagnostics)."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="cityos-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        """A write transaction was committed (cheap: the writer calls it every time)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread (the last commits are checkpointed when the file closes)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                if self._stopping.is_set():
                    return
                self._wake.clear()
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error:
                    # The writer's automatic checkpoint takes over; try again next time.
                    log.exception("Checkpointing %s failed", self.path)
                # Let commits gather: a page rewritten meanwhile is copied once.
                if self._stopping.wait(self.interval_s):
                    return
        finally:
            db.close()
