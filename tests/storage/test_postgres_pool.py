"""Which database errors close the availability gate (503) and which pass through."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg
from psycopg_pool import PoolTimeout

from cityos.storage.postgres_pool import is_unavailability


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (pg.AdminShutdown("terminating connection due to administrator command"), True),
        (pg.CannotConnectNow("the database system is shutting down"), True),
        (pg.ConnectionFailure("connection failure"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (PoolTimeout("couldn't get a connection after 5.00 sec"), True),
        (pg.LockNotAvailable("could not obtain lock"), False),
        (pg.QueryCanceled("canceling statement due to statement timeout"), False),
        (pg.UniqueViolation("duplicate key value"), False),
        (ValueError("not a database error"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_only_failures_to_reach_the_database_count(error: Exception, unavailable: bool) -> None:
    assert is_unavailability(error) is unavailable
