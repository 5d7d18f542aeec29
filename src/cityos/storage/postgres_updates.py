"""The statement of a PostgreSQL entity update, built from what the update changes.

An update knows the document it replaces (see ``PostgresStorage.update``), so the
difference of the index rows is worked out in Python and the statement touches only the
rows that change: a value update (the common case: a sensor reading) is one ``UPDATE`` of
the entity row plus its history rows, with no probe of the type, attribute or geometry
indexes. Each CTE is included only when it has work to do; the few distinct statement
texts that result are each prepared by psycopg once per connection.

Every CTE that writes depends on ``e`` (the conditional update of the entity row): when
``e`` matches nothing, because another writer got in first, nothing else is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import orjson

from cityos.broker.model import StoredEntity
from cityos.storage.base import index_rows


@dataclass(frozen=True)
class IndexChange:
    """Index rows an update removes and adds: types, (attribute, kind) pairs and
    (attribute, GeoJSON text) geometries."""

    types_removed: list[str]
    types_added: list[str]
    attrs_removed: list[tuple[str, str]]
    attrs_added: list[tuple[str, str]]
    geometries_removed: list[tuple[str, str]]
    geometries_added: list[tuple[str, str]]

    def params(self) -> dict[str, object]:
        """The statement parameters of the change."""
        return {
            "del_types": self.types_removed,
            "add_types": self.types_added,
            "del_attrs": [attr for attr, _ in self.attrs_removed],
            "del_kinds": [kind for _, kind in self.attrs_removed],
            "add_attrs": [attr for attr, _ in self.attrs_added],
            "add_kinds": [kind for _, kind in self.attrs_added],
            "del_geo_attrs": [attr for attr, _ in self.geometries_removed],
            "del_geo_values": [value for _, value in self.geometries_removed],
            "add_geo_attrs": [attr for attr, _ in self.geometries_added],
            "add_geo_values": [value for _, value in self.geometries_added],
        }


def geometries_of(entity: StoredEntity) -> set[tuple[str, str]]:
    """The (attribute IRI, GeoJSON text) pairs of an entity's geometry rows."""
    return {
        (attr_iri, orjson.dumps(instance["value"]).decode())
        for attr_iri, instances in entity.get("attrs", {}).items()
        for instance in instances
        if instance.get("type") == "GeoProperty" and isinstance(instance.get("value"), dict)
    }


def index_change(old: StoredEntity, new: StoredEntity) -> IndexChange:
    """The index rows to remove and add when ``old`` becomes ``new``."""
    before, after = index_rows(old), index_rows(new)
    old_geometries, new_geometries = geometries_of(old), geometries_of(new)
    return IndexChange(
        sorted(before.types - after.types),
        sorted(after.types - before.types),
        sorted(before.attrs - after.attrs),
        sorted(after.attrs - before.attrs),
        sorted(old_geometries - new_geometries),
        sorted(new_geometries - old_geometries),
    )


_ENTITY = """
WITH e AS (
    UPDATE entities SET doc = %(doc)s
    WHERE tenant = %(tenant)s AND id = %(id)s AND xmin = %(xmin)s::text::xid
    RETURNING pk
)"""

# ``pk = (SELECT pk FROM e)`` is a scalar subquery on purpose: the pk becomes a
# parameter, so the by-pk indexes are used even before ANALYZE has run.
_DELETE_TYPES = """
, dt AS (
    DELETE FROM entity_types
    WHERE pk = (SELECT pk FROM e) AND type = ANY(%(del_types)s::text[])
)"""

_ADD_TYPES = """
, it AS (
    INSERT INTO entity_types (tenant, type, pk)
    SELECT %(tenant)s, n.type, e.pk FROM e, unnest(%(add_types)s::text[]) AS n(type)
    ON CONFLICT DO NOTHING
)"""

_DELETE_ATTRS = """
, da AS (
    DELETE FROM entity_attrs
    WHERE pk = (SELECT pk FROM e) AND (attr, kind) IN (
        SELECT * FROM unnest(%(del_attrs)s::text[], %(del_kinds)s::text[])
    )
)"""

_ADD_ATTRS = """
, ia AS (
    INSERT INTO entity_attrs (tenant, attr, pk, kind)
    SELECT %(tenant)s, n.attr, e.pk, n.kind
    FROM e, unnest(%(add_attrs)s::text[], %(add_kinds)s::text[]) AS n(attr, kind)
    ON CONFLICT DO NOTHING
)"""

_DELETE_GEOMETRIES = """
, dg AS (
    DELETE FROM entity_geometries
    WHERE pk = (SELECT pk FROM e) AND (attr, value) IN (
        SELECT n.attr, n.value::jsonb
        FROM unnest(%(del_geo_attrs)s::text[], %(del_geo_values)s::text[]) AS n(attr, value)
    )
)"""

_ADD_GEOMETRIES = """
, ig AS (
    INSERT INTO entity_geometries (pk, tenant, attr, value, geom)
    SELECT e.pk, %(tenant)s, n.attr, n.value::jsonb,
           ST_SetSRID(ST_Force2D(ST_GeomFromGeoJSON(n.value)), 4326)
    FROM e, unnest(%(add_geo_attrs)s::text[], %(add_geo_values)s::text[]) AS n(attr, value)
)"""

