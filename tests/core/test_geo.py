"""Tests for cityos.core.geo: GeoJSON validation, boxes, distances, CRS transforms."""

from __future__ import annotations

import math
from typing import Any

import pytest
import shapely.geometry
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from cityos.core import geo
from cityos.core.errors import BadRequestData

CITY_HALL = (137.2113, 36.6953)  # Toyama City Hall (lon, lat)
STATION = (137.2137, 36.7013)  # Toyama Station

DOWNTOWN = [[[137.20, 36.69], [137.22, 36.69], [137.22, 36.71], [137.20, 36.71], [137.20, 36.69]]]


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


# --------------------------------------------------------------------------- validation

VALID_GEOMETRIES = {
    "point": point(*CITY_HALL),
    "point-3d": {"type": "Point", "coordinates": [137.2113, 36.6953, 12.5]},
    "point-int": {"type": "Point", "coordinates": [137, 36]},
    "multipoint": {"type": "MultiPoint", "coordinates": [list(CITY_HALL), list(STATION)]},
    "linestring": {"type": "LineString", "coordinates": [list(CITY_HALL), list(STATION)]},
    "multilinestring": {
        "type": "MultiLineString",
        "coordinates": [[list(CITY_HALL), list(STATION)], [[137.0, 36.0], [137.1, 36.1]]],
    },
    "polygon": {"type": "Polygon", "coordinates": DOWNTOWN},
    "polygon-hole": {
        "type": "Polygon",
        "coordinates": [
            DOWNTOWN[0],
            [[137.21, 36.70], [137.211, 36.70], [137.211, 36.701], [137.21, 36.70]],
        ],
    },
    "multipolygon": {"type": "MultiPolygon", "coordinates": [DOWNTOWN, DOWNTOWN]},
    "collection": {
        "type": "GeometryCollection",
        "geometries": [point(*CITY_HALL), {"type": "Polygon", "coordinates": DOWNTOWN}],
    },
    "extreme-corners": {"type": "LineString", "coordinates": [[-180, -90], [180, 90]]},
    "foreign-members": {"type": "Point", "coordinates": [1, 2], "bbox": [1, 2, 1, 2]},
}


@pytest.mark.parametrize("value", VALID_GEOMETRIES.values(), ids=VALID_GEOMETRIES.keys())
def test_valid_geometries_pass(value: dict[str, Any]) -> None:
    geo.validate_geojson_geometry(value)


def _nested_collection(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = point(1, 2)
    for _ in range(depth):
        value = {"type": "GeometryCollection", "geometries": [value]}
    return value


INVALID_GEOMETRIES: dict[str, tuple[object, str]] = {
    "not-object": ([1, 2], "JSON object"),
    "none": (None, "JSON object"),
    "feature": ({"type": "Feature", "geometry": point(1, 2)}, "'Feature'"),
    "unknown-type": ({"type": "Circle", "coordinates": [1, 2]}, "'Circle'"),
    "missing-coordinates": ({"type": "Point"}, "no 'coordinates'"),
    "string-in-position": ({"type": "Point", "coordinates": ["137", 36]}, "only numbers"),
    "bool-in-position": ({"type": "Point", "coordinates": [True, 36]}, "only numbers"),
    "nan": ({"type": "Point", "coordinates": [math.nan, 36]}, "finite"),
    "infinite": ({"type": "Point", "coordinates": [137, math.inf]}, "finite"),
    "latitude-95": ({"type": "Point", "coordinates": [137, 95]}, "latitude 95"),
    "longitude-181": ({"type": "Point", "coordinates": [181, 36]}, "longitude 181"),
    "one-number": ({"type": "Point", "coordinates": [137]}, "2 or 3 numbers"),
    "four-numbers": ({"type": "Point", "coordinates": [1, 2, 3, 4]}, "2 or 3 numbers"),
    "coordinates-object": ({"type": "LineString", "coordinates": {"a": 1}}, "array"),
    "short-line": ({"type": "LineString", "coordinates": [[1, 2]]}, "at least 2"),
    "empty-multipoint": ({"type": "MultiPoint", "coordinates": []}, "too short"),
    "nested-bad-position": (
        {"type": "MultiLineString", "coordinates": [[[1, 2], [1, "x"]]]},
        "coordinates[0][1]",
    ),
    "unclosed-ring": (
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
        "not closed",
    ),
    "three-position-ring": (
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
        "at least 4",
    ),
    "multipolygon-bad-ring": (
        {"type": "MultiPolygon", "coordinates": [DOWNTOWN, [[[0, 0], [1, 0], [1, 1], [0, 1]]]]},
        "coordinates[1][0]",
    ),
    "empty-collection": ({"type": "GeometryCollection", "geometries": []}, "geometries"),
    "bad-collection-member": (
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 91]}]},
        "geometries[0]",
    ),
    "deep-collection": (_nested_collection(50), "too deeply"),
}


