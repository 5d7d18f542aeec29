"""NGSI-LD geo-queries: parsing ``georel``/``geometry``/``coordinates`` and evaluating them.

INTERFACE (implemented by the geo work package):

- ``parse_geo_query(georel, geometry, coordinates, geoproperty) -> GeoQuery | None``
  (strings as they come in query parameters; ``coordinates`` may also be a parsed
  JSON list when it comes from a POST body). ``None`` when no geo-query is given.
  Raises ``BadRequestData``/``InvalidRequest`` on a partial or invalid query.
- ``GeoQuery.geoproperty`` (a term, default ``location``; the caller expands it),
  ``GeoQuery.candidate_bbox() -> (min_lon, min_lat, max_lon, max_lat) | None``
  (a box every match must intersect; ``None`` when no box can be given, e.g. disjoint),
  ``GeoQuery.matches(geojson_geometry: dict) -> bool``.
"""
