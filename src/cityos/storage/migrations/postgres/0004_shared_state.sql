-- State that several cityos processes share through one PostgreSQL (see the design notes of
-- cityos.storage.postgres_subscriptions): API keys, small JSON documents (hosted @contexts),
-- subscriptions with their delivery status, and the notification outbox.
CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    key_hash text NOT NULL UNIQUE,
    org text NOT NULL,
    role text NOT NULL,
    created_at text NOT NULL,
    revoked boolean NOT NULL DEFAULT false
);

-- One table for every kind of document (``kind`` is the SQLite table name it replaces).
CREATE TABLE documents (
    kind text NOT NULL,
    key text NOT NULL,
    seq bigserial NOT NULL,
    doc bytea NOT NULL,
    PRIMARY KEY (kind, key)
);

-- ``record`` is the broker's JSON document without its delivery status: the status members
-- are columns, so processes delivering for the same subscription add to them atomically
-- instead of rewriting the record. Times are the broker's fixed-width ISO strings, so their
-- text order is their time order. ``throttled_at`` is when the last notification was
-- generated, for throttling across processes.
CREATE TABLE subscriptions (
    tenant text NOT NULL,
    id text NOT NULL,
    seq bigserial NOT NULL,
    record bytea NOT NULL,
    times_sent bigint NOT NULL DEFAULT 0,
    times_failed bigint NOT NULL DEFAULT 0,
    last_notification text,
    last_success text,
    last_failure text,
    status text,
    throttled_at timestamptz,
    PRIMARY KEY (tenant, id)
);

-- Processes that deliver notifications; a process renews ``lease_until`` while it lives.
-- Outbox rows of an owner whose lease ran out are claimed by another process.
CREATE TABLE notifier_owners (
    owner text PRIMARY KEY,
    lease_until timestamptz NOT NULL
);

CREATE TABLE outbox (
    seq bigserial PRIMARY KEY,
    tenant text NOT NULL,
    subscription_id text NOT NULL,
    payload bytea NOT NULL,
    owner text NOT NULL
);
-- By owner: taking over the rows of a dead process, and "which rows are still mine".
-- Not by subscription: rows are inserted and deleted thousands of times a second, while a
-- subscription is deleted rarely and the outbox holds only what is not delivered yet.
CREATE INDEX outbox_by_owner ON outbox (owner);
