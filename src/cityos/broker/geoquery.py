"""NGSI-LD geo-queries: parsing ``georel``/``geometry``/``coordinates`` and evaluating them.

Implements ETSI GS CIM 009 v1.8 §4.10 (geo-query language) for the broker.

INTERFACE:

- ``parse_geo_query(georel, geometry, coordinates, geoproperty) -> GeoQuery | None``
  (strings as they come in query parameters; ``coordinates`` may also be a parsed
  JSON list when it comes from a POST body). ``None`` when no geo-query is given.
  Raises ``BadRequestData`` on a partial or invalid query.
- ``GeoQuery.geoproperty`` (a term, default ``location``; the caller expands it),
  ``GeoQuery.candidate_bbox() -> (min_lon, min_lat, max_lon, max_lat) | None``
  (a box every match must intersect; ``None`` when no box can be given, e.g. disjoint),
  ``GeoQuery.matches(geojson_geometry) -> bool``,
  ``GeoQuery.distance_to(geojson_geometry) -> float`` and ``GeoQuery.to_dict()``.

Semantics (the *subject* is the entity's GeoProperty value, the *object* is the query
geometry, §4.10):

- ``near;maxDistance==d`` / ``near;minDistance==d``: the shortest great-circle distance
  in metres between subject and object is ``<= d`` / ``>= d`` (both bounds inclusive).
  Both may be given together (``near;maxDistance==2000;minDistance==100``) for a ring;
  the §4.10 grammar only names one, accepting both is a compatible extension.
  Distances are those of :func:`cityos.core.geo.distance_m` (haversine, mean radius).
- ``within``, ``contains``, ``intersects``, ``disjoint``, ``equals``, ``overlaps``: the
  Simple Features (ISO 19125 / DE-9IM) predicate ``subject <rel> object`` evaluated in
  the planar lon/lat space of GeoJSON (RFC 7946 §3.1.1). So ``within`` means the entity
  lies in the query geometry's *interior* region with no point outside it (a point on a
  polygon's boundary is not within it, but does intersect it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
import shapely

from cityos.core.errors import BadRequestData
from cityos.core.geo import (
    SIMPLE_GEOMETRY_TYPES,
    BBox,
    GeoJSON,
    LocalFrame,
    Shape,
    bbox,
    expand_bbox_m,
    haversine_m,
    point_coordinates,
    to_shape,
    validate_coordinates,
)

DEFAULT_GEOPROPERTY = "location"
"""The GeoProperty a geo-query applies to when ``geoproperty`` is not given (§4.10)."""

GEORELS = ("near", "within", "contains", "intersects", "disjoint", "equals", "overlaps")
"""The geo-relationship names of §4.10."""

QUERY_GEOMETRY_TYPES = SIMPLE_GEOMETRY_TYPES
"""Geometry types a geo-query may use (§4.10: no GeometryCollection)."""

_DISTANCE_MODIFIERS = ("maxDistance", "minDistance")

# Exceptions shapely/GEOS raise on geometries it cannot handle (a stored value that
# escaped validation). A bad stored value must not break a whole query: it just
# does not match.
_SHAPE_ERRORS = (ValueError, TypeError, KeyError, IndexError, shapely.errors.ShapelyError)


class GeoQuery:
    """A parsed, validated geo-query; cheap to evaluate against many entities.

    Attributes (read-only by convention):

    - ``georel``: the relation name, one of :data:`GEORELS`.
    - ``max_distance`` / ``min_distance``: metres for ``near`` (at least one set), else None.
    - ``geometry``: the query geometry as GeoJSON ``{"type", "coordinates"}``.
    - ``geoproperty``: the GeoProperty term (not expanded).

    The shapely form of the query geometry is built (and prepared) once, here, and
    reused by every :meth:`matches` call.
    """

    __slots__ = (
        "_bbox",
        "_frame",
        "_point",
        "_projected",
        "_shape",
        "geometry",
        "geoproperty",
        "georel",
        "max_distance",
        "min_distance",
    )

    def __init__(
        self,
        georel: str,
        geometry: GeoJSON,
        geoproperty: str = DEFAULT_GEOPROPERTY,
        *,
        max_distance: float | None = None,
        min_distance: float | None = None,
    ) -> None:
        """Build from already-parsed parts; raises ``BadRequestData`` if they are invalid.

        Use :func:`parse_geo_query` for query-parameter text.
        """
        if georel not in GEORELS:
            raise BadRequestData(f"Invalid georel {georel!r}: expected one of {', '.join(GEORELS)}")
        for name, bound in (("maxDistance", max_distance), ("minDistance", min_distance)):
            if bound is not None and (not math.isfinite(bound) or bound < 0):
                raise BadRequestData(
                    f"Invalid georel: {name} must be a number >= 0 (metres), got {bound!r}"
                )
        if georel == "near":
            if max_distance is None and min_distance is None:
                raise BadRequestData(
                    "Invalid georel: near needs maxDistance==<metres> or minDistance==<metres>"
                )
            if (
                max_distance is not None
                and min_distance is not None
                and min_distance > max_distance
            ):
                raise BadRequestData(
                    f"Invalid georel: minDistance {min_distance} exceeds maxDistance {max_distance}"
                )
        elif max_distance is not None or min_distance is not None:
            raise BadRequestData(f"Invalid georel: {georel} takes no distance")
        kind = geometry.get("type")
        if not isinstance(kind, str) or kind not in QUERY_GEOMETRY_TYPES:
            raise BadRequestData(
                f"Invalid geometry {kind!r}: expected one of "
                f"{', '.join(sorted(QUERY_GEOMETRY_TYPES))}"
            )
        coordinates = geometry.get("coordinates")
        if coordinates is None:
            raise BadRequestData("Invalid coordinates: missing")
        try:
            validate_coordinates(kind, coordinates, where="coordinates")
        except BadRequestData as exc:
            raise BadRequestData(f"Invalid coordinates for {kind}: {exc.detail}") from None
        if not isinstance(geoproperty, str) or not geoproperty:
            raise BadRequestData("Invalid geoproperty: must be a non-empty attribute name")

        self.georel = georel
        self.max_distance = max_distance
        self.min_distance = min_distance
        self.geometry: dict[str, Any] = {"type": kind, "coordinates": coordinates}
        self.geoproperty = geoproperty
        self._shape = _query_shape(self.geometry)
        self._bbox = bbox(self.geometry)
        self._point = point_coordinates(self.geometry)
        # near: nearest points are searched in a plane centred on the query, where
        # matches are; see LocalFrame for the error bound.
        self._frame = LocalFrame((self._bbox[1] + self._bbox[3]) / 2.0)
        self._projected = self._frame.project(self._shape) if georel == "near" else None

    # ----------------------------------------------------------------- description

    @property
    def georel_text(self) -> str:
        """The georel in canonical §4.10 syntax, e.g. ``near;maxDistance==2000``."""
        parts = [self.georel]
        if self.max_distance is not None:
            parts.append(f"maxDistance=={_format_number(self.max_distance)}")
        if self.min_distance is not None:
            parts.append(f"minDistance=={_format_number(self.min_distance)}")
        return ";".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The query as an NGSI-LD GeoQuery object (§5.2.13) with parsed ``coordinates``."""
        return {
            "georel": self.georel_text,
            "geometry": self.geometry["type"],
            "coordinates": self.geometry["coordinates"],
            "geoproperty": self.geoproperty,
        }

    def __repr__(self) -> str:
        return f"GeoQuery({self.to_dict()!r})"

    # ----------------------------------------------------------------- evaluation

    def candidate_bbox(self) -> BBox | None:
        """A box that every matching entity geometry's bbox must intersect, or ``None``.

        ``near`` with ``maxDistance``: the query bbox grown by that distance
        (:func:`cityos.core.geo.expand_bbox_m`). ``within``, ``contains``,
        ``intersects``, ``equals``, ``overlaps``: the query bbox (each needs a shared
        point). ``disjoint`` and ``near`` with only ``minDistance`` match far-away
        entities, so no box can be given.
        """
        if self.georel == "near":
            if self.max_distance is None:
                return None
            return expand_bbox_m(self._bbox, self.max_distance)
        if self.georel == "disjoint":
            return None
        return self._bbox

    def distance_to(self, entity_geometry: object) -> float:
        """Shortest distance in metres from an entity geometry to the query geometry.

        0 when they intersect; ``math.inf`` when ``entity_geometry`` is not a usable
        GeoJSON geometry (so such entities sort last). Point to Point is a pure
        haversine with no shapely object built.
        """
        point = point_coordinates(entity_geometry)
        if point is not None and self._point is not None:
            return haversine_m(point[0], point[1], self._point[0], self._point[1])
        projected_query = self._projected
        if projected_query is None:
            projected_query = self._projected = self._frame.project(self._shape)
        entity_shape = _entity_shape(entity_geometry)
        if entity_shape is None:
            return math.inf
        try:
            return self._frame.nearest_distance_m(
                self._frame.project(entity_shape), projected_query
            )
        except _SHAPE_ERRORS:
            return math.inf

    def matches(self, entity_geometry: object) -> bool:
        """True when the entity geometry (subject) stands in ``georel`` to the query.

        See the module docstring for each relation. A value that is not a usable
        GeoJSON geometry never matches (not even ``disjoint``).
        """
        if self.georel == "near":
            distance = self.distance_to(entity_geometry)
            if distance == math.inf:
                return False
            if self.max_distance is not None and distance > self.max_distance:
                return False
            return self.min_distance is None or distance >= self.min_distance

        point = point_coordinates(entity_geometry)
        if point is not None and self.georel in ("within", "intersects", "disjoint"):
            # Point entities are the common case; the *_xy predicates test a
            # coordinate against the prepared query without building a Point.
            if self.georel == "within":
                return bool(shapely.contains_xy(self._shape, point[0], point[1]))
            hit = bool(shapely.intersects_xy(self._shape, point[0], point[1]))
            return hit if self.georel == "intersects" else not hit

        entity_shape = _entity_shape(entity_geometry)
        if entity_shape is None:
            return False
        query = self._shape
        try:
            if self.georel == "within":
                # within(a, b) == contains(b, a); the prepared query goes first.
                return bool(shapely.contains(query, entity_shape))
            if self.georel == "contains":
                return bool(shapely.within(query, entity_shape))
            if self.georel == "intersects":
                return bool(shapely.intersects(query, entity_shape))
            if self.georel == "disjoint":
                return not bool(shapely.intersects(query, entity_shape))
            if self.georel == "equals":
                return bool(shapely.equals(entity_shape, query))
            return bool(shapely.overlaps(entity_shape, query))
        except _SHAPE_ERRORS:
            return False


