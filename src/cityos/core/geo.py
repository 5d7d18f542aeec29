"""Geometry helpers on GeoJSON (RFC 7946): validation, bounding boxes, distances, CRS transforms.

Nothing here knows about NGSI-LD; the broker's geo-queries and the OGC API build on it.

Conventions:

- A *GeoJSON geometry* is a ``Mapping`` with ``type`` and ``coordinates`` (or
  ``geometries`` for a GeometryCollection), positions ``[lon, lat]`` or
  ``[lon, lat, height]`` in WGS84 degrees (RFC 7946 §3.1.1, §4).
- Functions other than :func:`validate_geojson_geometry` assume their input has been
  validated; they may raise ``ValueError``/``KeyError``/``TypeError`` otherwise.
- Topology (lines, polygon edges) is planar in lon/lat, as RFC 7946 §3.1.1 prescribes
  ("a line between two positions is a straight Cartesian line"); *distances* are
  great-circle metres on a sphere of the Earth's mean radius.
- Geometries crossing the antimeridian are not supported (RFC 7946 §3.1.9 asks
  producers to cut them in two); they are read as spanning the long way round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

import shapely
import shapely.geometry
import shapely.ops
from pyproj import Transformer
from pyproj.exceptions import CRSError, ProjError

from cityos.core.errors import BadRequestData

GeoJSON = Mapping[str, Any]
"""A GeoJSON geometry object (parsed JSON)."""

Shape = Any
"""A shapely geometry. Shapely ships no type stubs, so this is ``Any`` behind typed functions."""

BBox = tuple[float, float, float, float]
"""``(min_lon, min_lat, max_lon, max_lat)`` in degrees."""

EARTH_MEAN_RADIUS_M = 6371008.8
"""IUGG mean Earth radius R1 in metres, the sphere all distances here are measured on."""

CRS84 = "OGC:CRS84"
"""WGS84 longitude/latitude: the GeoJSON and NGSI-LD coordinate reference system."""

EPSG_JGD2011 = "EPSG:6668"
"""JGD2011 geographic 2D (Japan's datum; within centimetres of WGS84 for city data)."""

EPSG_JGD2011_ZONE_VII = "EPSG:6675"
"""JGD2011 / Japan Plane Rectangular CS VII (Toyama, Ishikawa, Fukui, Gifu, Aichi); metres."""

SIMPLE_GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}
)
"""GeoJSON geometry types that carry ``coordinates`` (all but GeometryCollection)."""

GEOMETRY_TYPES = SIMPLE_GEOMETRY_TYPES | {"GeometryCollection"}
"""All GeoJSON geometry types accepted by :func:`validate_geojson_geometry`."""

# How many array levels lie between "coordinates" and a position, per type. One table
# drives validation, iteration and rebuilding so the three can never disagree.
_POSITION_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}

# A GeometryCollection may nest; bound it so hostile input fails with BadRequestData
# instead of exhausting the interpreter stack.
_MAX_COLLECTION_NESTING = 8

# Relative and absolute slack added to bounding-box expansions so that floating-point
# rounding in a caller's own distance computation can never put a match outside the box.
_REL_SLACK = 1e-9
_ABS_SLACK_DEG = 1e-9

_WORLD: BBox = (-180.0, -90.0, 180.0, 90.0)


# --------------------------------------------------------------------------- validation


def validate_geojson_geometry(value: object) -> None:
    """Raise ``BadRequestData`` unless ``value`` is a valid GeoJSON geometry object.

    Accepted: Point, MultiPoint, LineString, MultiLineString, Polygon, MultiPolygon and
    GeometryCollection (RFC 7946 §3.1). Positions are 2 or 3 finite numbers (not
    booleans) with longitude in [-180, 180] and latitude in [-90, 90]; a LineString has
    at least 2 positions; each polygon ring has at least 4 positions and is closed
    (first == last). Empty multi-geometries and collections are rejected: an entity
    without a location should omit the attribute rather than send an empty geometry.
    Members other than ``type``/``coordinates``/``geometries`` are ignored. Ring
    orientation and self-intersection are not checked (RFC 7946 §3.1.6 says parsers
    should not reject wrongly wound rings).
    """
    _validate_geometry(value, "geometry", 0)


