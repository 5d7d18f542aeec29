"""The group committer on a real PostgreSQL: groups, order, and failures kept apart."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from cityos.core.errors import AlreadyExists
from cityos.storage.group_commit import Connection, GroupCommitter, Row, StatementWrite


@pytest.fixture(scope="module")
def url(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE written (n integer PRIMARY KEY, txid bigint NOT NULL)")
    return url


@pytest.fixture
def committer(url: str) -> Iterator[GroupCommitter]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE written")
    pool: ConnectionPool[Connection] = ConnectionPool(
        url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True
    )
    committer = GroupCommitter(pool)
    yield committer
    committer.close()
    pool.close()


def insert(n: int) -> Callable[[Connection], object]:
    def job(conn: Connection) -> object:
        conn.execute("INSERT INTO written VALUES (%s, txid_current())", (n,))
        return n

    return job


def held(gate: threading.Event) -> Callable[[Connection], object]:
    """A job that keeps the committer busy until ``gate`` opens, so later jobs queue up."""

    def job(conn: Connection) -> object:
        gate.wait(10)
        return None

    return job


def rows(url: str) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT n, txid FROM written").fetchall())


def test_writes_queued_together_commit_in_one_transaction(
    committer: GroupCommitter, url: str
) -> None:
    gate = threading.Event()
    committer.submit("gate", held(gate))
    commits = [committer.submit(n, insert(n)) for n in range(5)]
    gate.set()
    assert [commit.result(10) for commit in commits] == [0, 1, 2, 3, 4]
    assert len(set(rows(url).values())) == 1


def test_a_database_error_fails_only_its_own_write(committer: GroupCommitter, url: str) -> None:
    gate = threading.Event()
    committer.submit("gate", held(gate))
    first = committer.submit(1, insert(1))
    broken = committer.submit(2, lambda conn: conn.execute("SELECT 1 / 0"))
    last = committer.submit(3, insert(3))
    gate.set()
    assert (first.result(10), last.result(10)) == (1, 3)
    with pytest.raises(psycopg.errors.DivisionByZero):
        broken.result(10)
    assert sorted(rows(url)) == [1, 3]


def test_a_refused_write_leaves_the_group_committing(committer: GroupCommitter, url: str) -> None:
    def refuse(conn: Connection) -> object:
        raise AlreadyExists("taken")

    gate = threading.Event()
    committer.submit("gate", held(gate))
    refused = committer.submit(1, refuse)
    kept = committer.submit(2, insert(2))
    gate.set()
    assert kept.result(10) == 2
    with pytest.raises(AlreadyExists):
        refused.result(10)
    assert sorted(rows(url)) == [2]


def test_waiting_for_a_key_returns_once_its_write_is_committed(
    committer: GroupCommitter, url: str
) -> None:
    gate = threading.Event()
    committer.submit("gate", held(gate))
    committer.submit(7, insert(7))
    threading.Timer(0.2, gate.set).start()
    committer.wait_for(7)
    assert sorted(rows(url)) == [7]


def test_closing_runs_what_is_queued(committer: GroupCommitter, url: str) -> None:
    commits = [committer.submit(n, insert(n)) for n in range(3)]
    committer.close()
    assert all(commit.done() for commit in commits)
    assert sorted(rows(url)) == [0, 1, 2]


def test_waiting_for_all_returns_once_every_queued_write_is_committed(
    committer: GroupCommitter, url: str
) -> None:
    gate = threading.Event()
    committer.submit("gate", held(gate))
    for n in range(3):
        committer.submit(n, insert(n))
    threading.Timer(0.2, gate.set).start()
    committer.wait_for_all()
    assert sorted(rows(url)) == [0, 1, 2]


def statement_insert(n: int, *, refuse: bool = False) -> StatementWrite:
    """An insert sent ahead with its group; refused (as a taken id would be) on demand."""

    def finish(conn: Connection, row: Row | None) -> object:
        assert row is not None
        if refuse:
            raise AlreadyExists(f"{n} is taken")
        return row[0]

    return StatementWrite(
        "INSERT INTO written VALUES (%(n)s, txid_current()) RETURNING n", {"n": n}, finish
    )


def test_statement_writes_are_sent_together_and_finished_in_order(
    committer: GroupCommitter, url: str
) -> None:
    gate = threading.Event()
    blocker = committer.submit("gate", held(gate))
    commits = [committer.submit(n, statement_insert(n, refuse=n == 2)) for n in range(5)]
    gate.set()
    blocker.result(10)
    assert [c.result(10) for c in commits if c.exception(10) is None] == [0, 1, 3, 4]
    assert isinstance(commits[2].exception(), AlreadyExists)
    written = rows(url)
    # One transaction for the whole group, the refused write's row included: its
    # statement ran; only its finish refused it.
    assert sorted(written) == [0, 1, 2, 3, 4]
    assert len(set(written.values())) == 1


def test_a_database_error_in_a_pipelined_group_fails_only_its_own_write(
    committer: GroupCommitter, url: str
) -> None:
    gate = threading.Event()
    blocker = committer.submit("gate", held(gate))
    commits = [committer.submit(n, statement_insert(n)) for n in (10, 10, 11)]
    gate.set()
    blocker.result(10)
    assert commits[0].result(10) == 10
    assert isinstance(commits[1].exception(10), psycopg.errors.UniqueViolation)
    assert commits[2].result(10) == 11
    assert sorted(rows(url)) == [10, 11]
