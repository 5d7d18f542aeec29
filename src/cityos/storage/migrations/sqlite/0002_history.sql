-- Entity history (see the design notes of cityos.storage.sqlite). IF NOT EXISTS because
-- databases created by the history layer before migrations existed already carry these
-- tables at version 1.
CREATE TABLE IF NOT EXISTS temporal_entities (
    tpk INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, types BLOB NOT NULL,
    UNIQUE (tenant, id)
);
CREATE TABLE IF NOT EXISTS temporal_attrs (aid INTEGER PRIMARY KEY, iri TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS temporal (
    tpk INTEGER NOT NULL, aid INTEGER NOT NULL, time_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (tpk, aid, time_ms, seq)
) WITHOUT ROWID;
