"""NGSI-LD semantics: entities, the query languages, geo-queries, @context handling, tenants."""
