"""The production backend: PostgreSQL 15+ with PostGIS 3, through psycopg 3 and a pool.

Design notes (why, not what):
- The ``Storage`` protocol is synchronous and called from the event loop (queries also
  from worker threads, see ``api.ngsild.common.run_read``), so this uses psycopg's
  synchronous API. Connections come from a small pool in autocommit mode; a
  :meth:`PostgresStorage.transaction` pins one connection to the thread that opened it
  until the outermost block ends.
- Every write is ONE statement (data-modifying CTEs): the entity row and its index rows
  change together, atomically even outside a transaction, in one round trip. An update
  knows the document it replaces, so the index difference is worked out in Python and
  the statement touches only the rows that change (:mod:`cityos.storage.postgres_updates`):
  a value update (the common case) rewrites the entity row and adds history, nothing
  else. ``entities`` leaves free room on its pages (fillfactor) so that rewrite is
  usually a heap-only update that adds no index entries.
- Round trips per write: the broker reads an entity, changes it and writes it back. The
  storage remembers the last read of each thread with its row version and a write of
  the same entity starts from it instead of reading again (see
  :meth:`PostgresStorage._version_for_write`): a partial update is two round trips, the
  read and the write, with one commit. Routes that write one entity read it ahead on an
  async connection (:meth:`PostgresStorage.read_ahead`, ``postgres_read_ahead``), so
  that the event loop serves other requests during that read.
- An expected failure never raises a database error: a taken id is found with
  ``ON CONFLICT DO NOTHING``, a missing one by an empty ``RETURNING``. A database error
  inside a transaction would abort it, and batch operations carry on after a failed item.
- Documents are orjson bytes (``bytea``), exactly as SQLite keeps them. JSONB was
  tried and fails the round-trip property test: its ``numeric`` turns the float
  3.602879701896397e16 into the integer 36028797018963970, a different value. Pushing
  ``q`` into SQL (a later slice) gets its own JSONB projection of the values.
- Text columns cannot hold U+0000; ids, types and attribute names containing it are
  refused with a clear error instead of a driver failure (values may contain it).
- The schema comes from ``migrations/postgres`` (:func:`upgrade_schema`); it is applied
  by ``cityos db upgrade`` or on start when asked, never silently.

History (``temporal``, see :class:`cityos.storage.base.TemporalStorage`):
- Rows go in the same statement as the entity write they record (more CTEs on the same
  ``WITH``), so they commit or vanish with it. An update or delete needs the old document
  to work out the changed instances in Python (:func:`changed_instances`, shared with the
  other backends); it is the caller's last read or is read first, and the write is
  conditional on the row version read (``xmin``): if another writer got in between, the
  write matches nothing and is retried against the new version. Atomic without an
  explicit transaction, and no history row computed against a stale document.
- The table is range-partitioned by month of ``time``. Months are created on demand by
  the write path (a process remembers which exist) and, for this month and the next,
  when the storage opens, so a steady stream of live readings never waits for DDL.
  Partitions are created with ``CREATE TABLE`` + ``ATTACH PARTITION`` on a separate
  autocommit connection: ``CREATE TABLE ... PARTITION OF`` needs an ACCESS EXCLUSIVE lock
  on the parent and would wait forever for the caller's own open transaction when that
  has already written history; ATTACH needs only SHARE UPDATE EXCLUSIVE, which
  concurrent readers and writers do not block, and they see the new partition at once.
  No DEFAULT partition: a month attached later would have to move its rows out of it.
- A btree on (entity, attribute, time, seq) (the primary key; the entity key ``tpk``
  stands for (tenant, entity id)) answers per-entity range and ``lastN`` reads with one
  ordered index scan per partition; BRIN on ``time`` is a few pages per partition and
  serves time scans across entities such as retention.
- ``time`` is ``timestamptz`` (exact millisecond arithmetic in SQL) so operators can read
  partitions and rows as dates; ``dataset_id`` and ``deleted`` are copied out of the
  document for the same-observation rule, which is applied in SQL.
- ``value_num`` holds the instance's value when it is a plain number
  (:func:`~cityos.storage.base.numeric_value`), computed in Python at write time as in
  SQLite, so aggregation is a ``GROUP BY`` of integer period numbers (epoch ms minus the
  origin, divided by the period) over the primary-key range, without decoding documents.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql

from cityos.broker.model import AttributeInstance, StoredEntity
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.core.timeutil import now_iso
from cityos.storage.base import (
    DEFAULT_TENANT,
    INSTANCE_ID_PREFIX,
    AggregatedHistory,
    AttributeUsage,
    EntityScan,
    HistoryBucket,
    HistoryRow,
    HistoryScan,
    aggregation_bounds,
    changed_instances,
    index_rows,
    instance_time_ms,
    numeric_value,
    rebase_entity,
)
from cityos.storage.group_commit import (
    GroupCommitter,
    Row,
    StatementWrite,
    WriteJob,
    deferral_allowed,
    forget_last_deferred,
    note_deferred,
)
from cityos.storage.ingest_postgres import PostgresIngestTables
from cityos.storage.migrations import SchemaOutOfDateError, latest_version, load_migrations
from cityos.storage.pg_arrays import with_array_literals
from cityos.storage.postgres_pool import ReconnectingPool, connection_options
from cityos.storage.postgres_read_ahead import AsyncReader
from cityos.storage.postgres_read_ahead import Row as ReadRow
from cityos.storage.postgres_updates import (
    HISTORY_ROWS,
    INSERT_HISTORY,
    REPLACED_OBSERVATIONS,
    index_change,
    update_shape,
    update_statement,
)

Connection = psycopg.Connection[tuple[Any, ...]]  # Any: column values of any SQL type

_FIRST_SCAN_BATCH = 64
_MAX_SCAN_BATCH = 4096
_MIGRATION_LOCK = 0x63697479_6F73  # "cityos": one upgrader at a time per database
_PARTITION_LOCK = 0x63697479  # with the month: one creator of a partition at a time
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PARTITION_NAME = re.compile(r"^temporal_y(\d{4})m(\d{2})$")


def is_postgres_url(url: str | None) -> bool:
    """True for ``postgresql://`` and ``postgres://`` URLs."""
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


