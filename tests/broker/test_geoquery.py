"""Tests for NGSI-LD geo-queries (ETSI GS CIM 009 v1.8 §4.10) in cityos.broker.geoquery."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityos.broker import geoquery
from cityos.broker.geoquery import GeoQuery, parse_geo_query
from cityos.core import geo
from cityos.core.errors import BadRequestData

CITY_HALL = [137.2113, 36.6953]  # Toyama City Hall (lon, lat)
STATION = [137.2137, 36.7013]  # Toyama Station, ~700 m north-north-east
TAKAOKA = [137.0227, 36.7545]  # Takaoka Station, ~18 km west
AIRPORT = [137.1878, 36.6483]  # Toyama Airport, ~5.6 km south-west

DOWNTOWN = [[[137.20, 36.69], [137.22, 36.69], [137.22, 36.71], [137.20, 36.71], [137.20, 36.69]]]
# The same square, starting from another corner and wound the other way.
DOWNTOWN_REORDERED = [
    [[137.22, 36.71], [137.22, 36.69], [137.20, 36.69], [137.20, 36.71], [137.22, 36.71]]
]
# Overlaps DOWNTOWN's east half.
EAST_SQUARE = [
    [[137.21, 36.69], [137.23, 36.69], [137.23, 36.71], [137.21, 36.71], [137.21, 36.69]]
]
# Inside DOWNTOWN, around the city hall.
HALL_BLOCK = [
    [[137.210, 36.694], [137.213, 36.694], [137.213, 36.697], [137.210, 36.697], [137.210, 36.694]]
]
AIRPORT_BLOCK = [
    [[137.18, 36.64], [137.20, 36.64], [137.20, 36.66], [137.18, 36.66], [137.18, 36.64]]
]
# East-west street crossing downtown at 36.70.
STREET = [[137.19, 36.70], [137.23, 36.70]]


def point(coordinates: list[float]) -> dict[str, Any]:
    return {"type": "Point", "coordinates": coordinates}


def geometry(kind: str, coordinates: Any) -> dict[str, Any]:
    return {"type": kind, "coordinates": coordinates}


def query(georel: str, kind: str, coordinates: Any, geoproperty: str | None = None) -> GeoQuery:
    parsed = parse_geo_query(georel, kind, json.dumps(coordinates), geoproperty)
    assert parsed is not None
    return parsed


HALL_TO_STATION = geo.haversine_m(*CITY_HALL, *STATION)


BOWTIE = "[[[137.2,36.69],[137.22,36.71],[137.22,36.69],[137.2,36.71],[137.2,36.69]]]"


@pytest.mark.parametrize(
    ("georel", "entity", "expected"),
    [
        ("within", {"type": "Point", "coordinates": [137.219, 36.7]}, True),
        ("within", {"type": "Point", "coordinates": [137.21, 36.708]}, False),
        ("equals", {"type": "Polygon", "coordinates": json.loads(BOWTIE)}, True),
    ],
)
def test_self_intersecting_polygon_is_its_enclosed_area(
    georel: str, entity: dict[str, Any], expected: bool
) -> None:
    query = parse_geo_query(georel, "Polygon", BOWTIE)
    assert query is not None
    assert query.matches(entity) is expected


def test_toyama_reference_distance() -> None:
    assert 690.0 < HALL_TO_STATION < 710.0


# --------------------------------------------------------------------------- parsing


def test_no_geo_parameters_is_no_query() -> None:
    assert parse_geo_query(None, None, None, None) is None
    # A lone geoproperty has nothing to apply to; it is ignored.
    assert parse_geo_query(None, None, None, "observationSpace") is None


@pytest.mark.parametrize(
    ("georel", "kind", "coordinates", "missing"),
    [
        ("within", "Polygon", None, "coordinates"),
        ("within", None, "[1, 2]", "geometry"),
        (None, "Point", "[1, 2]", "georel"),
        ("near;maxDistance==10", None, None, "geometry, coordinates"),
        (None, None, "[1, 2]", "georel, geometry"),
    ],
)
def test_partial_geo_query_is_bad_request_data(
    georel: str | None, kind: str | None, coordinates: str | None, missing: str
) -> None:
    with pytest.raises(BadRequestData, match=f"missing: {missing}$"):
        parse_geo_query(georel, kind, coordinates, None)


def test_defaults_and_echo() -> None:
    parsed = query("near;maxDistance==2000", "Point", CITY_HALL)
    assert parsed.geoproperty == "location"
    assert parsed.georel == "near"
    assert parsed.max_distance == 2000.0 and parsed.min_distance is None
    assert parsed.to_dict() == {
        "georel": "near;maxDistance==2000",
        "geometry": "Point",
        "coordinates": CITY_HALL,
        "geoproperty": "location",
    }
    custom = query("within", "Polygon", DOWNTOWN, "observationSpace")
    assert custom.geoproperty == "observationSpace"
    assert custom.to_dict()["coordinates"] == DOWNTOWN


def test_both_distances_in_either_order_and_canonical_text() -> None:
    a = query("near;minDistance==100.5;maxDistance==2000", "Point", CITY_HALL)
    b = query("near;maxDistance==2000;minDistance==100.5", "Point", CITY_HALL)
    for parsed in (a, b):
        assert (parsed.max_distance, parsed.min_distance) == (2000.0, 100.5)
        assert parsed.georel_text == "near;maxDistance==2000;minDistance==100.5"


def test_coordinates_from_post_body_list_equal_text() -> None:
    from_list = parse_geo_query("within", "Polygon", DOWNTOWN, None)
    from_text = parse_geo_query("within", "Polygon", json.dumps(DOWNTOWN), None)
    assert from_list is not None and from_text is not None
    assert from_list.to_dict() == from_text.to_dict()


BAD_QUERIES: dict[str, tuple[Any, Any, Any, Any, str]] = {
    "unknown-georel": ("nearby", "Point", "[137.2, 36.7]", None, "georel"),
    "georel-case": ("Within", "Polygon", json.dumps(DOWNTOWN), None, "georel"),
    "empty-georel": ("", "Point", "[137.2, 36.7]", None, "georel"),
    "near-without-distance": ("near", "Point", "[137.2, 36.7]", None, "maxDistance"),
    "max-not-number": ("near;maxDistance==far", "Point", "[137.2, 36.7]", None, "number"),
    "max-empty": ("near;maxDistance==", "Point", "[137.2, 36.7]", None, "number"),
    "max-negative": ("near;maxDistance==-5", "Point", "[137.2, 36.7]", None, ">= 0"),
    "min-negative": ("near;minDistance==-0.1", "Point", "[137.2, 36.7]", None, ">= 0"),
    "max-nan": ("near;maxDistance==nan", "Point", "[137.2, 36.7]", None, ">= 0"),
    "max-infinite": ("near;maxDistance==inf", "Point", "[137.2, 36.7]", None, ">= 0"),
    "single-equals": ("near;maxDistance=100", "Point", "[137.2, 36.7]", None, "maxDistance"),
    "ngsiv2-colon": ("near;maxDistance:100", "Point", "[137.2, 36.7]", None, "maxDistance"),
    "unknown-modifier": ("near;radius==100", "Point", "[137.2, 36.7]", None, "radius"),
    "duplicate-modifier": (
        "near;maxDistance==1;maxDistance==2",
        "Point",
        "[137.2, 36.7]",
        None,
        "twice",
    ),
    "min-above-max": (
        "near;maxDistance==10;minDistance==20",
        "Point",
        "[137.2, 36.7]",
        None,
        "exceeds",
    ),
    "distance-on-within": ("within;maxDistance==5", "Polygon", DOWNTOWN, None, "modifiers"),
    "unknown-geometry": ("within", "Circle", "[137.2, 36.7]", None, "geometry"),
    "geometry-case": ("within", "point", "[137.2, 36.7]", None, "geometry"),
    "collection": ("intersects", "GeometryCollection", "[]", None, "geometry"),
    "bad-json": ("within", "Point", "[137.2, 36.7", None, "JSON"),
    "json-object": ("within", "Point", '{"lon": 137.2}', None, "array"),
    "json-number": ("within", "Point", "137.2", None, "array"),
    "strings-in-list": ("within", "Point", '["137.2", "36.7"]', None, "numbers"),
    "strings-in-post-list": ("within", "Point", ["137.2", "36.7"], None, "numbers"),
    "latitude-95": ("near;maxDistance==10", "Point", "[137.2, 95]", None, "latitude"),
    "point-shape-mismatch": ("within", "Point", "[[137.2, 36.7]]", None, "position"),
    "polygon-shape-mismatch": ("within", "Polygon", "[137.2, 36.7]", None, "Polygon"),
    "unclosed-ring": (
        "within",
        "Polygon",
        "[[[137.2,36.69],[137.22,36.69],[137.22,36.71],[137.2,36.71]]]",
        None,
        "not closed",
    ),
    "short-line": ("intersects", "LineString", "[[137.2, 36.7]]", None, "at least 2"),
    "empty-geoproperty": ("within", "Polygon", DOWNTOWN, "", "geoproperty"),
    "coordinates-wrong-type": ("within", "Point", 137.2, None, "coordinates"),
    "georel-wrong-type": (5, "Point", "[137.2, 36.7]", None, "georel"),
}


@pytest.mark.parametrize(
    ("georel", "kind", "coordinates", "geoproperty", "fragment"),
    BAD_QUERIES.values(),
    ids=BAD_QUERIES.keys(),
)
def test_bad_geo_query_is_bad_request_data(
    georel: Any, kind: Any, coordinates: Any, geoproperty: Any, fragment: str
) -> None:
    with pytest.raises(BadRequestData) as caught:
        parse_geo_query(georel, kind, coordinates, geoproperty)
    assert fragment in caught.value.detail


@settings(max_examples=300, deadline=None)
@given(
    georel=st.one_of(
        st.text(max_size=40),
        st.sampled_from(geoquery.GEORELS).map(lambda name: f"{name};maxDistance==1"),
        st.just("near;maxDistance==1000"),
    ),
    kind=st.sampled_from([*geoquery.QUERY_GEOMETRY_TYPES, "Foo", ""]),
    coordinates=st.one_of(
        st.text(max_size=40),
        st.recursive(
            st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.booleans(), st.none()),
            lambda children: st.lists(children, max_size=5),
            max_leaves=20,
        ).map(json.dumps),
    ),
)
def test_arbitrary_input_gives_query_or_bad_request_data(
    georel: str, kind: str, coordinates: str
) -> None:
    try:
        parsed = parse_geo_query(georel, kind, coordinates, None)
    except BadRequestData:
        return
    assert isinstance(parsed, GeoQuery)


# --------------------------------------------------------------------------- near


@pytest.mark.parametrize(
    ("georel", "entity", "expected"),
    [
        ("near;maxDistance==1000", point(STATION), True),
        ("near;maxDistance==500", point(STATION), False),
        ("near;minDistance==500", point(STATION), True),
        ("near;minDistance==1000", point(STATION), False),
        ("near;maxDistance==1000;minDistance==500", point(STATION), True),
        ("near;maxDistance==1000;minDistance==800", point(STATION), False),
        ("near;maxDistance==0", point(CITY_HALL), True),
        ("near;maxDistance==20000", point(TAKAOKA), True),
        ("near;maxDistance==10000", point(TAKAOKA), False),
        # Polygon entity containing the query point: distance 0.
        ("near;maxDistance==1", geometry("Polygon", DOWNTOWN), True),
        ("near;minDistance==1", geometry("Polygon", DOWNTOWN), False),
        # Street passes ~523 m north of the hall (0.0047° of latitude).
        ("near;maxDistance==530", geometry("LineString", STREET), True),
        ("near;maxDistance==515", geometry("LineString", STREET), False),
        # MultiPoint entity: nearest member counts.
        ("near;maxDistance==1000", geometry("MultiPoint", [TAKAOKA, STATION]), True),
        ("near;maxDistance==1000", geometry("MultiPoint", [TAKAOKA, AIRPORT]), False),
        ("near;maxDistance==6000", geometry("MultiPolygon", [AIRPORT_BLOCK]), True),
        ("near;maxDistance==2000", geometry("MultiPolygon", [AIRPORT_BLOCK]), False),
    ],
)
def test_near_point_query(georel: str, entity: dict[str, Any], expected: bool) -> None:
    assert query(georel, "Point", CITY_HALL).matches(entity) is expected


def test_near_boundary_is_inclusive() -> None:
    exact = query("near;maxDistance==1", "Point", CITY_HALL).distance_to(point(STATION))
    assert exact == HALL_TO_STATION
    station = point(STATION)
    assert query(f"near;maxDistance=={exact!r}", "Point", CITY_HALL).matches(station)
    assert not query(f"near;maxDistance=={exact - 0.01!r}", "Point", CITY_HALL).matches(station)
    assert query(f"near;minDistance=={exact!r}", "Point", CITY_HALL).matches(station)
    assert not query(f"near;minDistance=={exact + 0.01!r}", "Point", CITY_HALL).matches(station)


@pytest.mark.parametrize(
    ("kind", "coordinates", "entity", "max_distance", "expected"),
    [
        # Line query (a street): the hall is ~523 m south of it.
        ("LineString", STREET, point(CITY_HALL), 530, True),
        ("LineString", STREET, point(CITY_HALL), 515, False),
        ("MultiLineString", [STREET, [TAKAOKA, [137.03, 36.76]]], point(CITY_HALL), 530, True),
        ("MultiPoint", [TAKAOKA, STATION], point(CITY_HALL), 710, True),
        ("MultiPoint", [TAKAOKA, AIRPORT], point(CITY_HALL), 710, False),
        # Polygon query: points inside are at distance 0.
        ("Polygon", DOWNTOWN, point(STATION), 0, True),
        ("Polygon", DOWNTOWN, point(AIRPORT), 3000, False),
        ("MultiPolygon", [AIRPORT_BLOCK, HALL_BLOCK], point(AIRPORT), 0, True),
        ("Polygon", AIRPORT_BLOCK, geometry("Polygon", HALL_BLOCK), 4500, True),
        ("Polygon", AIRPORT_BLOCK, geometry("Polygon", HALL_BLOCK), 3500, False),
    ],
)
def test_near_non_point_query(
    kind: str, coordinates: Any, entity: dict[str, Any], max_distance: float, expected: bool
) -> None:
    parsed = query(f"near;maxDistance=={max_distance}", kind, coordinates)
    assert parsed.matches(entity) is expected


def test_distance_to_orders_results() -> None:
    parsed = query("near;minDistance==0", "Point", CITY_HALL)
    entities = [point(TAKAOKA), point(STATION), point(AIRPORT), geometry("Polygon", DOWNTOWN)]
    ordered = sorted(entities, key=parsed.distance_to)
    assert ordered == [
        geometry("Polygon", DOWNTOWN),
        point(STATION),
        point(AIRPORT),
        point(TAKAOKA),
    ]
    assert parsed.distance_to(point(TAKAOKA)) == pytest.approx(17_900, rel=0.02)


# --------------------------------------------------------------------------- predicates

HALL_INSIDE = point(CITY_HALL)
ON_EDGE = point([137.20, 36.70])
OUTSIDE = point(TAKAOKA)

PREDICATE_CASES: list[tuple[str, str, Any, dict[str, Any], bool]] = [
    # within: entity within query geometry.
    ("within", "Polygon", DOWNTOWN, HALL_INSIDE, True),
    ("within", "Polygon", DOWNTOWN, ON_EDGE, False),  # boundary is not interior
    ("within", "Polygon", DOWNTOWN, OUTSIDE, False),
    ("within", "Polygon", DOWNTOWN, geometry("Polygon", HALL_BLOCK), True),
    ("within", "Polygon", DOWNTOWN, geometry("Polygon", DOWNTOWN), True),
    ("within", "Polygon", DOWNTOWN, geometry("Polygon", EAST_SQUARE), False),
    ("within", "Polygon", DOWNTOWN, geometry("LineString", STREET), False),  # sticks out
    ("within", "Polygon", DOWNTOWN, geometry("LineString", [CITY_HALL, STATION]), True),
    ("within", "Polygon", DOWNTOWN, geometry("MultiPoint", [CITY_HALL, STATION]), True),
    ("within", "Polygon", DOWNTOWN, geometry("MultiPoint", [CITY_HALL, TAKAOKA]), False),
    ("within", "MultiPolygon", [AIRPORT_BLOCK, HALL_BLOCK], HALL_INSIDE, True),
    ("within", "MultiPolygon", [AIRPORT_BLOCK, HALL_BLOCK], point(STATION), False),
    ("within", "LineString", STREET, point([137.21, 36.70]), True),
    ("within", "LineString", STREET, point(STREET[0]), False),  # endpoint = boundary
    ("within", "Point", CITY_HALL, HALL_INSIDE, True),
    # contains: entity contains query geometry.
    ("contains", "Point", CITY_HALL, geometry("Polygon", DOWNTOWN), True),
    ("contains", "Point", TAKAOKA, geometry("Polygon", DOWNTOWN), False),
    ("contains", "Point", CITY_HALL, HALL_INSIDE, True),
    ("contains", "Polygon", HALL_BLOCK, geometry("Polygon", DOWNTOWN), True),
    ("contains", "Polygon", DOWNTOWN, geometry("Polygon", HALL_BLOCK), False),
    ("contains", "Polygon", DOWNTOWN, HALL_INSIDE, False),
    ("contains", "LineString", [CITY_HALL, STATION], geometry("Polygon", DOWNTOWN), True),
    ("contains", "Point", CITY_HALL, geometry("MultiPolygon", [AIRPORT_BLOCK, HALL_BLOCK]), True),
    # intersects: any shared point, boundaries included.
    ("intersects", "Polygon", DOWNTOWN, HALL_INSIDE, True),
    ("intersects", "Polygon", DOWNTOWN, ON_EDGE, True),
    ("intersects", "Polygon", DOWNTOWN, OUTSIDE, False),
    ("intersects", "LineString", STREET, geometry("Polygon", DOWNTOWN), True),
    ("intersects", "LineString", STREET, geometry("Polygon", AIRPORT_BLOCK), False),
    ("intersects", "Polygon", DOWNTOWN, geometry("MultiLineString", [STREET]), True),
    ("intersects", "MultiPoint", [TAKAOKA, STATION], geometry("Polygon", DOWNTOWN), True),
    # disjoint: no shared point at all.
    ("disjoint", "Polygon", DOWNTOWN, OUTSIDE, True),
    ("disjoint", "Polygon", DOWNTOWN, HALL_INSIDE, False),
    ("disjoint", "Polygon", DOWNTOWN, ON_EDGE, False),
    ("disjoint", "Polygon", DOWNTOWN, geometry("Polygon", AIRPORT_BLOCK), True),
    ("disjoint", "Polygon", DOWNTOWN, geometry("LineString", STREET), False),
    # equals: topological equality (vertex order and winding do not matter).
    ("equals", "Polygon", DOWNTOWN, geometry("Polygon", DOWNTOWN_REORDERED), True),
    ("equals", "Polygon", DOWNTOWN, geometry("Polygon", EAST_SQUARE), False),
    ("equals", "Point", CITY_HALL, HALL_INSIDE, True),
    ("equals", "Point", CITY_HALL, point(STATION), False),
    (
        "equals",
        "MultiPoint",
        [CITY_HALL, STATION],
        geometry("MultiPoint", [STATION, CITY_HALL]),
        True,
    ),
    # overlaps: same dimension, interiors meet, neither contains the other.
    ("overlaps", "Polygon", DOWNTOWN, geometry("Polygon", EAST_SQUARE), True),
    ("overlaps", "Polygon", DOWNTOWN, geometry("Polygon", HALL_BLOCK), False),
    ("overlaps", "Polygon", DOWNTOWN, geometry("Polygon", DOWNTOWN), False),
    ("overlaps", "Polygon", DOWNTOWN, geometry("LineString", STREET), False),  # 1-D vs 2-D
    ("overlaps", "Polygon", DOWNTOWN, HALL_INSIDE, False),
    (
        "overlaps",
        "LineString",
        STREET,
        geometry("LineString", [[137.22, 36.70], [137.25, 36.70]]),
        True,
    ),
]


@pytest.mark.parametrize(
    ("georel", "kind", "coordinates", "entity", "expected"),
    PREDICATE_CASES,
    ids=[f"{c[0]}-{c[1]}-{c[3]['type']}-{i}" for i, c in enumerate(PREDICATE_CASES)],
)
def test_predicates(
    georel: str, kind: str, coordinates: Any, entity: dict[str, Any], expected: bool
) -> None:
    assert query(georel, kind, coordinates).matches(entity) is expected


def test_point_fast_paths_build_no_entity_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    near = query("near;maxDistance==1000", "Point", CITY_HALL)
    within = query("within", "Polygon", DOWNTOWN)
    intersects = query("intersects", "Polygon", DOWNTOWN)
    disjoint = query("disjoint", "Polygon", DOWNTOWN)

    def forbidden(_value: object) -> None:
        raise AssertionError("entity shape built")

    monkeypatch.setattr(geoquery, "_entity_shape", forbidden)
    monkeypatch.setattr(geoquery, "to_shape", forbidden)
    assert near.matches(point(STATION))
    assert within.matches(point(STATION))
    assert intersects.matches(ON_EDGE)
    assert disjoint.matches(OUTSIDE)


def test_query_shape_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    real = geo.to_shape

    def counting(value: Any) -> Any:
        built.append(value)
        return real(value)

    monkeypatch.setattr(geoquery, "to_shape", counting)
    parsed = query("intersects", "Polygon", DOWNTOWN)
    assert len(built) == 1
    for _ in range(5):
        parsed.matches(geometry("Polygon", HALL_BLOCK))
    assert len(built) == 6  # one per entity, none more for the query


@pytest.mark.parametrize("georel", [*geoquery.GEORELS[1:], "near;maxDistance==1000000"])
@pytest.mark.parametrize(
    "junk",
    [
        None,
        "POINT(137 36)",
        {},
        {"type": "Point"},
        {"type": "Point", "coordinates": ["a", "b"]},
        {"type": "Polygon", "coordinates": "nope"},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]},
        {"type": "Circle", "coordinates": [1, 2]},
        {"type": 7},
    ],
)
def test_unusable_entity_geometry_never_matches(georel: str, junk: object) -> None:
    parsed = query(georel, "Polygon", DOWNTOWN)
    assert parsed.matches(junk) is False
    assert parsed.distance_to(junk) == math.inf


# --------------------------------------------------------------------------- candidate boxes


def test_candidate_bbox_per_georel() -> None:
    polygon_box = (137.20, 36.69, 137.22, 36.71)
    for georel in ("within", "contains", "intersects", "equals", "overlaps"):
        assert query(georel, "Polygon", DOWNTOWN).candidate_bbox() == pytest.approx(polygon_box)
    assert query("disjoint", "Polygon", DOWNTOWN).candidate_bbox() is None
    assert query("near;minDistance==10", "Point", CITY_HALL).candidate_bbox() is None
    near_box = query("near;maxDistance==1000;minDistance==10", "Point", CITY_HALL).candidate_bbox()
    assert near_box == geo.expand_bbox_m(geo.bbox(point(CITY_HALL)), 1000)
    near_polygon = query("near;maxDistance==500", "Polygon", DOWNTOWN).candidate_bbox()
    assert near_polygon == geo.expand_bbox_m(polygon_box, 500)


@settings(max_examples=300, deadline=None)
@given(
    georel=st.sampled_from(
        ["near;maxDistance==700", "near;maxDistance==3000", "within", "intersects", "contains"]
    ),
    kind=st.sampled_from(["Point", "Polygon", "LineString"]),
    dlon=st.floats(-0.06, 0.06),
    dlat=st.floats(-0.06, 0.06),
    size=st.floats(0.0, 0.01),
)
def test_every_match_intersects_candidate_bbox(
    georel: str, kind: str, dlon: float, dlat: float, size: float
) -> None:
    coordinates = {"Point": CITY_HALL, "Polygon": DOWNTOWN, "LineString": STREET}[kind]
    parsed = query(georel, kind, coordinates)
    lon, lat = CITY_HALL[0] + dlon, CITY_HALL[1] + dlat
    # Entities: a point and a small square around it.
    square = [
        [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    ]
    box = parsed.candidate_bbox()
    assert box is not None
    for entity in (point([lon, lat]), geometry("Polygon", square)):
        if size == 0.0 and entity["type"] == "Polygon":
            continue  # degenerate square: not a polygon
        if parsed.matches(entity):
            assert geo.bboxes_intersect(geo.bbox(entity), box), (entity, box)