def parse_geo_query(
    georel: str | None,
    geometry: str | None,
    coordinates: str | list[Any] | None,
    geoproperty: str | None = None,
) -> GeoQuery | None:
    """Parse the geo-query parameters of §4.10 into a :class:`GeoQuery`.

    - ``georel``: ``near;maxDistance==<m>``, ``near;minDistance==<m>`` (or both, any
      order), ``within``, ``contains``, ``intersects``, ``disjoint``, ``equals``,
      ``overlaps``. Names are case-sensitive; distances are numbers >= 0 in metres.
    - ``geometry``: ``Point``, ``MultiPoint``, ``LineString``, ``MultiLineString``,
      ``Polygon``, ``MultiPolygon`` (case-sensitive, as GeoJSON).
    - ``coordinates``: the JSON text of the coordinates array, or the parsed array
      (POST bodies); validated as GeoJSON coordinates of ``geometry``. A polygon whose
      rings cross themselves is still GeoJSON (RFC 7946 only asks for closed rings of
      four or more positions); it is evaluated as the area it encloses (``make_valid``).
    - ``geoproperty``: the GeoProperty term; ``None`` means ``location``.

    Returns ``None`` when none of georel, geometry, coordinates is given (a lone
    ``geoproperty`` is ignored). Raises ``BadRequestData`` naming the culprit when only
    some are given or any is invalid; never another exception type.
    """
    given = {"georel": georel, "geometry": geometry, "coordinates": coordinates}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == len(given):
        return None
    if missing:
        raise BadRequestData(
            "A geo-query needs georel, geometry and coordinates together; missing: "
            + ", ".join(missing)
        )
    assert georel is not None and geometry is not None and coordinates is not None
    if not isinstance(georel, str):
        raise BadRequestData(f"Invalid georel {georel!r}: must be a string")
    if not isinstance(geometry, str):
        raise BadRequestData(f"Invalid geometry {geometry!r}: must be a string")
    relation, max_distance, min_distance = _parse_georel(georel)
    parsed_coordinates = _parse_coordinates(coordinates)
    query = GeoQuery(
        relation,
        {"type": geometry, "coordinates": parsed_coordinates},
        DEFAULT_GEOPROPERTY if geoproperty is None else geoproperty,
        max_distance=max_distance,
        min_distance=min_distance,
    )
    return query


