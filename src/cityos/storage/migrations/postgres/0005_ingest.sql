-- Sensor ingestion (cityos.storage.ingest_tables): keys of the uplinks already stored
-- (exactly-once delivery), messages that could not be processed (dead letters) and
-- per-gateway radio statistics by hour (coverage).
--
-- ingest_uplink_keys is written in the same transaction as the entity updates of an
-- uplink, so a crash can neither lose an uplink nor store it twice; old keys expire by
-- stored_ms (BRIN: keys arrive in time order, and the index stays a few pages).
CREATE TABLE ingest_uplink_keys (
    key text PRIMARY KEY,
    stored_ms bigint NOT NULL
);
CREATE INDEX ingest_uplink_keys_by_time ON ingest_uplink_keys USING brin (stored_ms);

-- body is NULL when it was not kept (a sender without the shared secret); such letters
-- are metadata only and cannot be replayed. dedup_key is unique so that a redelivered
-- uplink that fails again bumps attempts instead of adding a second letter.
CREATE TABLE ingest_dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_ms bigint NOT NULL,
    transport text NOT NULL,
    network text NOT NULL,
    address text NOT NULL,
    content_type text,
    reason text NOT NULL,
    detail text NOT NULL,
    dev_eui text,
    dedup_key text UNIQUE,
    body bytea,
    body_size integer NOT NULL,
    truncated boolean NOT NULL DEFAULT false,
    attempts integer NOT NULL DEFAULT 1,
    last_attempt_ms bigint NOT NULL
);
CREATE INDEX ingest_dead_letters_by_reason ON ingest_dead_letters (reason, id);
CREATE INDEX ingest_dead_letters_by_device ON ingest_dead_letters (dev_eui, id);

-- Histograms are JSON objects: whole dBm -> count, half dB (SNR x 2) -> count.
CREATE TABLE ingest_gateway_hours (
    gateway_id text NOT NULL,
    hour_ms bigint NOT NULL,
    uplinks bigint NOT NULL,
    rssi_counts jsonb NOT NULL,
    snr_counts jsonb NOT NULL,
    PRIMARY KEY (gateway_id, hour_ms)
);