def _invalid(where: str, problem: str) -> BadRequestData:
    return BadRequestData(f"Invalid GeoJSON geometry: {where} {problem}")


def _validate_geometry(value: object, where: str, nesting: int) -> None:
    if not isinstance(value, Mapping):
        raise _invalid(where, "must be a JSON object")
    kind = value.get("type")
    if kind == "GeometryCollection":
        if nesting >= _MAX_COLLECTION_NESTING:
            raise _invalid(where, "nests GeometryCollections too deeply")
        members = value.get("geometries")
        if not isinstance(members, list) or not members:
            raise _invalid(where, "must have a non-empty 'geometries' array")
        for index, member in enumerate(members):
            _validate_geometry(member, f"{where}.geometries[{index}]", nesting + 1)
        return
    if not isinstance(kind, str) or kind not in SIMPLE_GEOMETRY_TYPES:
        allowed = ", ".join(sorted(GEOMETRY_TYPES))
        raise _invalid(where, f"has type {kind!r}; expected one of {allowed}")
    if "coordinates" not in value:
        raise _invalid(where, f"({kind}) has no 'coordinates'")
    validate_coordinates(kind, value["coordinates"], where=f"{where}.coordinates")


def validate_coordinates(kind: str, coordinates: object, *, where: str = "coordinates") -> None:
    """Raise ``BadRequestData`` unless ``coordinates`` are well-formed for geometry ``kind``.

    ``kind`` must be one of :data:`SIMPLE_GEOMETRY_TYPES`; rules as in
    :func:`validate_geojson_geometry`. ``where`` names the value in error messages.
    """
    if kind == "Point":
        _check_position(coordinates, where)
    elif kind in ("MultiPoint", "LineString"):
        minimum = 2 if kind == "LineString" else 1
        _check_positions(coordinates, where, minimum, f"{kind} needs at least {minimum}")
    elif kind == "MultiLineString":
        for index, line in enumerate(_check_array(coordinates, where, 1, "needs a line")):
            _check_positions(line, f"{where}[{index}]", 2, "a line needs at least 2")
    elif kind == "Polygon":
        _check_polygon(coordinates, where)
    elif kind == "MultiPolygon":
        for index, polygon in enumerate(_check_array(coordinates, where, 1, "needs a polygon")):
            _check_polygon(polygon, f"{where}[{index}]")
    else:
        raise _invalid(where, f"belongs to unknown geometry type {kind!r}")


def _check_array(value: object, where: str, minimum: int, need: str) -> Sequence[object]:
    if not isinstance(value, list | tuple):
        raise _invalid(where, "must be an array")
    if len(value) < minimum:
        raise _invalid(where, f"is too short: {need}")
    return value


def _check_positions(value: object, where: str, minimum: int, need: str) -> Sequence[object]:
    positions = _check_array(value, where, minimum, f"{need} positions")
    for index, position in enumerate(positions):
        _check_position(position, f"{where}[{index}]")
    return positions


def _check_polygon(value: object, where: str) -> None:
    for index, ring in enumerate(_check_array(value, where, 1, "a polygon needs a ring")):
        ring_where = f"{where}[{index}]"
        positions = _check_positions(ring, ring_where, 4, "a polygon ring needs at least 4")
        first, last = positions[0], positions[-1]
        # Compare as lists so that [1, 2] and (1.0, 2.0) count as the same position.
        if list(first) != list(last):  # type: ignore[call-overload]
            raise _invalid(ring_where, "is not closed: its first and last positions differ")


