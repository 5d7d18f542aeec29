-- Entity history (see "History" in the design notes of cityos.storage.postgres).
-- temporal_entities and temporal_attrs turn the (tenant, entity id) and the attribute IRI
-- into small integers, because they would otherwise repeat in every history row.
CREATE TABLE temporal_entities (
    tpk bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text NOT NULL,
    types text[] NOT NULL,
    UNIQUE (tenant, id)
);

CREATE TABLE temporal_attrs (aid serial PRIMARY KEY, iri text NOT NULL UNIQUE);

-- Instance ids: urn:ngsi-ld:Instance:<seq>, unique across tenants.
CREATE SEQUENCE temporal_seq;

-- One row per attribute instance, partitioned by month of ``time`` (observedAt, else the
-- time of the write). The monthly partitions are created by the application
-- (PostgresStorage.ensure_history_partitions), not here: which months exist depends
-- on the data. The primary key is the per-entity btree: (tenant + entity, attribute,
-- time) with ``seq`` to make it unique; the BRIN index serves scans by time across
-- entities (retention, time-window maintenance) for a few pages per partition.
CREATE TABLE temporal (
    tpk bigint NOT NULL,
    aid integer NOT NULL,
    time timestamptz NOT NULL,
    seq bigint NOT NULL,
    dataset_id text,
    deleted boolean NOT NULL,
    doc bytea NOT NULL,
    PRIMARY KEY (tpk, aid, time, seq)
) PARTITION BY RANGE (time);
CREATE INDEX temporal_time_brin ON temporal USING brin (time);
