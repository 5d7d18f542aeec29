-- History rows keep their value as a number when it is a plain one, so aggregation runs
-- in SQL (see "History" in the design notes of cityos.storage.postgres). Nullable with
-- no default, so adding it rewrites no partition.
ALTER TABLE temporal ADD COLUMN value_num double precision;

-- Rows written before this version: cityos.storage.base.numeric_value in SQL. A
-- Property (an absent "type" means Property) of the default instance (no datasetId),
-- not a deletion marker, whose value is a JSON number (booleans are not). Comparisons
-- are on json text (documents are orjson's compact output). A document holding the
-- escape \u0000 is left alone, because PostgreSQL's JSON operators refuse to read it:
-- its value_num stays NULL, which only sends aggregations over its range back to the
-- broker's general code (see TemporalStorage.aggregate_history), never a wrong sum.
-- CASE because AND does not promise to test the escape first.
UPDATE temporal
SET value_num = (convert_from(doc, 'UTF8')::json -> 'value')::text::double precision
WHERE NOT deleted AND dataset_id IS NULL
    AND CASE WHEN strpos(convert_from(doc, 'UTF8'), E'\\u0000') > 0 THEN false
        ELSE json_typeof(convert_from(doc, 'UTF8')::json -> 'value') = 'number'
            AND coalesce((convert_from(doc, 'UTF8')::json -> 'type')::text = '"Property"', true)
            AND convert_from(doc, 'UTF8')::json -> 'datasetId' IS NULL
    END;