@pytest.mark.parametrize(
    ("value", "fragment"), INVALID_GEOMETRIES.values(), ids=INVALID_GEOMETRIES.keys()
)
def test_invalid_geometries_raise_bad_request_data(value: object, fragment: str) -> None:
    with pytest.raises(BadRequestData) as caught:
        geo.validate_geojson_geometry(value)
    assert fragment in caught.value.detail


# --------------------------------------------------------------------------- bbox


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (point(*CITY_HALL), (137.2113, 36.6953, 137.2113, 36.6953)),
        (VALID_GEOMETRIES["point-3d"], (137.2113, 36.6953, 137.2113, 36.6953)),
        (VALID_GEOMETRIES["linestring"], (137.2113, 36.6953, 137.2137, 36.7013)),
        (VALID_GEOMETRIES["polygon-hole"], (137.20, 36.69, 137.22, 36.71)),
        (VALID_GEOMETRIES["multilinestring"], (137.0, 36.0, 137.2137, 36.7013)),
        (VALID_GEOMETRIES["collection"], (137.20, 36.69, 137.22, 36.71)),
    ],
)
def test_bbox(value: dict[str, Any], expected: tuple[float, ...]) -> None:
    result = geo.bbox(value)
    assert result == pytest.approx(expected)
    assert all(isinstance(number, float) for number in result)


def test_bbox_of_points_builds_no_shapely_object(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(_value: object) -> None:
        raise AssertionError("shapely used")

    monkeypatch.setattr(geo, "to_shape", forbidden)
    monkeypatch.setattr(shapely.geometry, "shape", forbidden)
    assert geo.bbox(point(*STATION)) == (137.2137, 36.7013, 137.2137, 36.7013)
    assert geo.bbox(VALID_GEOMETRIES["polygon"]) == (137.20, 36.69, 137.22, 36.71)


def test_bboxes_intersect() -> None:
    assert geo.bboxes_intersect((0, 0, 1, 1), (1, 1, 2, 2))  # touching corner
    assert not geo.bboxes_intersect((0, 0, 1, 1), (1.1, 0, 2, 1))


# --------------------------------------------------------------------------- distances


def test_haversine_city_hall_to_station() -> None:
    distance = geo.haversine_m(*CITY_HALL, *STATION)
    assert 690.0 < distance < 710.0
    _, _, geodesic = Geod(ellps="WGS84").inv(*CITY_HALL, *STATION)
    # Sphere vs ellipsoid: within 0.5 % (0.16 % here).
    assert distance == pytest.approx(geodesic, rel=0.005)


def test_haversine_known_values_and_symmetry() -> None:
    one_degree = geo.EARTH_MEAN_RADIUS_M * math.pi / 180.0
    assert geo.haversine_m(0, 0, 0, 1) == pytest.approx(one_degree, rel=1e-12)
    assert geo.haversine_m(0, 0, 1, 0) == pytest.approx(one_degree, rel=1e-12)
    assert geo.haversine_m(*CITY_HALL, *CITY_HALL) == 0.0
    assert geo.haversine_m(*CITY_HALL, *STATION) == geo.haversine_m(*STATION, *CITY_HALL)
    # Antipodes: half the circumference, no domain error from rounding.
    assert geo.haversine_m(0, 0, 180, 0) == pytest.approx(math.pi * geo.EARTH_MEAN_RADIUS_M)


def test_distance_point_point_is_haversine() -> None:
    assert geo.distance_m(point(*CITY_HALL), point(*STATION)) == geo.haversine_m(
        *CITY_HALL, *STATION
    )


def test_distance_point_to_line_perpendicular() -> None:
    # An east-west line through the station's latitude; the nearest point is due north.
    line = {"type": "LineString", "coordinates": [[137.20, 36.7013], [137.30, 36.7013]]}
    expected = geo.haversine_m(*CITY_HALL, CITY_HALL[0], 36.7013)
    assert geo.distance_m(point(*CITY_HALL), line) == pytest.approx(expected, rel=1e-6)


def test_distance_to_diagonal_line_matches_brute_force() -> None:
    # A 45-degree (in degrees) line: ignoring cos(latitude) would pick the wrong nearest
    # point and be ~2.5 % long. The documented bound is 0.6 %.
    line = {"type": "LineString", "coordinates": [[137.20, 36.70], [137.25, 36.75]]}
    target = (137.25, 36.70)
    steps = 20_000
    brute = min(
        geo.haversine_m(*target, 137.20 + 0.05 * i / steps, 36.70 + 0.05 * i / steps)
        for i in range(steps + 1)
    )
    distance = geo.distance_m(point(*target), line)
    assert brute - 0.5 <= distance <= brute * 1.006


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (point(*CITY_HALL), {"type": "Polygon", "coordinates": DOWNTOWN}),  # inside
        (point(137.20, 36.70), {"type": "Polygon", "coordinates": DOWNTOWN}),  # on edge
        (
            {"type": "LineString", "coordinates": [[137.19, 36.70], [137.23, 36.70]]},
            {"type": "Polygon", "coordinates": DOWNTOWN},
        ),
        (VALID_GEOMETRIES["multipoint"], point(*STATION)),
    ],
)
def test_distance_zero_when_intersecting(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert geo.distance_m(a, b) == pytest.approx(0.0, abs=1e-6)
    assert geo.distance_m(b, a) == pytest.approx(0.0, abs=1e-6)


def test_distance_between_polygons() -> None:
    # A box 0.01 degrees east of downtown: gap is 0.01 degrees of longitude.
    east = [[[137.23, 36.69], [137.24, 36.69], [137.24, 36.71], [137.23, 36.71], [137.23, 36.69]]]
    distance = geo.distance_m(
        {"type": "Polygon", "coordinates": DOWNTOWN}, {"type": "Polygon", "coordinates": east}
    )
    # The true nearest points are at the edges' northern ends (meridians converge). The
    # local frame treats the edges as parallel and may pick other points on them: the
    # result is a real point-to-point distance, never shorter, at most 0.6 % longer.
    true_minimum = geo.haversine_m(137.22, 36.71, 137.23, 36.71)
    assert true_minimum - 1e-6 <= distance <= true_minimum * 1.006


# --------------------------------------------------------------------------- expand_bbox_m


def _destination(lon: float, lat: float, bearing_deg: float, metres: float) -> tuple[float, float]:
    """Spherical destination point, longitude normalised to [-180, 180]."""
    delta = metres / geo.EARTH_MEAN_RADIUS_M
    phi1, lambda1, theta = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lambda2 = lambda1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * sin_phi2,
    )
    lon2 = (math.degrees(lambda2) + 540.0) % 360.0 - 180.0
    return lon2, math.degrees(phi2)