# -- schema ---------------------------------------------------------------------------


def schema_version(conn: Connection) -> int:
    """The schema version recorded in the database (0 when it has no cityos schema)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(found[0]) if found else 0


def upgrade_schema(conn: Connection, *, target: int | None = None) -> list[int]:
    """Apply the pending migrations up to ``target`` (default: all); return those applied.

    Each migration runs in its own transaction with its row in ``schema_version``; an
    advisory lock makes concurrent upgraders (several processes starting together)
    wait for each other instead of applying a migration twice.
    """
    applied: list[int] = []
    for migration in load_migrations("postgres"):
        if target is not None and migration.version > target:
            break
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            if migration.version <= schema_version(conn):
                continue
            # The file is trusted SQL shipped with cityos, hence the bare execute.
            conn.execute(sql.SQL(migration.sql))
            conn.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        applied.append(migration.version)
    return applied


# -- scratch databases (tests, benchmarks) --------------------------------------------


def database_url(server_url: str, dbname: str) -> str:
    """``server_url`` with its database name replaced by ``dbname``."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + dbname))


def create_database(server_url: str, dbname: str) -> str:
    """Create an empty database on the server of ``server_url``; return its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return database_url(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    """Drop a database, closing any connection still open to it."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


# -- history partitions ---------------------------------------------------------------


def month_of(time_ms: int) -> int:
    """The UTC month ``time_ms`` falls in, as ``year * 12 + month - 1``."""
    moment = _EPOCH + timedelta(milliseconds=time_ms)
    return moment.year * 12 + moment.month - 1