# The temporal entity of an entity whose types did not change is found rather than
# upserted: an upsert writes a new row version (and WAL) on every update. It is created
# (or its types set) only when it is missing or its types differ, e.g. after a temporal
# delete. ``te_found`` joins ``e`` so that a lost race writes no history.
_FIND_TEMPORAL_ENTITY = """
, te_found AS (
    SELECT t.tpk FROM e, temporal_entities t
    WHERE t.tenant = %(tenant)s AND t.id = %(id)s AND t.types = %(history_types)s::text[]
), te_made AS (
    INSERT INTO temporal_entities (tenant, id, types)
    SELECT %(tenant)s, %(id)s, %(history_types)s::text[] FROM e
    WHERE NOT EXISTS (SELECT 1 FROM te_found)
    ON CONFLICT (tenant, id) DO UPDATE SET types = EXCLUDED.types
    RETURNING tpk
), te AS (
    SELECT tpk FROM te_found UNION ALL SELECT tpk FROM te_made
)"""

_UPSERT_TEMPORAL_ENTITY = """
, te AS (
    INSERT INTO temporal_entities (tenant, id, types)
    SELECT %(tenant)s, %(id)s, %(history_types)s::text[] FROM e
    ON CONFLICT (tenant, id) DO UPDATE SET types = EXCLUDED.types
    RETURNING tpk
)"""

# History rows, after a CTE ``te`` that gives the temporal entity's tpk. ``h`` numbers
# the rows, materialised once because of nextval. ``hr`` drops the stored rows each
# observation replaces; it cannot see ``hi``'s rows, so a row replaced by a later one of
# the same batch is left out by ``keep`` instead. Its bounds (attributes and time span
# of the batch's observations) are redundant with the join but let the planner prune
# partitions and seek the primary key: without them it hash-joins the entity's whole
# history for every batch.
HISTORY_ROWS = """
, h AS (
    SELECT n.aid, 'epoch'::timestamptz + n.ms * interval '1 ms' AS time,
           nextval('temporal_seq') AS seq, n.dataset_id, n.observed, n.deleted, n.keep,
           n.doc, n.value_num, n.ord
    FROM te, unnest(
        %(h_aids)s::integer[], %(h_ms)s::bigint[], %(h_datasets)s::text[],
        %(h_observed)s::boolean[], %(h_deleted)s::boolean[], %(h_keep)s::boolean[],
        %(h_docs)s::bytea[], %(h_nums)s::double precision[]
    ) WITH ORDINALITY AS n(aid, ms, dataset_id, observed, deleted, keep, doc, value_num, ord)
)"""

REPLACED_OBSERVATIONS = """
, hr AS (
    DELETE FROM temporal o USING h
    WHERE h.observed AND o.tpk = (SELECT tpk FROM te) AND o.aid = h.aid
      AND o.time = h.time AND o.dataset_id IS NOT DISTINCT FROM h.dataset_id
      AND NOT o.deleted
      AND o.aid = ANY(%(h_observed_aids)s::integer[])
      AND o.time >= 'epoch'::timestamptz + %(h_observed_from)s * interval '1 ms'
      AND o.time <= 'epoch'::timestamptz + %(h_observed_to)s * interval '1 ms'
)"""

INSERT_HISTORY = """
, hi AS (
    INSERT INTO temporal (tpk, aid, time, seq, dataset_id, deleted, doc, value_num)
    SELECT te.tpk, h.aid, h.time, h.seq, h.dataset_id, h.deleted, h.doc, h.value_num
    FROM te, h WHERE h.keep
)"""


@dataclass(frozen=True)
class UpdateShape:
    """Which parts an update statement needs (the key of its cached text)."""

    types_removed: bool = False
    types_added: bool = False
    attrs_removed: bool = False
    attrs_added: bool = False
    geometries_removed: bool = False
    geometries_added: bool = False
    history: bool = False
    history_types_kept: bool = False
    """The types recorded with the history are the entity's old ones (find, not upsert)."""
    observations: bool = False
    """Some history rows carry ``observedAt``: they may replace stored rows."""


def update_shape(
    change: IndexChange, *, history: bool, types_kept: bool, observations: bool
) -> UpdateShape:
    """The shape of the update that makes ``change`` (and writes history when asked)."""
    return UpdateShape(
        bool(change.types_removed),
        bool(change.types_added),
        bool(change.attrs_removed),
        bool(change.attrs_added),
        bool(change.geometries_removed),
        bool(change.geometries_added),
        history,
        history and types_kept,
        history and observations,
    )


@cache
def update_statement(shape: UpdateShape) -> str:
    """The statement text of ``shape``; it returns the entity's pk, or no row when the
    entity is gone or its row version is no longer ``%(xmin)s``."""
    parts = [_ENTITY]
    for needed, text in (
        (shape.types_removed, _DELETE_TYPES),
        (shape.types_added, _ADD_TYPES),
        (shape.attrs_removed, _DELETE_ATTRS),
        (shape.attrs_added, _ADD_ATTRS),
        (shape.geometries_removed, _DELETE_GEOMETRIES),
        (shape.geometries_added, _ADD_GEOMETRIES),
    ):
        if needed:
            parts.append(text)
    if shape.history:
        parts.append(_FIND_TEMPORAL_ENTITY if shape.history_types_kept else _UPSERT_TEMPORAL_ENTITY)
        parts.append(HISTORY_ROWS)
        if shape.observations:
            parts.append(REPLACED_OBSERVATIONS)
        parts.append(INSERT_HISTORY)
    parts.append("\nSELECT pk FROM e")
    return "".join(parts)
