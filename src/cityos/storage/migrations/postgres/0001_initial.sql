-- Entities as orjson documents (bytea: JSONB's numeric would turn the float 3.602879701896397e16
-- into the integer 36028797018963970, another value), with index tables for the candidate scans of
-- cityos.storage.base: (tenant, type, pk) and (tenant, attr, pk, kind) B-trees walk
-- one type or attribute in pk order (keyset pagination), a GiST index finds geometries.
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE tenants (name text PRIMARY KEY);

CREATE TABLE entities (
    pk bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text NOT NULL,
    doc bytea NOT NULL,
    UNIQUE (tenant, id)
);
CREATE INDEX entities_by_tenant_pk ON entities (tenant, pk);

CREATE TABLE entity_types (
    tenant text NOT NULL,
    type text NOT NULL,
    pk bigint NOT NULL,
    PRIMARY KEY (tenant, type, pk)
);
CREATE INDEX entity_types_by_pk ON entity_types (pk);

CREATE TABLE entity_attrs (
    tenant text NOT NULL,
    attr text NOT NULL,
    pk bigint NOT NULL,
    kind text NOT NULL,
    PRIMARY KEY (tenant, attr, pk, kind)
);
CREATE INDEX entity_attrs_by_pk ON entity_attrs (pk);

-- One row per distinct (attribute, GeoJSON value) of an entity; ``value`` lets an
-- update keep the rows whose geometry did not change.
CREATE TABLE entity_geometries (
    pk bigint NOT NULL,
    tenant text NOT NULL,
    attr text NOT NULL,
    value jsonb NOT NULL,
    geom geometry(Geometry, 4326) NOT NULL
);
CREATE INDEX entity_geometries_by_pk ON entity_geometries (pk);
CREATE INDEX entity_geometries_geom ON entity_geometries USING gist (geom);
