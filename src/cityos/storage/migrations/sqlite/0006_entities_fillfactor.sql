-- Nothing to do in SQLite: the PostgreSQL step of this version leaves free room on
-- entity pages for in-place updates (fillfactor), which SQLite has no setting for.
-- Kept so that both dialects count the same versions.
SELECT 1;
