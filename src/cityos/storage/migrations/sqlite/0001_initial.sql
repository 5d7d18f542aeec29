-- The schema of cityos before migrations existed (IF NOT EXISTS keeps it harmless on
-- databases created by that version, which already carry version 1).
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS entities (
    pk INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    doc BLOB NOT NULL,
    UNIQUE (tenant, id)
);
CREATE INDEX IF NOT EXISTS entities_by_tenant_pk ON entities (tenant, pk);
CREATE TABLE IF NOT EXISTS entity_types (
    tenant TEXT NOT NULL, type TEXT NOT NULL, pk INTEGER NOT NULL,
    PRIMARY KEY (tenant, type, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_types_by_pk ON entity_types (pk);
CREATE TABLE IF NOT EXISTS entity_attrs (
    tenant TEXT NOT NULL, attr TEXT NOT NULL, pk INTEGER NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (tenant, attr, pk, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_attrs_by_pk ON entity_attrs (pk);
CREATE VIRTUAL TABLE IF NOT EXISTS geo_rtree USING rtree (gid, min_x, max_x, min_y, max_y);
