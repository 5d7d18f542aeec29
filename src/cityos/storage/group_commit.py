"""Group commit: concurrent requests' writes share one transaction and one WAL flush.

A write made while serving an HTTP request (inside :func:`acknowledged_after_commit`,
which the API's middleware opens around every request) need not block the event loop
until its commit is durable: the storage prepares the statement, hands it to the
:class:`GroupCommitter`'s thread and returns. That thread runs every write queued
meanwhile in one transaction and commits once; PostgreSQL's commit (the WAL flush, a
disk sync) is the slow part of a small write, so N writes cost about one flush.

What keeps this as safe as one commit per write:
- The response waits: the middleware holds back the response (its status line) until
  every write of the request has committed, and answers with the write's error instead
  when one failed. No write is acknowledged before it is durable.
- Nothing reads around a pending write: reading an entity with a write in flight waits
  for that write first (see ``PostgresStorage``), so a read-modify-write never starts
  from a document a queued write is about to replace.
- Change listeners (subscriptions, live events) hear of a write after its commit, in
  the order the writes were made (``cityos.broker.changes``).
- A group whose transaction fails is rolled back and its writes are run again one
  transaction each, so one bad write fails alone and the others still commit.

Round trips: a write given as a :class:`StatementWrite` (the storage's entity writes) is
sent ahead with the rest of its group in pipeline mode: BEGIN, every statement and
COMMIT go out together and the committer waits once per group, not once per write.
Besides the round trips this spares the committer's thread a wake-up per statement,
each of which had to win the interpreter lock back from the busy event loop. What a
write must do after seeing its statement's result (a retry after a concurrent change)
runs once the group has committed, as a transaction of its own.

Writes outside a request (domain rules, imports, tests) and writes inside an explicit
storage transaction commit synchronously, as before. A transaction starts only once no
group is in flight, so a group never waits for a row lock of a transaction that waits
for the group. ``synchronous_commit = off`` would be faster still but is not used: a
server crash would lose writes already acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[Any, ...]]  # Any: column values of any SQL type
Row = tuple[Any, ...]  # Any: column values of any SQL type


@dataclass(frozen=True)
class StatementWrite:
    """A write whose first statement may be sent ahead of its result (pipelined).

    ``finish(conn, row)`` gets the statement's first row (``None`` when it returned
    none) and completes the write: it returns the write's result, raises its expected
    (non-database) error, or runs more statements on ``conn`` (e.g. a retry after a
    concurrent change). In a group it runs after the group has committed, with ``conn``
    in autocommit mode; run directly it runs on the caller's connection right after the
    statement, inside the caller's transaction if there is one.
    """

    statement: str
    params: dict[str, object]
    finish: Callable[[Connection, Row | None], object]

    def __call__(self, conn: Connection) -> object:
        """Run the whole write now on ``conn``."""
        return self.finish(conn, conn.execute(self.statement, self.params).fetchone())


WriteJob = Callable[[Connection], object]
"""A write to run on the group's connection, inside its transaction; returns the write's
result or raises its (expected, non-database) error. A :class:`StatementWrite` is one."""


class ConnectionSource(Protocol):
    """Where the committer takes its connection from (a pool; see ``postgres_pool``)."""

    def connection(self, timeout: float | None = None) -> AbstractContextManager[Connection]:
        """A connection for the duration of the ``with`` block."""
        ...


_MAX_GROUP = 64

# Commit delay (PostgreSQL's commit_delay / commit_siblings, here): under a steady load,
# a group that would go out with fewer than _COMMIT_SIBLINGS writes waits _COMMIT_DELAY_S
# for more. Without it a pipelined committer takes one or two writes per group, and the
# fixed cost of a group (BEGIN, COMMIT, the pipeline's bookkeeping, all on the
# interpreter lock the event loop needs) is paid per write. "Steady" means the previous
# group ended less than _LOAD_WINDOW_S ago: a lone write on an idle server never waits.
_COMMIT_SIBLINGS = 4
_COMMIT_DELAY_S = 0.001
_LOAD_WINDOW_S = 0.005

_acknowledgements: ContextVar[list[Future[object]] | None] = ContextVar(
    "cityos_acknowledgements", default=None
)
_last_deferred = threading.local()


@contextmanager
def acknowledged_after_commit() -> Iterator[list[Future[object]]]:
    """Let writes in this context (one HTTP request) commit in groups; yields the list of
    their commits, which the caller must wait for before acknowledging anything."""
    pending: list[Future[object]] = []
    token = _acknowledgements.set(pending)
    try:
        yield pending
    finally:
        _acknowledgements.reset(token)


def deferral_allowed() -> bool:
    """True when the current context waits for its writes' commits (see above) and runs
    on the event loop (whose thread the listeners are told on)."""
    if _acknowledgements.get() is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def note_deferred(commit: Future[object]) -> None:
    """Record a write handed to the committer: the request waits for it, and
    :func:`take_last_deferred` gives it to the change listeners."""
    pending = _acknowledgements.get()
    assert pending is not None, "a write was deferred outside acknowledged_after_commit"
    pending.append(commit)
    _last_deferred.commit = commit


def take_last_deferred() -> Future[object] | None:
    """The commit of this thread's last write if it was deferred (then forgotten), else
    ``None`` (the write has committed already)."""
    commit: Future[object] | None = getattr(_last_deferred, "commit", None)
    _last_deferred.commit = None
    return commit


def forget_last_deferred() -> None:
    """Mark this thread's current write as synchronous (called as each write starts)."""
    _last_deferred.commit = None