def _inside(box: geo.BBox, lon: float, lat: float) -> bool:
    return box[0] <= lon <= box[2] and box[1] <= lat <= box[3]


@settings(max_examples=400, deadline=None)
@given(
    centre_lon=st.floats(-179.0, 179.0),
    centre_lat=st.floats(-89.0, 89.0),
    half_width=st.floats(0.0, 0.5),
    half_height=st.floats(0.0, 0.5),
    corner_x=st.floats(-1.0, 1.0),
    corner_y=st.floats(-1.0, 1.0),
    distance=st.one_of(st.floats(0.0, 50_000.0), st.floats(0.0, 3_000_000.0)),
    bearing=st.floats(0.0, 360.0),
    fraction=st.floats(0.0, 1.0),
)
def test_expanded_bbox_contains_every_point_within_distance(
    centre_lon: float,
    centre_lat: float,
    half_width: float,
    half_height: float,
    corner_x: float,
    corner_y: float,
    distance: float,
    bearing: float,
    fraction: float,
) -> None:
    box = (
        max(-180.0, centre_lon - half_width),
        max(-90.0, centre_lat - half_height),
        min(180.0, centre_lon + half_width),
        min(90.0, centre_lat + half_height),
    )
    # Start anywhere in the box (centre, edges, corners), walk up to `distance`.
    start_lon = centre_lon + corner_x * half_width
    start_lat = centre_lat + corner_y * half_height
    start_lon = min(max(start_lon, box[0]), box[2])
    start_lat = min(max(start_lat, box[1]), box[3])
    lon, lat = _destination(start_lon, start_lat, bearing, fraction * distance)
    assert geo.haversine_m(start_lon, start_lat, lon, lat) <= distance * (1 + 1e-9) + 1e-6
    expanded = geo.expand_bbox_m(box, distance)
    assert _inside(expanded, lon, lat), (box, expanded, (lon, lat))


