"""The production backend: PostgreSQL 15+ with PostGIS 3, through psycopg 3 and a pool.

Design notes (why, not what):
- The ``Storage`` protocol is synchronous and called from the event loop, so this uses
  psycopg's synchronous API. Connections come from a small pool in autocommit mode; a
  :meth:`PostgresStorage.transaction` pins one connection to the thread that opened it
  until the outermost block ends.
- Every write is ONE statement (data-modifying CTEs): the entity row and its index rows
  change together, atomically even outside a transaction, in one round trip. An update
  works out the index difference inside that statement: all CTEs see the same snapshot,
  so "delete rows not in the new set" and "insert new rows not already there" touch
  disjoint rows, and unchanged index rows (the common case: a value changed) are left
  alone, GiST entries included.
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
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from cityos.broker.model import StoredEntity
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.storage.base import DEFAULT_TENANT, AttributeUsage, EntityScan, index_rows
from cityos.storage.migrations import SchemaOutOfDateError, latest_version, load_migrations

Connection = psycopg.Connection[tuple[Any, ...]]  # Any: column values of any SQL type

_FIRST_SCAN_BATCH = 64
_MAX_SCAN_BATCH = 4096
_GEO_DOC_BATCH = 256
_MIGRATION_LOCK = 0x63697479_6F73  # "cityos": one upgrader at a time per database


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


# -- statements -----------------------------------------------------------------------

_INSERT = """
WITH e AS (
    INSERT INTO entities (tenant, id, doc) VALUES (%(tenant)s, %(id)s, %(doc)s)
    ON CONFLICT (tenant, id) DO NOTHING RETURNING pk
), tn AS (
    INSERT INTO tenants (name) SELECT %(tenant)s FROM e ON CONFLICT DO NOTHING
), t AS (
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
SELECT pk FROM e
"""

# Every CTE sees the snapshot from before the statement: the deletes remove only rows
# absent from the new sets, the inserts add only rows absent from the old ones (types and
# attributes by their primary key: a NOT EXISTS there made the planner walk every row
# of the type, as it cannot drive an index lookup from a CTE's pk). ``pk = (SELECT pk
# FROM e)`` is a scalar subquery on purpose: the pk becomes a parameter, so the by-pk
# indexes are used even before ANALYZE has run (a join with ``e`` scanned whole tables).
_UPDATE = """
WITH e AS (
    UPDATE entities SET doc = %(doc)s WHERE tenant = %(tenant)s AND id = %(id)s
    RETURNING pk
), new_types AS (
    SELECT unnest(%(types)s::text[]) AS type
), new_attrs AS (
    SELECT * FROM unnest(%(attrs)s::text[], %(kinds)s::text[]) AS n(attr, kind)
), new_geometries AS (
    SELECT n.attr, n.value::jsonb AS value
    FROM unnest(%(geo_attrs)s::text[], %(geo_values)s::text[]) AS n(attr, value)
), dt AS (
    DELETE FROM entity_types o
    WHERE o.pk = (SELECT pk FROM e) AND o.type NOT IN (SELECT type FROM new_types)
), it AS (
    INSERT INTO entity_types (tenant, type, pk)
    SELECT %(tenant)s, n.type, e.pk FROM e, new_types n
    ON CONFLICT DO NOTHING
), da AS (
    DELETE FROM entity_attrs o
    WHERE o.pk = (SELECT pk FROM e) AND (o.attr, o.kind) NOT IN (SELECT attr, kind FROM new_attrs)
), ia AS (
    INSERT INTO entity_attrs (tenant, attr, pk, kind)
    SELECT %(tenant)s, n.attr, e.pk, n.kind FROM e, new_attrs n
    ON CONFLICT DO NOTHING
), dg AS (
    DELETE FROM entity_geometries o
    WHERE o.pk = (SELECT pk FROM e) AND NOT EXISTS (
        SELECT 1 FROM new_geometries n WHERE n.attr = o.attr AND n.value = o.value
    )
), ig AS (
    INSERT INTO entity_geometries (pk, tenant, attr, value, geom)
    SELECT e.pk, %(tenant)s, n.attr, n.value,
           ST_SetSRID(ST_Force2D(ST_GeomFromGeoJSON(n.value)), 4326)
    FROM e, new_geometries n
    WHERE NOT EXISTS (
        SELECT 1 FROM entity_geometries o
        WHERE o.pk = (SELECT pk FROM e) AND o.attr = n.attr AND o.value = n.value
    )
)
SELECT pk FROM e
"""

_DELETE = """
WITH e AS (
    DELETE FROM entities WHERE tenant = %s AND id = %s RETURNING pk
), t AS (
    DELETE FROM entity_types WHERE pk = (SELECT pk FROM e)
), a AS (
    DELETE FROM entity_attrs WHERE pk = (SELECT pk FROM e)
), g AS (
    DELETE FROM entity_geometries WHERE pk = (SELECT pk FROM e)
)
SELECT count(*) FROM e
"""


class PostgresStorage:
    """``Storage`` on a PostgreSQL + PostGIS database. See :class:`cityos.storage.base.Storage`.

    Opening checks the schema version: with ``upgrade`` the pending migrations are
    applied, otherwise an out-of-date schema raises :class:`SchemaOutOfDateError` naming the
    command that fixes it. A database that cannot be reached raises
    ``psycopg.OperationalError`` with the server's reason.
    """

    def __init__(self, url: str, *, upgrade: bool = False, pool_size: int = 4) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            if upgrade:
                upgrade_schema(conn)
            current, needed = schema_version(conn), latest_version("postgres")
            if current < needed:
                raise SchemaOutOfDateError(
                    f"The database schema is at version {current}; this cityos needs "
                    f"version {needed}. Run `cityos db upgrade` (or start with --upgrade)."
                )
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            open=True,
            name="cityos",
        )
        self._pinned: Connection | None = None
        self._pinned_thread = 0
        self._known_tenants: set[str] = {DEFAULT_TENANT}

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
        with self._pool.connection() as conn, conn.transaction():
            self._pinned, self._pinned_thread = conn, threading.get_ident()
            try:
                yield
            finally:
                self._pinned, self._pinned_thread = None, 0

    # -- reads ------------------------------------------------------------------------

    def get(self, tenant: str, entity_id: str) -> StoredEntity | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT doc FROM entities WHERE tenant = %s AND id = %s", (tenant, entity_id)
            ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def get_many(self, tenant: str, entity_ids: list[str]) -> dict[str, StoredEntity]:
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
            with self._connection() as conn:
                rows = conn.execute(query, (*params, after, batch), binary=True).fetchall()
            for pk, doc in rows:
                yield pk, orjson.loads(doc)
            if len(rows) < batch:
                return
            after = rows[-1][0]
            batch = min(batch * 4, _MAX_SCAN_BATCH)

    def _scan_by_geometry(
        self, tenant: str, scan: EntityScan
    ) -> Iterator[tuple[int, StoredEntity]]:
        """Geo candidates: pks whose geometry intersects the box (GiST), then documents.

        Types, attributes and ids are checked on the documents: probing the index tables
        per geometry row costs more than the few extra documents it would save.
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
                    "AND ST_Intersects(geom, ST_MakeEnvelope(%s, %s, %s, %s, 4326)) "
                    f"{attr_filter} ORDER BY pk",
                    params,
                )
            ]
        for start in range(0, len(pks), _GEO_DOC_BATCH):
            chunk = pks[start : start + _GEO_DOC_BATCH]
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
        """A keyset-paginated candidate query; the last two parameters are pk, limit.

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
        query = (
            f"SELECT e.pk, e.doc FROM {source} WHERE {' AND '.join(where)} "
            f"AND {order} > %s ORDER BY {order} LIMIT %s"
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
        with self._connection() as conn:
            row = conn.execute(_INSERT, _write_params(tenant, entity)).fetchone()
        if row is None:
            raise AlreadyExists(f"Entity {entity['id']} already exists")

    def update(self, tenant: str, entity: StoredEntity) -> None:
        with self._connection() as conn:
            row = conn.execute(_UPDATE, _write_params(tenant, entity)).fetchone()
        if row is None:
            raise ResourceNotFound(f"Entity {entity['id']} not found")

    def delete(self, tenant: str, entity_id: str) -> bool:
        with self._connection() as conn:
            row = conn.execute(_DELETE, (tenant, entity_id)).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self._pool.close()


def _write_params(tenant: str, entity: StoredEntity) -> dict[str, object]:
    """The parameters of ``_INSERT`` and ``_UPDATE`` for ``entity``."""
    rows = index_rows(entity)
    names = (tenant, entity["id"], *rows.types, *(attr for attr, _ in rows.attrs))
    if any("\x00" in name for name in names):
        raise BadRequestData("Ids, types and attribute names cannot contain U+0000")
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