def _check_position(value: object, where: str) -> None:
    if not isinstance(value, list | tuple) or len(value) not in (2, 3):
        raise _invalid(where, "must be a position: an array of 2 or 3 numbers")
    for number in value:
        # bool is an int subclass; JSON true is not a coordinate.
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise _invalid(where, f"must contain only numbers, found {number!r}")
        if not math.isfinite(number):
            raise _invalid(where, f"must contain finite numbers, found {number!r}")
    lon, lat = value[0], value[1]
    if not -180.0 <= lon <= 180.0:
        raise _invalid(where, f"has longitude {lon} outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise _invalid(where, f"has latitude {lat} outside [-90, 90]")


# --------------------------------------------------------------------------- structure


def iter_positions(geojson: GeoJSON) -> Iterator[Sequence[float]]:
    """Every position of a (valid) geometry, in document order, collections included."""
    if geojson["type"] == "GeometryCollection":
        for member in geojson["geometries"]:
            yield from iter_positions(member)
        return
    yield from _iter_nested(geojson["coordinates"], _POSITION_DEPTH[geojson["type"]])


def _iter_nested(coordinates: Any, depth: int) -> Iterator[Sequence[float]]:
    if depth == 0:
        yield coordinates
        return
    for child in coordinates:
        yield from _iter_nested(child, depth - 1)


def to_shape(geojson: GeoJSON) -> Shape:
    """A shapely geometry for a (valid) GeoJSON geometry, in lon/lat degrees."""
    return shapely.geometry.shape(geojson)


def bbox(geojson: GeoJSON) -> BBox:
    """``(min_lon, min_lat, max_lon, max_lat)`` of a (valid, non-empty) geometry.

    Pure Python: no shapely object is built, so it is cheap for points and also used on
    hot paths (index maintenance).
    """
    if geojson["type"] == "Point":
        lon, lat = geojson["coordinates"][:2]
        return (float(lon), float(lat), float(lon), float(lat))
    min_lon = min_lat = math.inf
    max_lon = max_lat = -math.inf
    for position in iter_positions(geojson):
        lon, lat = position[0], position[1]
        min_lon = min(min_lon, lon)
        max_lon = max(max_lon, lon)
        min_lat = min(min_lat, lat)
        max_lat = max(max_lat, lat)
    if min_lon == math.inf:
        raise ValueError("bbox of an empty geometry")
    return (float(min_lon), float(min_lat), float(max_lon), float(max_lat))


def bboxes_intersect(a: BBox, b: BBox) -> bool:
    """True when two boxes share at least one point (touching edges count)."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


# --------------------------------------------------------------------------- distances


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two lon/lat points (degrees).

    Measured on the sphere of radius :data:`EARTH_MEAN_RADIUS_M`; differs from the
    WGS84 geodesic by at most about 0.5 % (less than 0.3 % at Japan's latitudes).
    Symmetric bit for bit: swapping the points gives the identical float.
    """
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    half_dphi = math.sin((phi2 - phi1) / 2.0)
    half_dlambda = math.sin(math.radians(lon2 - lon1) / 2.0)
    a = half_dphi * half_dphi + math.cos(phi1) * math.cos(phi2) * half_dlambda * half_dlambda
    return 2.0 * EARTH_MEAN_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def point_coordinates(geojson: object) -> tuple[float, float] | None:
    """``(lon, lat)`` when ``geojson`` is a Point with numeric coordinates, else ``None``.

    A cheap, defensive probe used by fast paths that avoid building shapely objects.
    """
    if not isinstance(geojson, Mapping) or geojson.get("type") != "Point":
        return None
    coordinates = geojson.get("coordinates")
    if not isinstance(coordinates, list | tuple) or len(coordinates) < 2:
        return None
    lon, lat = coordinates[0], coordinates[1]
    if isinstance(lon, bool) or isinstance(lat, bool):
        return None
    if not isinstance(lon, int | float) or not isinstance(lat, int | float):
        return None
    return (float(lon), float(lat))


class LocalFrame:
    """A local equirectangular plane for nearest-point search around a reference latitude.

    ``x = lon · cos(ref_lat)``, ``y = lat``: both axes then measure (nearly) the same
    ground distance per unit near ``ref_lat``, so planar nearest points are (nearly) the
    geodesic ones. Scaling is affine, so topology (intersection, containment) is the
    same as in plain lon/lat.

    Error bound: the x-scale is off by ``cos(lat)/cos(ref_lat) - 1 ≈ tan(ref_lat)·Δlat``.
    A pair of nearest points chosen in this plane is an exact pair of points of the
    two geometries, so the haversine between them is never *below* the true minimum
    distance, and exceeds it by at most about twice that relative distortion: for
    geometries within 25 km (Δlat ≈ 0.23°) of ``ref_lat`` = 36.7° (Toyama) that is
    under 0.6 %, i.e. under 12 m at a 2 km search radius and 0 for intersecting shapes.
    """

    __slots__ = ("_scale",)

    def __init__(self, ref_lat: float) -> None:
        # Clamp so the frame stays usable for geometries touching the poles.
        self._scale = max(math.cos(math.radians(ref_lat)), 1e-6)

    def project(self, shape: Shape) -> Shape:
        """The shape in this frame (a new shapely geometry)."""
        scale = self._scale
        return shapely.transform(shape, lambda xy: xy * (scale, 1.0))

    def nearest_distance_m(self, projected_a: Shape, projected_b: Shape) -> float:
        """Haversine metres between the nearest points of two shapes given in this frame."""
        point_a, point_b = shapely.ops.nearest_points(projected_a, projected_b)
        return haversine_m(point_a.x / self._scale, point_a.y, point_b.x / self._scale, point_b.y)


def distance_m(geojson_a: GeoJSON, geojson_b: GeoJSON) -> float:
    """Shortest distance in metres between two (valid) geometries; 0 when they intersect.

    Point–point: exact haversine (see :func:`haversine_m`), no shapely involved. Any
    other pair: nearest points found in a :class:`LocalFrame` centred on the two
    geometries' joint latitude range, then the haversine between those points; see
    :class:`LocalFrame` for the error bound (well under 1 % at city scale, and never an
    underestimate of the distance between the lon/lat-planar shapes).
    """
    point_a = point_coordinates(geojson_a)
    point_b = point_coordinates(geojson_b)
    if point_a is not None and point_b is not None:
        return haversine_m(point_a[0], point_a[1], point_b[0], point_b[1])
    box_a = bbox(geojson_a)
    box_b = bbox(geojson_b)
    ref_lat = (min(box_a[1], box_b[1]) + max(box_a[3], box_b[3])) / 2.0
    frame = LocalFrame(ref_lat)
    return frame.nearest_distance_m(
        frame.project(to_shape(geojson_a)), frame.project(to_shape(geojson_b))
    )


def expand_bbox_m(box: BBox, distance_m: float) -> BBox:
    """A box containing every point within ``distance_m`` metres of any point of ``box``.

    Distances are great-circle metres on the mean-radius sphere (as :func:`haversine_m`).
    Latitude grows by exactly ``distance / R`` radians. Longitude grows by
    ``asin(sin δ / cos φ)``, the widest longitude offset reachable within angular
    distance δ from latitude φ, taken at the box's highest-|latitude| edge where it is
    largest. When a pole is within reach the box spans all longitudes up to that pole;
    when the box would cross the antimeridian it spans all longitudes (a single
    min/max box cannot wrap, and the full range is a safe superset).
    Raises ``ValueError`` for a negative or non-finite distance.
    """
    if not math.isfinite(distance_m) or distance_m < 0:
        raise ValueError(f"distance must be a finite number >= 0, got {distance_m!r}")
    min_lon, min_lat, max_lon, max_lat = box
    delta = distance_m / EARTH_MEAN_RADIUS_M
    dlat = math.degrees(delta) * (1 + _REL_SLACK) + _ABS_SLACK_DEG
    new_min_lat = min_lat - dlat
    new_max_lat = max_lat + dlat
    if new_min_lat <= -90.0 or new_max_lat >= 90.0:
        # A pole is reachable, and from a pole every meridian is: all longitudes.
        return (-180.0, max(new_min_lat, -90.0), 180.0, min(new_max_lat, 90.0))
    phi = math.radians(max(abs(min_lat), abs(max_lat)))
    # delta < pi/2 here (else a pole would be in reach), so sin is increasing on it.
    ratio = math.sin(delta) / math.cos(phi)
    if ratio >= 1.0:
        return (-180.0, new_min_lat, 180.0, new_max_lat)
    dlon = math.degrees(math.asin(ratio)) * (1 + _REL_SLACK) + _ABS_SLACK_DEG
    new_min_lon = min_lon - dlon
    new_max_lon = max_lon + dlon
    if new_min_lon < -180.0 or new_max_lon > 180.0:
        return (-180.0, new_min_lat, 180.0, new_max_lat)
    return (new_min_lon, new_min_lat, new_max_lon, new_max_lat)


# --------------------------------------------------------------------------- CRS transforms


@lru_cache(maxsize=32)
def _transformer(from_crs: str, to_crs: str) -> Any:  # pyproj has no stubs
    # Building a Transformer costs milliseconds (database look-ups); reuse per CRS pair.
    # pyproj >= 3.1 Transformers are thread-safe, so one shared instance is fine.
    # always_xy: GeoJSON is lon/lat (easting/northing) even where the EPSG definition
    # puts latitude or northing first (EPSG:6668 and EPSG:6675 both do).
    try:
        return Transformer.from_crs(from_crs, to_crs, always_xy=True)
    except CRSError as exc:
        raise BadRequestData(
            f"Unknown or unsupported CRS in {from_crs!r} -> {to_crs!r}: {exc}"
        ) from None


def transform_coordinates(geojson: GeoJSON, from_crs: str, to_crs: str) -> dict[str, Any]:
    """A copy of a geometry with horizontal coordinates transformed between two CRSs.

    CRSs are anything pyproj understands (``"EPSG:6675"``, ``"OGC:CRS84"``, OGC URIs such
    as ``http://www.opengis.net/def/crs/EPSG/0/6675``). Axis order is always x/y
    (lon/lat, easting/northing). A third (height) coordinate is carried over unchanged:
    only horizontal transformations are intended. The result keeps ``type`` and
    ``coordinates``/``geometries`` only (a ``bbox`` member would be stale).
    The input must be structurally valid; range checks are not applied because
    projected coordinates are not degrees. Raises ``BadRequestData`` for an unknown CRS
    or a point that cannot be transformed.
    """
    transformer = _transformer(from_crs, to_crs)
    positions = list(iter_positions(geojson))
    try:
        xs, ys = transformer.transform(
            [p[0] for p in positions], [p[1] for p in positions], errcheck=True
        )
    except ProjError as exc:
        raise BadRequestData(
            f"Coordinates cannot be transformed from {from_crs} to {to_crs}: {exc}"
        ) from None
    transformed = iter([[x, y, *p[2:]] for x, y, p in zip(xs, ys, positions, strict=True)])
    return _rebuild(geojson, lambda _position: next(transformed))


def _rebuild(geojson: GeoJSON, replace: Callable[[Sequence[float]], list[float]]) -> dict[str, Any]:
    if geojson["type"] == "GeometryCollection":
        return {
            "type": "GeometryCollection",
            "geometries": [_rebuild(member, replace) for member in geojson["geometries"]],
        }
    depth = _POSITION_DEPTH[geojson["type"]]
    return {
        "type": geojson["type"],
        "coordinates": _rebuild_nested(geojson["coordinates"], depth, replace),
    }


def _rebuild_nested(
    coordinates: Any,  # nested JSON arrays
    depth: int,
    replace: Callable[[Sequence[float]], list[float]],
) -> Any:
    if depth == 0:
        return replace(coordinates)
    return [_rebuild_nested(child, depth - 1, replace) for child in coordinates]