def history_partitions(conn: Connection) -> set[int]:
    """The months (see :func:`month_of`) that have a history partition."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'temporal'::regclass"
    ).fetchall()
    months: set[int] = set()
    for (name,) in rows:
        match = _PARTITION_NAME.match(name)
        if match is not None:
            months.add(int(match.group(1)) * 12 + int(match.group(2)) - 1)
    return months


def create_history_partition(conn: Connection, month: int) -> bool:
    """Create and attach the partition ``temporal_yYYYYmMM`` of ``month``; ``False`` if it
    exists already.

    ``conn`` must be an autocommit connection that holds no open transaction (see the
    design notes on why this is a separate CREATE and ATTACH). Concurrent creators of the
    same month wait for each other on an advisory lock; a lock wait longer than 30 s
    raises instead of hanging the writer.
    """
    year, index = divmod(month, 12)
    next_year, next_index = divmod(month + 1, 12)
    name = f"temporal_y{year:04d}m{index + 1:02d}"
    start = f"{year:04d}-{index + 1:02d}-01 00:00:00+00"
    end = f"{next_year:04d}-{next_index + 1:02d}-01 00:00:00+00"
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '30s'")
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_PARTITION_LOCK, month))
        found = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        if found is not None and found[0] is not None:
            return False
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE temporal INCLUDING DEFAULTS)").format(
                sql.Identifier(name)
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE temporal ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(name), sql.Literal(start), sql.Literal(end)
            )
        )
    return True


# -- statements -----------------------------------------------------------------------

_INSERT_CTES = """
WITH e AS (
    INSERT INTO entities (tenant, id, doc) VALUES (%(tenant)s, %(id)s, %(doc)s)
    ON CONFLICT (tenant, id) DO NOTHING RETURNING pk
){tenant}, t AS (
    INSERT INTO entity_types (tenant, type, pk)
    SELECT %(tenant)s, n.type, e.pk FROM e, unnest(%(types)s::text[]) AS n(type)
), a AS (
    INSERT INTO entity_attrs (tenant, attr, pk, kind)
    SELECT %(tenant)s, n.attr, e.pk, n.kind
    FROM e, unnest(%(attrs)s::text[], %(kinds)s::text[]) AS n(attr, kind)
), g AS (
    INSERT INTO entity_geometries (pk, tenant, attr, value, geom)
    SELECT e.pk, %(tenant)s, n.attr, n.value::jsonb,
           ST_SetSRID(ST_Force2D(ST_GeomFromGeoJSON(n.value)), 4326)
    FROM e, unnest(%(geo_attrs)s::text[], %(geo_values)s::text[]) AS n(attr, value)
)
"""

_DELETE_CTES = """
WITH e AS (
    DELETE FROM entities
    WHERE tenant = %(tenant)s AND id = %(id)s AND xmin = %(xmin)s::text::xid
    RETURNING pk
), t AS (
    DELETE FROM entity_types WHERE pk = (SELECT pk FROM e)
), a AS (
    DELETE FROM entity_attrs WHERE pk = (SELECT pk FROM e)
), g AS (
    DELETE FROM entity_geometries WHERE pk = (SELECT pk FROM e)
)
"""

# The temporal entity is upserted (an entity write keeps its last known types, as in
# the other backends); the rows follow (see cityos.storage.postgres_updates).
_TEMPORAL_ENTITY = """
, te AS (
    INSERT INTO temporal_entities (tenant, id, types)
    SELECT %(tenant)s, %(id)s, %(history_types)s::text[] {source}
    ON CONFLICT (tenant, id) DO UPDATE SET types = {types}
    RETURNING tpk
)"""
_HISTORY_CTES = HISTORY_ROWS + REPLACED_OBSERVATIONS + INSERT_HISTORY + "\n"
_ENTITY_HISTORY = _TEMPORAL_ENTITY.format(source="FROM e", types="EXCLUDED.types") + _HISTORY_CTES

_NEW_TENANT = """, tn AS (
    INSERT INTO tenants (name) SELECT %(tenant)s FROM e ON CONFLICT DO NOTHING
)"""
_INSERT = _INSERT_CTES.format(tenant=_NEW_TENANT) + _ENTITY_HISTORY + "SELECT pk FROM e"
# A tenant known to exist needs no conflict probe of ``tenants`` on every create.
_INSERT_KNOWN_TENANT = _INSERT_CTES.format(tenant="") + _ENTITY_HISTORY + "SELECT pk FROM e"
_DELETE = _DELETE_CTES + "SELECT count(*) FROM e"
_DELETE_WITH_HISTORY = _DELETE_CTES + _ENTITY_HISTORY + "SELECT count(*) FROM e"
# Appending keeps the recorded types, like the SQLite backend; the no-op update makes
# RETURNING give the tpk of an existing temporal entity.
_APPEND = (
    "WITH seed AS (SELECT 1)"
    + _TEMPORAL_ENTITY.format(source="FROM seed", types="temporal_entities.types")
    + _HISTORY_CTES
    + "SELECT h.seq FROM h ORDER BY h.ord"
)

_READ_FOR_WRITE = "SELECT doc, xmin::text FROM entities WHERE tenant = %s AND id = %s"

_read_ahead: ContextVar[tuple[object, str, str, ReadRow | None] | None] = ContextVar(
    "cityos_read_ahead", default=None
)
"""The row :meth:`PostgresStorage.read_ahead` read for the write about to run in this
context: (storage, tenant, entity id, row or ``None`` when the entity does not exist)."""


def _read_version(conn: Connection, tenant: str, entity_id: str) -> tuple[StoredEntity | None, str]:
    """The stored entity and its row version (``xmin``) as ``conn`` sees them."""
    row = conn.execute(_READ_FOR_WRITE, (tenant, entity_id)).fetchone()
    return (None, "") if row is None else (orjson.loads(row[0]), row[1])


class PostgresStorage(PostgresIngestTables):
    """``Storage`` on a PostgreSQL + PostGIS database. See :class:`cityos.storage.base.Storage`.

    Opening checks the schema version: with ``upgrade`` the pending migrations are
    applied, otherwise an out-of-date schema raises :class:`SchemaOutOfDateError` naming the
    command that fixes it. A database that cannot be reached raises
    ``psycopg.OperationalError`` with the server's reason. Opening also creates the
    history partitions of this month and the next (see the design notes).

    ``pool_size`` connections at most: in a server, one for the event loop, three for
    the query threads, one for the group committer and one for what it registers on
    the side (history partitions, attribute ids).
    """

    def __init__(self, url: str, *, upgrade: bool = False, pool_size: int = 6) -> None:
        with psycopg.connect(url, autocommit=True, **connection_options()) as conn:
            if upgrade:
                upgrade_schema(conn)
            current, needed = schema_version(conn), latest_version("postgres")
            if current < needed:
                raise SchemaOutOfDateError(
                    f"The database schema is at version {current}; this cityos needs "
                    f"version {needed}. Run `cityos db upgrade` (or start with --upgrade)."
                )
        # Outages (503 while the database is away, reconnection): see postgres_pool.
        self._pool = ReconnectingPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, name="cityos"
        )
        self._pinned: Connection | None = None
        self._url = url
        self._duties: set[str] = set()
        self._pinned_thread = 0
        self._last_read = threading.local()
        self._committer = GroupCommitter(self._pool)
        self._reader = AsyncReader(url)
        self._reading: dict[tuple[str, str], int] = {}
        """Entities being read ahead, with how many read-aheads of each are under way."""
        self._written_while_read: set[tuple[str, str]] = set()
        self._known_tenants: set[str] = {DEFAULT_TENANT}
        with self._pool.connection() as conn:
            self._partitions = history_partitions(conn)
            self._attr_ids: dict[str, int] = dict(
                conn.execute("SELECT iri, aid FROM temporal_attrs").fetchall()
            )
        now_ms = (datetime.now(UTC) - _EPOCH) // timedelta(milliseconds=1)
        self.ensure_history_partitions({month_of(now_ms), month_of(now_ms) + 1})

    # -- connections and transactions -------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """The transaction's connection on its own thread, else one from the pool."""
        pinned = self._pinned
        if pinned is not None and self._pinned_thread == threading.get_ident():
            yield pinned
            return
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._pinned is not None and self._pinned_thread == threading.get_ident():
            yield
            return
        # No group commit may be in flight while a transaction holds row locks: a group
        # could wait for one of them while this thread waits (in a read) for the group.
        self._committer.wait_for_all()
        with self._pool.connection() as conn, conn.transaction():
            self._pinned, self._pinned_thread = conn, threading.get_ident()
            try:
                yield
            finally:
                self._pinned, self._pinned_thread = None, 0

    # -- reads ------------------------------------------------------------------------

    def get(self, tenant: str, entity_id: str) -> StoredEntity | None:
        """The stored entity; also remembered, with its row version, for a write of the
        same entity that follows on this thread (see :meth:`_version_for_write`). Waits
        for a write of the entity still in flight (group commit) first."""
        self._committer.wait_for((tenant, entity_id))
        ahead = _read_ahead.get()
        if ahead is not None and ahead[:3] == (self, tenant, entity_id):
            _read_ahead.set(None)  # one write's starting point, used once
        else:
            ahead = None
        if ahead is not None and not self._committer.in_flight((tenant, entity_id)):
            row: tuple[Any, ...] | None = ahead[3]
        else:
            with self._connection() as conn:
                row = conn.execute(_READ_FOR_WRITE, (tenant, entity_id)).fetchone()
        if row is None:
            self._last_read.entry = None
            return None
        self._last_read.entry = (tenant, entity_id, row[0], row[1])
        entity: StoredEntity = orjson.loads(row[0])
        return entity

    async def read_ahead(self, tenant: str, entity_id: str) -> None:
        """Read the entity a write is about to start from, on an async connection, for
        the next :meth:`get` of it in this context (see ``postgres_read_ahead``). Call
        it right before the synchronous write: nothing may run in between."""
        key = (tenant, entity_id)
        if not self._pool.available or self._pinned is not None:
            return
        if self._committer.in_flight(key):
            return  # get waits for that write, then reads
        self._reading[key] = self._reading.get(key, 0) + 1
        try:
            done, row = await self._reader.read(tenant, entity_id)
        finally:
            written = key in self._written_while_read
            self._reading[key] -= 1
            if not self._reading[key]:
                del self._reading[key]
                self._written_while_read.discard(key)
        if done and not written and not self._committer.in_flight(key):
            _read_ahead.set((self, tenant, entity_id, row))

    async def close_async(self) -> None:
        """Close the read-ahead connections (on the event loop that used them)."""
        await self._reader.close()

    def get_many(self, tenant: str, entity_ids: list[str]) -> dict[str, StoredEntity]:
        for entity_id in entity_ids:
            self._committer.wait_for((tenant, entity_id))
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, doc FROM entities WHERE tenant = %s AND id = ANY(%s)",
                (tenant, entity_ids),
            ).fetchall()
        return {entity_id: orjson.loads(doc) for entity_id, doc in rows}

    def scan(self, tenant: str, scan: EntityScan) -> Iterator[tuple[int, StoredEntity]]:
        if scan.geo_bbox is not None:
            yield from self._scan_by_geometry(tenant, scan)
            return
        query, params = self._scan_sql(tenant, scan)
        after = scan.after_pk
        # Small first page: most queries stop after ``limit`` matches.
        batch = _FIRST_SCAN_BATCH
        while True:
            # ``after`` twice: see _scan_sql.
            page = (*params, after, after, batch)
            with self._connection() as conn:
                rows = conn.execute(query, page, binary=True).fetchall()
            for pk, doc in rows:
                yield pk, orjson.loads(doc)
            if len(rows) < batch:
                return
            after = rows[-1][0]
            batch = min(batch * 4, _MAX_SCAN_BATCH)

    def _scan_by_geometry(
        self, tenant: str, scan: EntityScan
    ) -> Iterator[tuple[int, StoredEntity]]:
        """Geo candidates: pks whose geometry's box meets the box (GiST), then documents,
        a small page first (the caller usually stops after ``limit`` matches).

        The box test (``&&``) is what the contract asks of a candidate scan, as in
        SQLite's R*Tree; the broker applies the exact predicate. Types, attributes and
        ids are checked on the documents: probing the index tables per geometry row
        costs more than the few extra documents it would save.
        """
        assert scan.geo_bbox is not None
        min_x, min_y, max_x, max_y = scan.geo_bbox
        attr_filter = "" if scan.geo_attr is None else "AND attr = %s"
        params: list[object] = [tenant, scan.after_pk, min_x, min_y, max_x, max_y]
        if scan.geo_attr is not None:
            params.append(scan.geo_attr)
        with self._connection() as conn:
            pks = [
                pk
                for (pk,) in conn.execute(
                    "SELECT DISTINCT pk FROM entity_geometries WHERE tenant = %s AND pk > %s "
                    "AND geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326) "
                    f"{attr_filter} ORDER BY pk",
                    params,
                )
            ]
        start, batch = 0, _FIRST_SCAN_BATCH
        while start < len(pks):
            chunk = pks[start : start + batch]
            start, batch = start + batch, min(batch * 4, _MAX_SCAN_BATCH)
            with self._connection() as conn:
                rows = conn.execute(
                    "SELECT pk, doc FROM entities WHERE pk = ANY(%s) ORDER BY pk",
                    (chunk,),
                    binary=True,
                ).fetchall()
            for pk, doc in rows:
                entity = orjson.loads(doc)
                if scan.ids is not None and entity["id"] not in scan.ids:
                    continue
                if scan.attrs_any is not None and not scan.attrs_any & entity["attrs"].keys():
                    continue
                if scan.types_any is not None and not scan.types_any.intersection(entity["type"]):
                    continue
                yield pk, entity

    @staticmethod
    def _scan_sql(tenant: str, scan: EntityScan) -> tuple[str, list[object]]:
        """A keyset-paginated candidate query; the last three parameters are pk, pk, limit.

        As in the SQLite backend: one type drives the query through the
        (tenant, type, pk) index, which yields rows already in pk order; otherwise the
        tenant's entities are walked in pk order and the other criteria are index probes.
        """
        where: list[str] = []
        params: list[object] = []
        if scan.types_any is not None and len(scan.types_any) == 1 and scan.ids is None:
            source, order = "entity_types t JOIN entities e ON e.pk = t.pk", "t.pk"
            where.append("t.tenant = %s AND t.type = %s")
            params.extend([tenant, next(iter(scan.types_any))])
        else:
            source, order = "entities e", "e.pk"
            if scan.types_any is not None:
                where.append(
                    "EXISTS (SELECT 1 FROM entity_types t2 WHERE t2.tenant = %s "
                    "AND t2.type = ANY(%s) AND t2.pk = e.pk)"
                )
                params.extend([tenant, sorted(scan.types_any)])
        where.append("e.tenant = %s")
        params.append(tenant)
        if scan.ids is not None:
            where.append("e.id = ANY(%s)")
            params.append(sorted(scan.ids))
        if scan.attrs_any is not None:
            where.append(
                "EXISTS (SELECT 1 FROM entity_attrs a WHERE a.tenant = %s "
                "AND a.attr = ANY(%s) AND a.pk = e.pk)"
            )
            params.extend([tenant, sorted(scan.attrs_any)])
        # The pk bound is given on both sides of the join: with it on ``t`` only, the
        # planner may merge-join with a walk of ``entities`` from its first row, a cost
        # that grows with every page.
        query = (
            f"SELECT e.pk, e.doc FROM {source} WHERE {' AND '.join(where)} "
            f"AND {order} > %s AND e.pk > %s ORDER BY {order} LIMIT %s"
        )
        return query, params

    def count_all(self, tenant: str) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT count(*) FROM entities WHERE tenant = %s", (tenant,))
            found = row.fetchone()
        return int(found[0]) if found else 0

    def attribute_usage(self, tenant: str) -> list[AttributeUsage]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT t.type, a.attr, a.kind, count(DISTINCT a.pk) FROM entity_attrs a "
                "JOIN entity_types t ON t.pk = a.pk AND t.tenant = a.tenant "
                "WHERE a.tenant = %s GROUP BY t.type, a.attr, a.kind",
                (tenant,),
            ).fetchall()
        return [AttributeUsage(t, a, k, int(n)) for t, a, k, n in rows]

    def type_counts(self, tenant: str) -> dict[str, int]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT type, count(*) FROM entity_types WHERE tenant = %s GROUP BY type",
                (tenant,),
            ).fetchall()
        return {type_iri: int(count) for type_iri, count in rows}

    def tenant_exists(self, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True
        with self._connection() as conn:
            found = conn.execute("SELECT 1 FROM tenants WHERE name = %s", (tenant,)).fetchone()
        # Only committed tenants are remembered: one seen inside a transaction may vanish.
        if found is not None and self._pinned is None:
            self._known_tenants.add(tenant)
        return found is not None

    def list_tenants(self) -> list[str]:
        with self._connection() as conn:
            rows = conn.execute("SELECT name FROM tenants").fetchall()
        return sorted({name for (name,) in rows} | {DEFAULT_TENANT})

    # -- writes -----------------------------------------------------------------------

    def insert(self, tenant: str, entity: StoredEntity) -> None:
        forget_last_deferred()
        self._last_read.entry = None
        now = entity.get("modifiedAt") or now_iso()
        params = _write_params(tenant, entity)
        params |= self._history_params(entity["type"], changed_instances(None, entity, now))
        statement = _INSERT_KNOWN_TENANT if tenant in self._known_tenants else _INSERT

        def finish(conn: Connection, row: Row | None) -> None:
            if row is None:
                raise AlreadyExists(f"Entity {entity['id']} already exists")

        write = StatementWrite(statement, with_array_literals(params), finish)
        self._write((tenant, entity["id"]), write)

    def update(self, tenant: str, entity: StoredEntity) -> StoredEntity:
        """See :meth:`Storage.update`. When the write is deferred (group commit), the
        document returned is the one the write started from. Should another process
        change the entity between the broker's read and this write, the write applies
        its own changes to that newer version (``rebase_entity``: no lost update); the
        change listeners are told which version was replaced (see
        ``cityos.broker.changes``) but get ``entity`` as the new state."""
        forget_last_deferred()
        rows = index_rows(entity)
        _refuse_nul([tenant, entity["id"], *rows.types, *(attr for attr, _ in rows.attrs)])
        now = entity.get("modifiedAt") or now_iso()
        old, xmin = self._version_for_write(tenant, entity["id"])
        if old is None:
            raise ResourceNotFound(f"Entity {entity['id']} not found")
        statement, params = self._update_params(tenant, entity, old, xmin, now)

        def finish(conn: Connection, row: Row | None) -> StoredEntity:
            replaced = old
            while row is None:
                # Another writer changed (or deleted) the entity since the read: apply
                # this write's own changes to the newer version and retry, so that the
                # other writer's change is kept (see ``rebase_entity``).
                current, version = _read_version(conn, tenant, entity["id"])
                if current is None:
                    raise ResourceNotFound(f"Entity {entity['id']} not found")
                rebased = rebase_entity(old, entity, current)
                replaced = current
                retry, retry_params = self._update_params(tenant, rebased, current, version, now)
                row = conn.execute(retry, retry_params).fetchone()
            return replaced

        write = StatementWrite(statement, params, finish)
        replaced: StoredEntity = self._write((tenant, entity["id"]), write, deferred=old)
        return replaced

    def _update_params(
        self, tenant: str, entity: StoredEntity, old: StoredEntity, xmin: str, now: str
    ) -> tuple[str, dict[str, object]]:
        """The statement and parameters that replace ``old`` (at row version ``xmin``)."""
        params: dict[str, object] = {
            "tenant": tenant,
            "id": entity["id"],
            "doc": orjson.dumps(entity),
            "xmin": xmin,
        }
        change = index_change(old, entity)
        params |= change.params()
        history = changed_instances(old, entity, now)
        types_kept = old["type"] == entity["type"]
        if history or not types_kept:
            params |= self._history_params(entity["type"], history)
        shape = update_shape(
            change,
            history=bool(history) or not types_kept,
            types_kept=types_kept,
            observations=params.get("h_observed_from") is not None,
        )
        return update_statement(shape), with_array_literals(params)

    def write_many(
        self, tenant: str, changes: list[tuple[StoredEntity | None, StoredEntity]]
    ) -> None:
        # Each update re-reads its row version (see ``update``), so a concurrent writer
        # in another process never gets history rows computed against a stale document.
        with self.transaction():
            for old, new in changes:
                if old is None:
                    self.insert(tenant, new)
                else:
                    self.update(tenant, new)

    def delete(self, tenant: str, entity_id: str) -> bool:
        """See :meth:`Storage.delete`. A deferred delete answers ``True`` (the entity
        was there when read); if it has gone by the time the write runs, the write fails
        with ``ResourceNotFound``, which the request answers instead."""
        forget_last_deferred()
        old, xmin = self._version_for_write(tenant, entity_id)
        if old is None:
            return False
        statement, params = self._delete_params(tenant, entity_id, old, xmin)
        deferred = self._deferring()

        def finish(conn: Connection, row: Row | None) -> bool:
            while row is None or not row[0]:
                replaced, version = _read_version(conn, tenant, entity_id)
                if replaced is None:
                    if deferred:
                        raise ResourceNotFound(f"Entity {entity_id} not found")
                    return False
                retry, retry_params = self._delete_params(tenant, entity_id, replaced, version)
                row = conn.execute(retry, retry_params).fetchone()
            return True

        write = StatementWrite(statement, params, finish)
        return bool(self._write((tenant, entity_id), write, deferred=True))

    def _delete_params(
        self, tenant: str, entity_id: str, old: StoredEntity, xmin: str
    ) -> tuple[str, dict[str, object]]:
        params: dict[str, object] = {"tenant": tenant, "id": entity_id, "xmin": xmin}
        rows = changed_instances(old, None, now_iso())
        if not rows:
            return _DELETE, params
        history = self._history_params(old["type"], rows)
        return _DELETE_WITH_HISTORY, with_array_literals(params | history)

    def _deferring(self) -> bool:
        """True when a write now would go to the group committer: inside a request that
        waits for its commits, and outside a transaction of this thread."""
        pinned_here = self._pinned is not None and self._pinned_thread == threading.get_ident()
        return not pinned_here and deferral_allowed()

    def _write(self, key: tuple[str, str], write: WriteJob, deferred: object = None) -> Any:
        """Run ``write`` now and return its result, or hand it to the group committer
        (see :mod:`cityos.storage.group_commit`) and return ``deferred``."""
        if key in self._reading:
            self._written_while_read.add(key)  # that read-ahead may miss this write
        if self._deferring():
            note_deferred(self._committer.submit(key, write))
            return deferred
        with self._connection() as conn:
            return write(conn)

    def _version_for_write(self, tenant: str, entity_id: str) -> tuple[StoredEntity | None, str]:
        """The document and row version a write of the entity starts from.

        When this thread's last read was of this entity (the broker reads an entity,
        changes it and writes it back), that read is used instead of a second round
        trip. It is only a starting point: the write is conditional on the row version,
        so if the entity changed since, the write matches nothing and is retried from a
        fresh read, exactly as when the read is made here. Consumed by the write, so a
        later write never starts from a document older than this one.
        """
        entry: tuple[str, str, bytes, str] | None = getattr(self._last_read, "entry", None)
        self._last_read.entry = None
        if entry is not None and entry[0] == tenant and entry[1] == entity_id:
            return orjson.loads(entry[2]), entry[3]
        return self._read_for_write(tenant, entity_id)

    def _read_for_write(self, tenant: str, entity_id: str) -> tuple[StoredEntity | None, str]:
        """The stored entity and its row version (``xmin``) for a conditional write."""
        self._committer.wait_for((tenant, entity_id))
        with self._connection() as conn:
            return _read_version(conn, tenant, entity_id)

    # -- history ----------------------------------------------------------------------

    def ensure_history_partitions(self, months: set[int]) -> None:
        """Make sure every month in ``months`` (see :func:`month_of`) has its partition.

        Cheap when they are known to this process. Otherwise runs on its own pool
        connection, never the caller's transaction (see the design notes).
        """
        missing = months - self._partitions
        if not missing:
            return
        with self._pool.connection() as conn:
            for month in sorted(missing):
                create_history_partition(conn, month)
                self._partitions.add(month)

    def _attr_id(self, iris: set[str]) -> dict[str, int]:
        """Attribute ids of ``iris``, registering new ones.

        Registered on their own connection and committed at once: an id is only a name,
        so one that outlives a rolled-back write is harmless, and the cache of this
        process stays right whatever the caller's transaction does.
        """
        missing = sorted(iris - self._attr_ids.keys())
        if missing:
            with self._pool.connection() as conn:
                conn.execute(
                    "INSERT INTO temporal_attrs (iri) SELECT unnest(%s::text[]) "
                    "ON CONFLICT (iri) DO NOTHING",
                    (missing,),
                )
                self._attr_ids.update(
                    conn.execute(
                        "SELECT iri, aid FROM temporal_attrs WHERE iri = ANY(%s)", (missing,)
                    ).fetchall()
                )
        return self._attr_ids

    def _history_params(
        self, types: list[str], rows: list[tuple[str, AttributeInstance]]
    ) -> dict[str, object]:
        """The ``h_*`` parameters of the history CTEs; creates what the rows need first
        (partitions of their months, attribute ids)."""
        datasets = [instance.get("datasetId") for _, instance in rows]
        _refuse_nul([*types, *(attr_iri for attr_iri, _ in rows), *filter(None, datasets)])
        times = [instance_time_ms(instance) for _, instance in rows]
        self.ensure_history_partitions({month_of(time_ms) for time_ms in times})
        aids = self._attr_id({attr_iri for attr_iri, _ in rows})
        observation = [
            (attr_iri, time_ms, instance.get("datasetId"))
            if "observedAt" in instance and "deletedAt" not in instance
            else None
            for (attr_iri, instance), time_ms in zip(rows, times, strict=True)
        ]
        # A later observation of the same batch replaces an earlier one (not a marker),
        # as if the rows had been appended one by one.
        keep = []
        for index, (attr_iri, instance) in enumerate(rows):
            key = (attr_iri, times[index], instance.get("datasetId"))
            replaced = "deletedAt" not in instance and key in observation[index + 1 :]
            keep.append(not replaced)
        observed_times = [key[1] for key in observation if key is not None]
        return {
            "history_types": types,
            "h_observed_aids": sorted({aids[key[0]] for key in observation if key is not None}),
            "h_observed_from": min(observed_times, default=None),
            "h_observed_to": max(observed_times, default=None),
            "h_aids": [aids[attr_iri] for attr_iri, _ in rows],
            "h_ms": times,
            "h_datasets": datasets,
            "h_observed": ["observedAt" in instance for _, instance in rows],
            "h_deleted": ["deletedAt" in instance for _, instance in rows],
            "h_keep": keep,
            "h_docs": [orjson.dumps(instance) for _, instance in rows],
            "h_nums": [numeric_value(instance) for _, instance in rows],
        }

    def history(self, tenant: str, entity_id: str, scan: HistoryScan) -> list[HistoryRow]:
        params: dict[str, object] = {
            "tenant": tenant,
            "id": entity_id,
            "attrs": None if scan.attrs is None else sorted(scan.attrs),
            "start": scan.start_ms,
            "end": scan.end_ms,
            "last_n": scan.last_n,
        }
        # Conditions are left out rather than made vacuous so that partition pruning
        # and the index bounds see only real limits.
        where = ["t.tpk = (SELECT tpk FROM te)"]
        if scan.start_ms is not None:
            where.append("t.time >= 'epoch'::timestamptz + %(start)s * interval '1 ms'")
        if scan.end_ms is not None:
            where.append("t.time < 'epoch'::timestamptz + %(end)s * interval '1 ms'")
        entity = "WITH RECURSIVE te AS (SELECT tpk FROM temporal_entities "
        entity += "WHERE tenant = %(tenant)s AND id = %(id)s)"
        if scan.last_n is None:
            if scan.attrs is not None:
                where.append("a.iri = ANY(%(attrs)s::text[])")
            query = (
                f"{entity} SELECT a.iri, (extract(epoch FROM t.time) * 1000)::bigint, t.seq, "
                "t.doc FROM temporal t JOIN temporal_attrs a ON a.aid = t.aid "
                f"WHERE {' AND '.join(where)} ORDER BY a.iri, t.time, t.seq"
            )
        else:
            if scan.attrs is not None:
                attrs = "SELECT aid FROM temporal_attrs WHERE iri = ANY(%(attrs)s::text[])"
            else:
                # The entity's attributes by skipping from one to the next on the
                # primary key: one probe per attribute, not a read of every row.
                attrs = "SELECT aid FROM ea WHERE aid IS NOT NULL"
                entity += (
                    ", ea AS (SELECT (SELECT aid FROM temporal WHERE tpk = (SELECT tpk FROM te) "
                    "ORDER BY aid LIMIT 1) AS aid UNION ALL SELECT (SELECT t.aid FROM temporal t "
                    "WHERE t.tpk = (SELECT tpk FROM te) AND t.aid > ea.aid ORDER BY t.aid "
                    "LIMIT 1) FROM ea WHERE ea.aid IS NOT NULL)"
                )
            where.append("t.aid = a.aid")
            query = (
                f"{entity} SELECT a.iri, r.ms, r.seq, r.doc FROM temporal_attrs a, LATERAL ("
                "SELECT (extract(epoch FROM t.time) * 1000)::bigint AS ms, t.time, t.seq, t.doc "
                f"FROM temporal t WHERE {' AND '.join(where)} "
                "ORDER BY t.time DESC, t.seq DESC LIMIT %(last_n)s) r "
                f"WHERE a.aid IN ({attrs}) ORDER BY a.iri, r.time, r.seq"
            )
        with self._connection() as conn:
            rows = conn.execute(query, params, binary=True).fetchall()
        return [
            HistoryRow(iri, int(time_ms), f"{INSTANCE_ID_PREFIX}{seq}", orjson.loads(doc))
            for iri, time_ms, seq, doc in rows
        ]

    def aggregate_history(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        start_ms: int | None,
        end_ms: int | None,
        period_ms: int | None,
        *,
        distinct: bool,
    ) -> AggregatedHistory | None:
        aid = self._attr_ids.get(attr_iri)
        if aid is None:
            # Registered by another process since this one opened, or never seen.
            with self._connection() as conn:
                row = conn.execute(
                    "SELECT aid FROM temporal_attrs WHERE iri = %s", (attr_iri,)
                ).fetchone()
            if row is None:
                return None
            aid = int(row[0])
        params: dict[str, object] = {
            "tenant": tenant,
            "id": entity_id,
            "aid": aid,
            "start": start_ms,
            "end": end_ms,
        }
        # As in history(): absent bounds are left out so that pruning sees real limits.
        where = [
            "tpk = (SELECT tpk FROM temporal_entities WHERE tenant = %(tenant)s AND id = %(id)s)",
            "aid = %(aid)s",
        ]
        if start_ms is not None:
            where.append("time >= 'epoch'::timestamptz + %(start)s * interval '1 ms'")
        if end_ms is not None:
            where.append("time < 'epoch'::timestamptz + %(end)s * interval '1 ms'")
        rows_of = f"FROM temporal WHERE {' AND '.join(where)}"
        ms = "(extract(epoch FROM time) * 1000)::bigint"
        with self._connection() as conn:
            # min and max are one probe of the primary key per partition each.
            bounds = conn.execute(f"SELECT min({ms}), max({ms}) {rows_of}", params).fetchone()
            if bounds is None or bounds[0] is None:
                return None
            first, last = bounds
            origin, period = aggregation_bounds((first, last), start_ms, end_ms, period_ms)
            params |= {"origin": origin, "period": period}
            distinct_sql = "count(DISTINCT value_num)" if distinct else "NULL::bigint"
            # Integer division of non-negative offsets (origin <= every row) is floor.
            buckets = conn.execute(
                f"SELECT ({ms} - %(origin)s) / %(period)s AS index, count(*), "
                "count(value_num), sum(value_num), sum(value_num * value_num), "
                f"min(value_num), max(value_num), {distinct_sql} {rows_of} "
                "GROUP BY 1 ORDER BY 1",
                params,
            ).fetchall()
        if any(count != numeric for _, count, numeric, *_ in buckets):
            return None
        return AggregatedHistory(
            origin,
            period,
            [
                HistoryBucket(int(index), count, total, total_sq, low, high, distinct_count)
                for index, count, _, total, total_sq, low, high, distinct_count in buckets
            ],
        )

    def temporal_types(self, tenant: str, entity_id: str) -> list[str] | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT types FROM temporal_entities WHERE tenant = %s AND id = %s",
                (tenant, entity_id),
            ).fetchone()
        return None if row is None else list(row[0])

    def append_history(
        self,
        tenant: str,
        entity_id: str,
        types: list[str],
        rows: list[tuple[str, AttributeInstance]],
    ) -> list[str]:
        _refuse_nul([tenant, entity_id])
        params: dict[str, object] = {"tenant": tenant, "id": entity_id}
        params |= self._history_params(types, rows)
        with self._connection() as conn:
            seqs = conn.execute(_APPEND, with_array_literals(params)).fetchall()
        return [f"{INSTANCE_ID_PREFIX}{seq}" for (seq,) in seqs]

    def delete_history(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str | None = None,
        *,
        dataset_id: str | None = None,
        all_datasets: bool = True,
    ) -> int:
        entity = "tpk = (SELECT tpk FROM temporal_entities WHERE tenant = %s AND id = %s)"
        with self._connection() as conn:
            if attr_iri is None:
                row = conn.execute(
                    "WITH te AS (DELETE FROM temporal_entities WHERE tenant = %s AND id = %s "
                    "RETURNING tpk), d AS (DELETE FROM temporal WHERE tpk = (SELECT tpk FROM te) "
                    "RETURNING 1) SELECT (SELECT count(*) FROM te), (SELECT count(*) FROM d)",
                    (tenant, entity_id),
                ).fetchone()
                assert row is not None
                return int(row[1]) + 1 if row[0] else 0
            params: list[object] = [tenant, entity_id, attr_iri]
            query = (
                f"DELETE FROM temporal WHERE {entity} "
                "AND aid = (SELECT aid FROM temporal_attrs WHERE iri = %s)"
            )
            if not all_datasets:
                query += " AND dataset_id IS NOT DISTINCT FROM %s"
                params.append(dataset_id)
            return conn.execute(query, params).rowcount

    def replace_history_instance(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        instance_id: str,
        instance: AttributeInstance,
    ) -> bool:
        seq = _instance_seq(instance_id)
        if seq is None:
            return False
        time_ms = instance_time_ms(instance)
        self.ensure_history_partitions({month_of(time_ms)})
        # An UPDATE that changes ``time`` moves the row to its new month's partition.
        with self._connection() as conn:
            return (
                conn.execute(
                    f"UPDATE temporal SET time = 'epoch'::timestamptz + %s * interval '1 ms', "
                    f"dataset_id = %s, deleted = %s, doc = %s, value_num = %s WHERE {_INSTANCE}",
                    (
                        time_ms,
                        instance.get("datasetId"),
                        "deletedAt" in instance,
                        orjson.dumps(instance),
                        numeric_value(instance),
                        tenant,
                        entity_id,
                        attr_iri,
                        seq,
                    ),
                ).rowcount
                > 0
            )

    def delete_history_instance(
        self, tenant: str, entity_id: str, attr_iri: str, instance_id: str
    ) -> bool:
        seq = _instance_seq(instance_id)
        if seq is None:
            return False
        with self._connection() as conn:
            cursor = conn.execute(
                f"DELETE FROM temporal WHERE {_INSTANCE}", (tenant, entity_id, attr_iri, seq)
            )
            return cursor.rowcount > 0

    def expire_history(self, type_iri: str, before_ms: int) -> int:
        # The time bound prunes whole partitions that are too new; the type decides
        # which entities' rows go, so no partition can simply be dropped.
        with self._connection() as conn:
            return conn.execute(
                "DELETE FROM temporal t USING temporal_entities e "
                "WHERE e.tpk = t.tpk AND %s = ANY(e.types) "
                "AND t.time < 'epoch'::timestamptz + %s * interval '1 ms'",
                (type_iri, before_ms),
            ).rowcount

    def database_reachable(self) -> bool:
        """True when the database answers a trivial query now (``/health``); never raises."""
        return self._pool.ping()

    def close(self) -> None:
        self.release_duties()
        self._committer.close()
        self._pool.close()


