"""PostgreSQL outages: a connection pool that fails fast while the database is away.

The ``Storage`` protocol is synchronous and runs on the event loop, so a request that
waited for a dead database would stall every other request of the process. The
:class:`ReconnectingPool` therefore keeps an *availability gate*:

- The first connection failure (refused connection, server shutdown, broken socket,
  no connection within the pool timeout) closes the gate and raises
  :class:`DatabaseUnavailable`, which the API answers with 503 ProblemDetails and a
  ``Retry-After``. While the gate is closed, every call fails at once the same way:
  nothing waits for a socket.
- A background thread probes the server at once and then every ``probe_interval_s``
  with a fresh connection. When one succeeds it replaces the whole pool (the old one holds only
  sockets of the dead server) and opens the gate: recovery needs no restart and
  takes at most one probe interval after the server accepts connections.
- Errors that are not about reaching the database (constraint violations, lock
  timeouts, bad SQL) pass through untouched.

Nothing acknowledged is lost by this: a write either committed before its 2xx was
sent (PostgreSQL's commit is durable before it answers) or failed with the 503, in
which case it may or may not have been applied, as the detail of the error says.

TCP keepalives and ``tcp_user_timeout`` bound how long a query can wait on a server
that vanished without closing its sockets (a network partition rather than a restart).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from cityos.core.errors import ServiceUnavailable

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[Any, ...]]  # Any: column values of any SQL type

# SQLSTATEs that mean "the server is not there for us": class 08 (connection
# exception) and the operator-intervention codes of a shutdown or a crash restart.
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03"})

CONNECT_TIMEOUT_S = 3
"""How long opening a connection may take (libpq ``connect_timeout``)."""


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached now; the request may be retried later."""

    retry_after_s = 3


def connection_options() -> dict[str, Any]:  # Any: psycopg takes them as **kwargs
    """libpq options every cityos connection uses, so that no call can hang on a dead
    server: a connect timeout, keepalives and a bound on unacknowledged sends."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
    }


def is_unavailability(error: BaseException, conn: Connection | None = None) -> bool:
    """True when ``error`` says the database is unreachable rather than the query wrong."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    if conn is not None and (conn.closed or conn.broken):
        return True
    state = error.sqlstate
    # A client-side failure (socket closed, connection refused) has no SQLSTATE.
    return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES


class ReconnectingPool:
    """A ``psycopg_pool.ConnectionPool`` behind an availability gate (see module docstring).

    Offers the two pool methods the storage uses, :meth:`connection` and :meth:`close`,
    plus :meth:`ping` for ``/health``. Thread-safe like the pool it wraps.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        kwargs: dict[str, Any] | None = None,  # Any: libpq and psycopg connection options
        timeout_s: float = 5.0,
        probe_interval_s: float = 0.5,
        name: str = "cityos",
    ) -> None:
        self._url = url
        self._pool_options: dict[str, Any] = {  # Any: ConnectionPool keyword arguments
            "min_size": min_size,
            "max_size": max_size,
            "kwargs": {**connection_options(), **(kwargs or {})},
            "timeout": timeout_s,
            # A pool that cannot reconnect gives up quickly: the gate takes over.
            "reconnect_timeout": max(timeout_s, 5.0),
            "name": name,
        }
        self.probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._down_reason: str | None = None
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None

    def _new_pool(self) -> ConnectionPool[Connection]:
        return ConnectionPool(self._url, open=True, **self._pool_options)

    @property
    def available(self) -> bool:
        """False from a connection failure until a probe reaches the server again."""
        return self._down_reason is None

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """A pooled connection, as ``ConnectionPool.connection``; raises
        :class:`DatabaseUnavailable` at once while the gate is closed, and closes it on a
        connection failure."""
        reason = self._down_reason
        if reason is not None:
            raise _unavailable()
        pool = self._pool
        conn: Connection | None = None
        try:
            with pool.connection(timeout) as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            if not is_unavailability(error, conn):
                raise
            self.report_failure(str(error).strip() or type(error).__name__)
            raise _unavailable() from error

    def report_failure(self, reason: str) -> None:
        """Close the gate and start probing (idempotent while it is closed)."""
        with self._lock:
            if self._closed.is_set():
                return
            if self._down_reason is None:
                log.warning(
                    "PostgreSQL is unavailable (%s); answering 503 until it is back", reason
                )
            self._down_reason = reason or "connection lost"
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(
                    target=self._probe_until_back, name="cityos-db-probe", daemon=True
                )
                self._prober.start()

    def _probe_until_back(self) -> None:
        # The first probe goes at once: a single dropped connection (an idle one killed
        # by a firewall or an administrator) should close the gate only for an instant.
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._url, **connection_options()) as probe:
                    probe.execute("SELECT 1")
            except psycopg.Error as error:
                log.debug("PostgreSQL still unavailable: %s", error)
                self._closed.wait(self.probe_interval_s)
                continue
            fresh = self._new_pool()
            with self._lock:
                if self._closed.is_set():
                    fresh.close()
                    return
                stale, self._pool = self._pool, fresh
                self._down_reason = None
            log.warning("PostgreSQL is reachable again; serving requests")
            # Connections still lent out go back to a closed pool, which closes them.
            stale.close(timeout=0)
            return

    def ping(self, timeout_s: float = 2.0) -> bool:
        """True when a trivial query succeeds within ``timeout_s`` now (never raises)."""
        if not self.available:
            return False
        try:
            with self.connection(timeout_s) as conn:
                conn.execute("SELECT 1")
        except (DatabaseUnavailable, psycopg.Error):
            return False
        return True

    def close(self) -> None:
        """Close the pool and stop probing."""
        with self._lock:
            self._closed.set()
            pool = self._pool
        pool.close()


def _unavailable() -> DatabaseUnavailable:
    # The reason (host, port, server message) goes to the log, not to clients.
    return DatabaseUnavailable(
        "The database is unavailable; retry later. A write answered with this error may "
        "or may not have been applied. / データベースに接続できません。しばらくしてから"
        "再試行してください(この応答を受けた書き込みは反映されていない可能性があります)。"
    )