def test_expand_bbox_is_tight_at_city_scale() -> None:
    box = geo.bbox(point(*CITY_HALL))
    expanded = geo.expand_bbox_m(box, 1000.0)
    # Due north/east at exactly 1000 m land on (within a millimetre of) the box edges.
    north = _destination(*CITY_HALL, 0.0, 1000.0)
    assert expanded[3] == pytest.approx(north[1], abs=1e-8)
    widest = math.degrees(
        math.asin(math.sin(1000.0 / geo.EARTH_MEAN_RADIUS_M) / math.cos(math.radians(36.6953)))
    )
    assert expanded[2] - CITY_HALL[0] == pytest.approx(widest, rel=1e-6)
    # Longitude grows more than latitude at 36.7 degrees north (1 / cos(lat) ~ 1.25).
    assert (expanded[2] - expanded[0]) / (expanded[3] - expanded[1]) == pytest.approx(
        1 / math.cos(math.radians(36.6953)), rel=1e-3
    )


def test_expand_bbox_zero_distance_keeps_box() -> None:
    box = (137.2, 36.6, 137.3, 36.7)
    assert geo.expand_bbox_m(box, 0.0) == pytest.approx(box, abs=1e-8)


def test_expand_bbox_reaching_a_pole_spans_all_longitudes() -> None:
    min_lon, min_lat, max_lon, max_lat = geo.expand_bbox_m((10.0, 89.9, 10.0, 89.9), 20_000.0)
    assert (min_lon, max_lon, max_lat) == (-180.0, 180.0, 90.0)
    assert min_lat == pytest.approx(89.9 - math.degrees(20_000.0 / geo.EARTH_MEAN_RADIUS_M))


def test_expand_bbox_crossing_antimeridian_spans_all_longitudes() -> None:
    expanded = geo.expand_bbox_m((179.99, 0.0, 179.99, 0.0), 5_000.0)
    assert (expanded[0], expanded[2]) == (-180.0, 180.0)
    assert -0.05 < expanded[1] < 0.0 < expanded[3] < 0.05


@pytest.mark.parametrize("distance", [-1.0, math.nan, math.inf])
def test_expand_bbox_rejects_bad_distance(distance: float) -> None:
    with pytest.raises(ValueError, match="distance"):
        geo.expand_bbox_m((0.0, 0.0, 1.0, 1.0), distance)


# --------------------------------------------------------------------------- CRS transforms


def test_city_hall_to_plane_rectangular_zone_vii_and_back() -> None:
    projected = geo.transform_coordinates(
        point(*CITY_HALL), geo.EPSG_JGD2011, geo.EPSG_JGD2011_ZONE_VII
    )
    easting, northing = projected["coordinates"]
    # Zone VII origin is 36°N 137°10'E: the hall is ~4.0 km east and ~77.1 km north of
    # it (0.0446° × 89.3 km and 0.6953° × 111.0 km, scale 0.9999). Easting comes first.
    assert easting == pytest.approx(3988.3, abs=20.0)
    assert northing == pytest.approx(77147.5, abs=20.0)
    back = geo.transform_coordinates(projected, geo.EPSG_JGD2011_ZONE_VII, geo.EPSG_JGD2011)
    assert back["type"] == "Point"
    assert back["coordinates"] == pytest.approx(list(CITY_HALL), abs=1e-9)


def test_transform_keeps_structure_and_height() -> None:
    value = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "LineString", "coordinates": [[*CITY_HALL, 12.5], list(STATION)]},
            {"type": "Polygon", "coordinates": DOWNTOWN},
        ],
        "bbox": [0, 0, 0, 0],
    }
    projected = geo.transform_coordinates(value, geo.CRS84, geo.EPSG_JGD2011_ZONE_VII)
    assert "bbox" not in projected
    line, polygon = projected["geometries"]
    assert line["type"] == "LineString"
    assert len(line["coordinates"][0]) == 3 and line["coordinates"][0][2] == 12.5
    assert len(line["coordinates"][1]) == 2
    ring = polygon["coordinates"][0]
    assert len(ring) == 5 and ring[0] == ring[-1]
    # The station is north-east of the hall in the plane too.
    assert line["coordinates"][1][0] > line["coordinates"][0][0]
    assert line["coordinates"][1][1] > line["coordinates"][0][1]


def test_transform_accepts_ogc_crs_uris() -> None:
    by_uri = geo.transform_coordinates(
        point(*CITY_HALL),
        "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
        "http://www.opengis.net/def/crs/EPSG/0/6675",
    )
    by_code = geo.transform_coordinates(point(*CITY_HALL), geo.CRS84, geo.EPSG_JGD2011_ZONE_VII)
    assert by_uri["coordinates"] == pytest.approx(by_code["coordinates"], abs=1e-6)


def test_transform_unknown_crs_is_bad_request_data() -> None:
    with pytest.raises(BadRequestData, match="CRS"):
        geo.transform_coordinates(point(*CITY_HALL), "EPSG:999999", geo.EPSG_JGD2011)