_INSTANCE = (
    "tpk = (SELECT tpk FROM temporal_entities WHERE tenant = %s AND id = %s) "
    "AND aid = (SELECT aid FROM temporal_attrs WHERE iri = %s) AND seq = %s"
)


def _instance_seq(instance_id: str) -> int | None:
    """The ``seq`` an instance id names, or ``None`` when it names none of ours."""
    tail = instance_id.removeprefix(INSTANCE_ID_PREFIX)
    if tail == instance_id or not tail.isdigit() or int(tail) >= 2**63:
        return None
    return int(tail)


def _refuse_nul(names: list[str]) -> None:
    """Raise ``BadRequestData`` if a name bound for a text column contains U+0000."""
    if any("\x00" in name for name in names):
        raise BadRequestData("Ids, types, attribute names and datasetIds cannot contain U+0000")


def _write_params(tenant: str, entity: StoredEntity) -> dict[str, object]:
    """The parameters of ``_INSERT`` for ``entity``."""
    rows = index_rows(entity)
    _refuse_nul([tenant, entity["id"], *rows.types, *(attr for attr, _ in rows.attrs)])
    attrs = sorted(rows.attrs)
    geometries = sorted(
        {
            (attr_iri, orjson.dumps(instance["value"]).decode())
            for attr_iri, instances in entity.get("attrs", {}).items()
            for instance in instances
            if instance.get("type") == "GeoProperty" and isinstance(instance.get("value"), dict)
        }
    )
    return {
        "tenant": tenant,
        "id": entity["id"],
        "doc": orjson.dumps(entity),
        "types": sorted(rows.types),
        "attrs": [attr for attr, _ in attrs],
        "kinds": [kind for _, kind in attrs],
        "geo_attrs": [attr for attr, _ in geometries],
        "geo_values": [value for _, value in geometries],
    }
