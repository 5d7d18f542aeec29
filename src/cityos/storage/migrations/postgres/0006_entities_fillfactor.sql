-- Entity rows are rewritten on every attribute update (a sensor reading). With free room
-- left on each page, the new row version usually fits beside the old one, so PostgreSQL
-- makes a heap-only (HOT) update: none of the three entity indexes gets a new entry, as
-- ``doc`` is in none of them. Applies to pages written from now on (existing rows move
-- as they are updated, or at once with VACUUM FULL entities).
ALTER TABLE entities SET (fillfactor = 85);
