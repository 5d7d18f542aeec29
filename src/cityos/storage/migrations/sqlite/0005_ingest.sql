-- Sensor ingestion (cityos.storage.ingest_tables; IF NOT EXISTS as in 0002, for files
-- whose recorded version was set back): keys of the uplinks already stored
-- (exactly-once delivery), messages that could not be processed (dead letters) and
-- per-gateway radio statistics by hour (coverage).
--
-- ingest_uplink_keys is written in the same transaction as the entity updates of an
-- uplink, so a crash can neither lose an uplink nor store it twice; old keys expire by
-- stored_ms (the index makes that a range delete).
CREATE TABLE IF NOT EXISTS ingest_uplink_keys (
    key TEXT PRIMARY KEY,
    stored_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ingest_uplink_keys_by_time ON ingest_uplink_keys (stored_ms);

-- body is NULL when it was not kept (a sender without the shared secret); such letters
-- are metadata only and cannot be replayed. dedup_key is unique so that a redelivered
-- uplink that fails again bumps attempts instead of adding a second letter.
CREATE TABLE IF NOT EXISTS ingest_dead_letters (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    transport TEXT NOT NULL,
    network TEXT NOT NULL,
    address TEXT NOT NULL,
    content_type TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    dev_eui TEXT,
    dedup_key TEXT UNIQUE,
    body BLOB,
    body_size INTEGER NOT NULL,
    truncated INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    last_attempt_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ingest_dead_letters_by_reason ON ingest_dead_letters (reason, id);
CREATE INDEX IF NOT EXISTS ingest_dead_letters_by_device ON ingest_dead_letters (dev_eui, id);

-- Histograms are JSON objects: whole dBm -> count, half dB (SNR x 2) -> count.
CREATE TABLE IF NOT EXISTS ingest_gateway_hours (
    gateway_id TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    uplinks INTEGER NOT NULL,
    rssi_counts TEXT NOT NULL,
    snr_counts TEXT NOT NULL,
    PRIMARY KEY (gateway_id, hour_ms)
) WITHOUT ROWID;
