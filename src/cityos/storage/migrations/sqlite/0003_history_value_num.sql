-- History rows keep their value as a number when it is a plain one, so aggregation runs
-- in SQL. The fill below is cityos.storage.base.numeric_value written in SQL: a Property
-- (an absent "type" means Property) of the default instance (no datasetId), not a
-- deletion marker, whose value is a JSON number (json_type says 'true'/'false' for
-- booleans, so they stay out). CAST because documents are orjson bytes, and SQLite
-- 3.45+ reads a BLOB argument of the json functions as its binary JSONB format.
--
-- Files that cityos wrote with its inline schema "version 2" already have this column;
-- upgrade_schema in cityos.storage.sqlite records them as version 3 without running
-- this file.
ALTER TABLE temporal ADD COLUMN value_num REAL;
UPDATE temporal SET value_num = json_extract(CAST(doc AS TEXT), '$.value')
WHERE json_type(CAST(doc AS TEXT), '$.value') IN ('integer', 'real')
    AND (json_type(CAST(doc AS TEXT), '$.type') IS NULL
        OR (json_type(CAST(doc AS TEXT), '$.type') = 'text'
            AND json_extract(CAST(doc AS TEXT), '$.type') = 'Property'))
    AND json_type(CAST(doc AS TEXT), '$.datasetId') IS NULL
    AND json_type(CAST(doc AS TEXT), '$.deletedAt') IS NULL;