def _parse_georel(text: str) -> tuple[str, float | None, float | None]:
    relation, *modifiers = text.split(";")
    if relation not in GEORELS:
        raise BadRequestData(f"Invalid georel {text!r}: expected one of {', '.join(GEORELS)}")
    if relation != "near":
        if modifiers:
            raise BadRequestData(f"Invalid georel {text!r}: {relation} takes no modifiers")
        return relation, None, None
    bounds: dict[str, float] = {}
    for modifier in modifiers:
        name, separator, number_text = modifier.partition("==")
        if not separator or name not in _DISTANCE_MODIFIERS:
            raise BadRequestData(
                f"Invalid georel {text!r}: near takes maxDistance==<metres> "
                f"and/or minDistance==<metres>, not {modifier!r}"
            )
        if name in bounds:
            raise BadRequestData(f"Invalid georel {text!r}: {name} given twice")
        try:
            number = float(number_text)
        except ValueError:
            raise BadRequestData(
                f"Invalid georel {text!r}: {name} must be a number of metres, got {number_text!r}"
            ) from None
        if not math.isfinite(number) or number < 0:
            raise BadRequestData(f"Invalid georel {text!r}: {name} must be a number >= 0 (metres)")
        bounds[name] = number
    if not bounds:
        raise BadRequestData(
            f"Invalid georel {text!r}: near needs maxDistance==<metres> or minDistance==<metres>"
        )
    return relation, bounds.get("maxDistance"), bounds.get("minDistance")


