-- Nothing to do for SQLite. PostgreSQL version 4 adds the tables that several processes share
-- (API keys, documents, subscriptions, outbox); an embedded SQLite installation keeps them
-- in its own files (keys.sqlite3, subscriptions.sqlite3, the jsonld_contexts table), which
-- the stores create themselves. The version exists so both dialects count alike.
SELECT 1;