@dataclass
class _Queued:
    job: WriteJob
    commit: Future[object] = field(default_factory=Future)


class GroupCommitter:
    """A thread that runs queued writes in groups, one transaction and commit per group.

    Writes run in the order they were submitted, and their futures complete in that
    order, after the commit (with the job's result), or with its error. Each write names
    the thing it writes (a key, such as tenant and entity id) so that readers can wait
    for the writes in flight of that thing (:meth:`wait_for`).
    """

    def __init__(self, pool: ConnectionSource, *, name: str = "cityos-commit") -> None:
        self._pool = pool
        self._name = name
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._in_flight: dict[object, Future[object]] = {}
        self._last: Future[object] | None = None

    def submit(self, key: object, job: WriteJob) -> Future[object]:
        """Queue a write of ``key``; its future completes once the write has committed."""
        queued = _Queued(job)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._in_flight[key] = queued.commit
            self._last = queued.commit
        queued.commit.add_done_callback(lambda done: self._landed(key, done))
        self._queue.put(queued)
        return queued.commit

    def _landed(self, key: object, done: Future[object]) -> None:
        with self._lock:
            if self._in_flight.get(key) is done:
                del self._in_flight[key]

    def in_flight(self, key: object) -> bool:
        """True while a write of ``key`` is queued or running (not yet committed)."""
        with self._lock:
            return key in self._in_flight

    def wait_for(self, key: object) -> None:
        """Block until the writes of ``key`` queued so far have committed (or failed).

        Writes complete in order, so waiting for the last one waits for all of them.
        """
        with self._lock:
            commit = self._in_flight.get(key)
        if commit is not None:
            wait([commit])

    def wait_for_all(self) -> None:
        """Block until every write queued so far has committed (or failed)."""
        with self._lock:
            last = self._last
        if last is not None:
            wait([last])

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        last_group_end = 0.0
        while True:
            first = self._queue.get()
            if first is None:
                return
            if (
                self._queue.qsize() < _COMMIT_SIBLINGS - 1
                and time.monotonic() - last_group_end < _LOAD_WINDOW_S
            ):
                time.sleep(_COMMIT_DELAY_S)
            group = [first]
            stopping = False
            while len(group) < _MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
            self._commit(group)
            last_group_end = time.monotonic()
            if stopping:
                return

    def _commit(self, group: list[_Queued]) -> None:
        """Run a group in one transaction; on a database error, each write on its own."""
        statements = [queued.job for queued in group if isinstance(queued.job, StatementWrite)]
        try:
            if len(statements) == len(group):
                outcomes = self._run_pipelined(statements)
            else:
                outcomes = self._run_in_transaction(group)
        except Exception as error:
            # Rolled back: nothing of the group was written, so each may run again.
            if len(group) == 1:
                group[0].commit.set_exception(error)
                return
            log.warning("A group commit of %d writes failed; retrying one by one", len(group))
            for queued in group:
                self._commit([queued])
            return
        for queued, (result, refusal) in zip(group, outcomes, strict=True):
            if refusal is None:
                queued.commit.set_result(result)
            else:
                queued.commit.set_exception(refusal)

    def _run_pipelined(self, writes: list[StatementWrite]) -> list[tuple[object, Exception | None]]:
        """Send a group's statements in one transaction, pipelined; then finish each
        write (see :class:`StatementWrite`). A database error before the commit fails
        the group (the caller retries each write alone); one in a write's finish fails
        only that write, the group being committed already."""
        with self._pool.connection() as conn:
            with conn.pipeline(), conn.transaction():
                cursors = [conn.execute(write.statement, write.params) for write in writes]
            outcomes: list[tuple[object, Exception | None]] = []
            for write, cursor in zip(writes, cursors, strict=True):
                try:
                    outcomes.append((write.finish(conn, cursor.fetchone()), None))
                except Exception as error:
                    outcomes.append((None, error))
        return outcomes

    def _run_in_transaction(self, group: list[_Queued]) -> list[tuple[object, Exception | None]]:
        outcomes: list[tuple[object, Exception | None]] = []
        with self._pool.connection() as conn, conn.transaction():
            for queued in group:
                try:
                    outcomes.append((queued.job(conn), None))
                except psycopg.Error:
                    raise
                except Exception as error:
                    # An expected refusal (e.g. AlreadyExists): no database error was
                    # raised, so the transaction goes on for the others.
                    outcomes.append((None, error))
        return outcomes