def _parse_coordinates(coordinates: object) -> object:
    if isinstance(coordinates, list):
        return coordinates
    if not isinstance(coordinates, str):
        raise BadRequestData(
            f"Invalid coordinates: expected a JSON array, got {type(coordinates).__name__}"
        )
    try:
        parsed = orjson.loads(coordinates)
    except orjson.JSONDecodeError as exc:
        raise BadRequestData(f"Invalid coordinates: not valid JSON ({exc})") from None
    if not isinstance(parsed, list):
        raise BadRequestData("Invalid coordinates: must be a JSON array")
    return parsed


def _query_shape(geometry: GeoJSON) -> Shape:
    shape = _valid(to_shape(geometry))
    # Preparing builds a spatial index of the query once; every predicate then uses it.
    shapely.prepare(shape)
    return shape


def _entity_shape(entity_geometry: object) -> Shape | None:
    if not isinstance(entity_geometry, Mapping) or not isinstance(entity_geometry.get("type"), str):
        return None
    try:
        return _valid(to_shape(entity_geometry))
    except _SHAPE_ERRORS:
        return None


def _valid(shape: Shape) -> Shape:
    # Predicates on self-intersecting polygons have no defined answer; their valid
    # form covers the same area, so relations are decided on that.
    if shapely.is_valid(shape):
        return shape
    return shapely.make_valid(shape)


def _format_number(value: float) -> str:
    # 2000.0 reads better as 2000 in echoed queries; other values keep full precision.
    return str(int(value)) if value.is_integer() else repr(value)
