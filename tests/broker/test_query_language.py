"""Tests for the NGSI-LD q language, scopeQ and type selector (``cityos.broker.query_language``).

Entities are written in the stored form with short attribute names; queries are
evaluated unexpanded (identity expansion), except in the expansion tests.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityos.broker.query_language import (
    AttrPath,
    QAnd,
    QComparison,
    QExists,
    QExpression,
    QNotExists,
    QOperator,
    QOr,
    QPattern,
    QRange,
    QValue,
    QValueKind,
    QValueList,
    ScopeAnd,
    ScopeOr,
    ScopePattern,
    TypeAnd,
    TypeName,
    TypeOr,
    parse_q,
    parse_scope_q,
    parse_type_selector,
)
from cityos.core.errors import InvalidRequest


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


def entity(**attrs: Any) -> dict[str, Any]:
    """A stored entity; each keyword is one attribute (an instance or a list of them)."""
    return {
        "id": "urn:ngsi-ld:T:1",
        "type": ["T"],
        "attrs": {k: v if isinstance(v, list) else [v] for k, v in attrs.items()},
    }


def q(text: str, ent: dict[str, Any]) -> bool:
    return parse_q(text).matches(ent)


# ------------------------------------------------------------------ parsing: AST shape


def cmp(name: str, op: str, operand: Any) -> QComparison:
    return QComparison(AttrPath((name,)), QOperator(op), operand)


NUM = QValueKind.NUMBER


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", QExists(AttrPath(("a",)))),
        ("!a", QNotExists(AttrPath(("a",)))),
        ("a==1", cmp("a", "==", QValue(NUM, 1))),
        ("a!=1", cmp("a", "!=", QValue(NUM, 1))),
        ("a>1", cmp("a", ">", QValue(NUM, 1))),
        ("a>=1", cmp("a", ">=", QValue(NUM, 1))),
        ("a<1", cmp("a", "<", QValue(NUM, 1))),
        ("a<=1", cmp("a", "<=", QValue(NUM, 1))),
        ("a~=x.*", cmp("a", "~=", QPattern("x.*"))),
        ("a!~=x.*", cmp("a", "!~=", QPattern("x.*"))),
        ('a~="x|y"', cmp("a", "~=", QPattern("x|y"))),
        ("a~=(x|y);b", QAnd((cmp("a", "~=", QPattern("(x|y)")), QExists(AttrPath(("b",)))))),
        ("a==-1.5e3", cmp("a", "==", QValue(NUM, -1500.0))),
        ("a==0.25", cmp("a", "==", QValue(NUM, 0.25))),
        ("a==2E2", cmp("a", "==", QValue(NUM, 200.0))),
        ('a=="x\\"y\\u00e9"', cmp("a", "==", QValue(QValueKind.STRING, 'x"yé'))),
        ('a=="東京"', cmp("a", "==", QValue(QValueKind.STRING, "東京"))),
        ("a==true", cmp("a", "==", QValue(QValueKind.BOOLEAN, True))),
        ("a==false", cmp("a", "==", QValue(QValueKind.BOOLEAN, False))),
        (
            "a==2017-12-24T12:00:00+01:00",
            cmp("a", "==", QValue(QValueKind.DATETIME, datetime(2017, 12, 24, 11, tzinfo=UTC))),
        ),
        ("a==2017-12-24", cmp("a", "==", QValue(QValueKind.DATE, date(2017, 12, 24)))),
        ("a==12:30:00Z", cmp("a", "==", QValue(QValueKind.TIME, time(12, 30)))),
        ("a==urn:ngsi-ld:X:1", cmp("a", "==", QValue(QValueKind.URI, "urn:ngsi-ld:X:1"))),
        ("a==Male", cmp("a", "==", QValue(QValueKind.URI, "Male"))),
        ("a==1..5", cmp("a", "==", QRange(QValue(NUM, 1), QValue(NUM, 5)))),
        (
            'a!="a".."m"',
            cmp(
                "a",
                "!=",
                QRange(QValue(QValueKind.STRING, "a"), QValue(QValueKind.STRING, "m")),
            ),
        ),
        (
            'a==1,"x",true',
            cmp(
                "a",
                "==",
                QValueList(
                    (
                        QValue(NUM, 1),
                        QValue(QValueKind.STRING, "x"),
                        QValue(QValueKind.BOOLEAN, True),
                    )
                ),
            ),
        ),
        ("a.b.c", QExists(AttrPath(("a", "b", "c")))),
        ("a.observedAt", QExists(AttrPath(("a",), "observedAt"))),
        ("a.b.unitCode", QExists(AttrPath(("a", "b"), "unitCode"))),
        ("a[k]", QExists(AttrPath(("a",), None, ("k",)))),
        ("a[k1][k2]", QExists(AttrPath(("a",), None, ("k1", "k2")))),
        ("a[k1.k2]", QExists(AttrPath(("a",), None, ("k1", "k2")))),
        ("a.b[k]", QExists(AttrPath(("a", "b"), None, ("k",)))),
        ("温度>1", cmp("温度", ">", QValue(NUM, 1))),
    ],
)
def test_parse_shapes(text: str, expected: QExpression) -> None:
    assert parse_q(text) == expected


A, B, C, D = (QExists(AttrPath((n,))) for n in "abcd")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a;b", QAnd((A, B))),
        ("a|b", QOr((A, B))),
        ("a;b;c", QAnd((A, B, C))),
        ("a;b|c", QOr((QAnd((A, B)), C))),
        ("a|b;c", QOr((A, QAnd((B, C))))),
        ("a|b;c|d", QOr((A, QAnd((B, C)), D))),
        ("(a|b);c", QAnd((QOr((A, B)), C))),
        ("a;(b|c)", QAnd((A, QOr((B, C))))),
        ("((a))", A),
        ("(a;b);c", QAnd((QAnd((A, B)), C))),
        ("((a|b);c)|d", QOr((QAnd((QOr((A, B)), C)), D))),
    ],
)
def test_and_binds_tighter_than_or(text: str, expected: QExpression) -> None:
    assert parse_q(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "(",
        ")",
        "a)",
        "(a",
        "((a)",
        "a;",
        ";a",
        "a|",
        "|a",
        "a;;b",
        "a||b",
        "()",
        "a()",
        "a==",
        "a!=",
        "a>",
        "a~=",
        "a=1",
        "a===1",
        "a=>1",
        "a<>1",
        "a 1",
        "a == 1",
        "a==1 ",
        "a==1x",
        "a==1;",
        "a==01",
        "a==1.",
        "a==.5",
        "a==-",
        "a==1e",
        "a==1e999",
        "a==" + "9" * 5000,
        'a=="abc',
        'a=="a\\x"',
        'a=="tab\there"',
        "a==abc def",
        "a>true",
        "a<urn:x:1",
        "a>Male",
        "a>1..2",
        "a<1,2",
        "a==1..",
        "a==1..true",
        'a==1.."x"',
        "a==true..false",
        "a==Male..Zed",
        "a==1,",
        "a==,1",
        "a==2017-12-24T12:00:00",
        "a==2017-13-24T12:00:00Z",
        "a==2017-02-30",
        "a==25:00:00",
        "a==9999-12-31T23:59:59-01:00",
        "a~=(",
        'a~="["',
        "a!~=*x",
        "1a",
        "_a",
        "a.",
        "a..b",
        "a.1",
        "a[",
        "a[]",
        "a[k",
        "a[k.]",
        "a[k].b",
        "a.observedAt.b",
        "a.observedAt[k]",
        "!a==1",
        "!!a",
        "!",
        "!(a)",
        "a!b",
        "a#",
        "(" * 40 + "a" + ")" * 40,
        "a\x00",
    ],
)
def test_syntax_errors_raise_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_q(text)


def test_error_message_names_problem_and_position() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_q("speed>50;brand=Mercedes")
    assert "position 14" in info.value.detail
    assert "operator" in info.value.detail
    with pytest.raises(InvalidRequest) as info:
        parse_q("a~=(x")
    assert "does not compile" in info.value.detail
    assert "position 3" in info.value.detail


# -------------------------------------------------------------------- evaluation


NUMBERS = entity(t=prop(21.5), n=prop(3), s=prop("beta"), b=prop(True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("t", True),
        ("missing", False),
        ("!missing", True),
        ("!t", False),
        ("t==21.5", True),
        ("t==21", False),
        ("n==3", True),
        ("n==3.0", True),
        ("n!=3", False),
        ("n!=4", True),
        ("t>21", True),
        ("t>21.5", False),
        ("t>=21.5", True),
        ("t<22", True),
        ("t<21.5", False),
        ("t<=21.5", True),
        ("t==20..22", True),
        ("t==22..30", False),
        ("t!=22..30", True),
        ("t!=20..22", False),
        ("n==1,2,3", True),
        ("n==1,2", False),
        ("n!=1,2", True),
        ("n!=1,3", False),
        ('s=="beta"', True),
        ('s>"alpha"', True),
        ('s<"alpha"', False),
        ('s=="a".."c"', True),
        ("s~=b.*", True),
        ("s~=et", False),  # full match (4.9 "in L(R)"), not search
        ("s~=.*et.*", True),
        ("s!~=a.*", True),
        ("s!~=b.*", False),
        ("b==true", True),
        ("b==false", False),
        ("b!=false", True),
        # type mismatches: false for ==, ordering and patterns ...
        ('t=="21.5"', False),
        ("b==1", False),  # a boolean is not the number 1
        ("n==true", False),
        ('n>"a"', False),
        ("n~=3", False),
        ("n!~=3", False),
        # ... but != counts a different data type as unequal (4.9)
        ('n!="3"', True),
        ("missing!=1", False),  # != needs the target element
        ("missing!~=x", False),
        ("t>21;n==3", True),
        ("t>21;n==4", False),
        ("t>30|n==3", True),
        ("t>30|n==4", False),
        ("n==4;t>0|s", True),
        ("n==4;(t>0|s)", False),
    ],
)
def test_operators_on_scalars(text: str, expected: bool) -> None:
    assert q(text, NUMBERS) is expected


TIMES = entity(
    seen=prop("2017-12-24T12:00:00.000Z"),
    typed=prop({"@type": "DateTime", "@value": "2017-12-24T13:00:00+01:00"}),
    day=prop("2020-02-29"),
    at=prop("08:15:00Z"),
    temp=prop(5, observedAt="2021-01-01T00:00:00Z", unitCode="CEL"),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seen==2017-12-24T12:00:00Z", True),
        ("seen==2017-12-24T13:00:00+01:00", True),  # same instant, other zone
        ("seen>2017-12-24T12:59:00+01:00", True),
        ("seen<2017-12-24T11:00:00Z", False),
        ('seen=="2017-12-24T12:00:00Z"', False),  # a string compares as text
        ("seen==2017-12-24T00:00:00Z..2017-12-25T00:00:00Z", True),
        ("typed==2017-12-24T12:00:00Z", True),
        ("day==2020-02-29", True),
        ("day>2020-02-28", True),
        ("day<2020-02-29", False),
        ("day==2020-02-29T00:00:00Z", False),
        ("at>08:00:00", True),
        ("at==08:15:00Z", True),
        ("at<08:15:00", False),
        ("temp.observedAt>=2020-12-31T00:00:00Z", True),
        ("temp.observedAt<2020-12-31T00:00:00Z", False),
        ('temp.unitCode=="CEL"', True),
        ("temp.unitCode==CEL", True),
        ("temp.unitCode", True),
        ("temp.datasetId", False),
        ("temp.modifiedAt>2000-01-01T00:00:00Z", False),  # absent meta-property
        ("temp>4;temp.observedAt>2020-01-01T00:00:00Z", True),
    ],
)
def test_dates_times_and_meta_properties(text: str, expected: bool) -> None:
    assert q(text, TIMES) is expected


MULTI = entity(
    speed=[prop(10), prop(90, datasetId="urn:ngsi-ld:Dataset:radar")],
    colors=prop(["blue", "red", "green"]),
    emptyList=prop([]),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("speed>50", True),  # any instance
        ("speed<50", True),
        ("speed>100", False),
        ("speed==90", True),
        ("speed!=10", True),  # the radar instance is != 10
        ("speed!=10,90", False),
        ("speed.datasetId==urn:ngsi-ld:Dataset:radar", True),
        ('colors=="red"', True),
        ('colors=="black"', False),
        ('colors!="red"', False),  # red is included in the array
        ('colors!="black"', True),
        ('colors=="black","green"', True),
        ('colors!="black","green"', False),
        ('colors>"p"', True),  # some element
        ("colors~=gr.*", True),
        ("colors!~=gr.*", False),
        ("colors!~=x.*", True),
        ("emptyList!=1", True),
        ("emptyList==1", False),
        ("emptyList", True),
    ],
)
def test_multiple_instances_and_arrays(text: str, expected: bool) -> None:
    assert q(text, MULTI) is expected


REL = entity(
    isParked={"type": "Relationship", "object": "urn:ngsi-ld:Parking:1"},
    owners={"type": "Relationship", "object": ["urn:ngsi-ld:P:a", "urn:ngsi-ld:P:b"]},
    route={"type": "ListRelationship", "objectList": ["urn:ngsi-ld:S:1", "urn:ngsi-ld:S:2"]},
    providedBy={
        "type": "Relationship",
        "object": "urn:ngsi-ld:Person:Bob",
        "observedAt": "2020-08-01T12:00:00Z",
    },
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("isParked==urn:ngsi-ld:Parking:1", True),
        ('isParked=="urn:ngsi-ld:Parking:1"', True),  # 4.9 example 3
        ("isParked==urn:ngsi-ld:Parking:2", False),
        ("isParked!=urn:ngsi-ld:Parking:2", True),
        ("isParked==urn:ngsi-ld:Parking:2,urn:ngsi-ld:Parking:1", True),
        ('isParked>"urn:a"', False),  # only == and != on relationships
        ("isParked~=urn.*", False),
        ("isParked!~=x.*", False),
        ("owners==urn:ngsi-ld:P:b", True),
        ("owners!=urn:ngsi-ld:P:b", False),
        ("route==urn:ngsi-ld:S:2", True),
        ("route!=urn:ngsi-ld:S:3", True),
        ('route>"a"', False),
        ("providedBy.observedAt>2020-01-01T00:00:00Z", True),  # meta-property: any op
    ],
)
def test_relationships(text: str, expected: bool) -> None:
    assert q(text, REL) is expected


OTHER_KINDS = entity(
    name={"type": "LanguageProperty", "languageMap": {"en": "red", "ja": ["赤", "あか"]}},
    gender={"type": "VocabProperty", "vocab": "https://example.org/Male"},
    tags={"type": "VocabProperty", "vocab": ["https://example.org/a", "https://example.org/b"]},
    readings={"type": "ListProperty", "valueList": [3, 7, 11]},
    raw={"type": "JsonProperty", "json": {"id": "85a6", "value": "Overstay", "n": [1, 2]}},
    address=prop({"city": "Toyama", "geo": {"ward": "Chuo"}, "zip": 9300001}),
    location={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [137.2, 36.7]}},
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name=="red"', True),  # any language
        ('name=="赤"', True),  # array value of one language
        ('name[en]=="red"', True),
        ('name[ja]=="red"', False),
        ('name[ja]=="あか"', True),
        ('name[*]=="あか"', True),
        ('name!="red"', False),
        ('name!="blue"', True),
        ('name[ja]!="red"', True),
        ('name[fr]=="red"', False),  # no such language: no target
        ('name[fr]!="red"', False),
        ("name[en]~=r.d", True),
        ("gender==https://example.org/Male", True),
        ('gender=="https://example.org/Male"', True),
        ("gender==Male", False),  # vocab values compare as given (broker expands)
        ("tags==https://example.org/b", True),
        ("tags!=https://example.org/b", False),
        ("readings==7", True),
        ("readings>10", True),
        ("readings>11", False),
        ("readings==4..6", False),
        ("readings==6..8", True),
        ('raw[value]=="Overstay"', True),
        ('raw[id]=="85a6"', True),
        ("raw[n]==2", True),
        ("raw[missing]", False),
        ("raw", True),
        ('address[city]=="Toyama"', True),
        ('address[geo.ward]=="Chuo"', True),
        ('address[geo][ward]=="Chuo"', True),
        ('address[geo][ward]!="Chuo"', False),
        ("address[geo.missing]", False),
        ("address[city.x]", False),  # walking into a string: no target
        ("address[zip]>9300000", True),
        ("address[*]==9300001", True),
        ('address=="Toyama"', False),  # the whole object is not a string
        ('location[type]=="Point"', True),
        ("location[coordinates]>137", True),
    ],
)
def test_attribute_kinds_and_compound_paths(text: str, expected: bool) -> None:
    assert q(text, OTHER_KINDS) is expected


SUBS = entity(
    sensor=prop(
        40,
        rawdata=prop({"airquality": {"particulate": 40, "PM20": 85}}),
        providedBy={"type": "Relationship", "object": "urn:ngsi-ld:Device:1"},
        calibration=prop(1.5, observedAt="2024-05-01T00:00:00Z", accuracy=prop(0.1)),
    )
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sensor==40", True),
        ("sensor.rawdata[airquality.particulate]==40", True),  # 4.9 example 10
        ("sensor.rawdata[airquality.PM20]>80", True),
        ("sensor.rawdata[airquality.PM10]", False),
        ("sensor.providedBy==urn:ngsi-ld:Device:1", True),
        ("sensor.calibration<2", True),
        ("sensor.calibration.accuracy==0.1", True),
        ("sensor.calibration.accuracy>1", False),
        ("sensor.calibration.observedAt>2024-01-01T00:00:00Z", True),
        ("sensor.missing", False),
        ("!sensor.missing", True),
        ("sensor.calibration.missing.deeper", False),
    ],
)
def test_sub_attributes(text: str, expected: bool) -> None:
    assert q(text, SUBS) is expected


def test_entity_without_attrs_matches_only_negations() -> None:
    empty: dict[str, Any] = {"id": "urn:x:1", "type": ["T"]}
    assert parse_q("!a").matches(empty)
    assert not parse_q("a").matches(empty)
    assert not parse_q("a!=1").matches(empty)


def test_expand_replaces_attribute_and_sub_attribute_names_only() -> None:
    def expand(term: str) -> str:
        return "https://ex.org/" + term

    tree = parse_q("a.b[k.l]==1;(c.observedAt>2020-01-01T00:00:00Z|!d)")
    expanded = tree.expand(expand)
    assert expanded == QAnd(
        (
            QComparison(
                AttrPath(("https://ex.org/a", "https://ex.org/b"), None, ("k", "l")),
                QOperator.EQ,
                QValue(NUM, 1),
            ),
            QOr(
                (
                    QComparison(
                        AttrPath(("https://ex.org/c",), "observedAt"),
                        QOperator.GT,
                        QValue(QValueKind.DATETIME, datetime(2020, 1, 1, tzinfo=UTC)),
                    ),
                    QNotExists(AttrPath(("https://ex.org/d",))),
                )
            ),
        )
    )
    stored = {
        "attrs": {
            "https://ex.org/a": [prop(0, **{"https://ex.org/b": prop({"k": {"l": 1}})})],
            "https://ex.org/c": [prop(0, observedAt="2021-01-01T00:00:00Z")],
        }
    }
    assert expanded.matches(stored)
    assert not tree.matches(stored)  # unexpanded names are not in the stored form
    assert tree == parse_q(str(tree))  # expand returned a new tree; the old one is intact


# ------------------------------------------------------------------------ scopeQ


@pytest.mark.parametrize(
    ("text", "scopes", "expected"),
    [
        ("/Madrid", ["/Madrid"], True),
        ("/Madrid", ["/Madrid/Gardens"], False),
        ("/Madrid", ["/Madri"], False),
        ("/Madrid/#", ["/Madrid"], True),
        ("/Madrid/#", ["/Madrid/Gardens/ParqueNorte"], True),
        ("/Madrid/#", ["/MadridNorte"], False),
        ("/Madrid/+", ["/Madrid/Gardens"], True),
        ("/Madrid/+", ["/Madrid"], False),
        ("/Madrid/+", ["/Madrid/Gardens/ParqueNorte"], False),
        ("/Madrid/+/ParqueNorte", ["/Madrid/Gardens/ParqueNorte"], True),
        ("/+/#", ["/Toyama"], True),
        ("/#", ["/Anything/at/all"], True),
        ("/#", [], False),
        ("/Madrid", [], False),
        ("/Toyama,/Madrid", ["/Madrid"], True),
        ("/Toyama|/Madrid", ["/Madrid"], True),
        ("/Toyama;/Madrid", ["/Madrid"], False),
        ("/Toyama;/Madrid", ["/Toyama", "/Madrid"], True),
        ("(/Toyama|/Kyoto);/Madrid/#", ["/Kyoto", "/Madrid/X"], True),
        ("/Toyama|/Kyoto;/Madrid", ["/Toyama"], True),
        ("/Toyama,/Kyoto;/Madrid", ["/Kyoto"], False),
        ("/富山/中央", ["/富山/中央"], True),
    ],
)
def test_scope_query(text: str, scopes: list[str], expected: bool) -> None:
    assert parse_scope_q(text).matches(scopes) is expected


def test_scope_query_shape_and_render() -> None:
    tree = parse_scope_q("(/a|/b/+),/c/#;/#")
    assert tree == ScopeOr(
        (
            ScopeOr((ScopePattern(("a",), False), ScopePattern(("b", "+"), False))),
            ScopeAnd((ScopePattern(("c",), True), ScopePattern((), True))),
        )
    )
    assert parse_scope_q(tree.render()) == tree


@pytest.mark.parametrize(
    "text",
    ["", "Madrid", "/", "//a", "/a/", "/a//b", "/a/#/b", "/a#", "/a/b+", "/a;", "(/a", "/a)",
     "/a,,/b", "/a /b", "/a/##", "/#/+"],
)  # fmt: skip
def test_scope_query_syntax_errors(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_scope_q(text)


# ------------------------------------------------------------------- type selector


@pytest.mark.parametrize(
    ("text", "types", "expected"),
    [
        ("Building", ["Building"], True),
        ("Building", ["Vehicle"], False),
        ("Building,Vehicle", ["Vehicle"], True),
        ("Building|Vehicle", ["Vehicle"], True),
        ("Building;Vehicle", ["Vehicle"], False),
        ("Building;Vehicle", ["Vehicle", "Building"], True),
        ("(Building|Vehicle);Device", ["Vehicle", "Device"], True),
        ("(Building|Vehicle);Device", ["Vehicle"], False),
        ("Building|Vehicle;Device", ["Building"], True),
        ("https://ex.org/T,ex:U", ["ex:U"], True),
    ],
)
def test_type_selector_matches(text: str, types: list[str], expected: bool) -> None:
    assert parse_type_selector(text).matches(types) is expected


@pytest.mark.parametrize(
    ("text", "simple", "names"),
    [
        ("A", True, {"A"}),
        ("A,B", True, {"A", "B"}),
        ("A|B,C", True, {"A", "B", "C"}),
        ("(A|B),C", True, {"A", "B", "C"}),
        ("A;B", False, {"A", "B"}),
        ("A,(B;C)", False, {"A", "B", "C"}),
    ],
)
def test_type_selector_union_and_names(text: str, simple: bool, names: set[str]) -> None:
    tree = parse_type_selector(text)
    assert tree.is_simple_union() is simple
    assert tree.type_names() == names


def test_type_selector_shape_expand_and_render() -> None:
    tree = parse_type_selector("A,B;(C|D)")
    assert tree == TypeOr(
        (TypeName("A"), TypeAnd((TypeName("B"), TypeOr((TypeName("C"), TypeName("D"))))))
    )
    assert parse_type_selector(tree.render()) == tree
    expanded = tree.expand(lambda t: "https://ex.org/" + t)
    assert expanded.type_names() == {f"https://ex.org/{n}" for n in "ABCD"}
    assert expanded.matches(["https://ex.org/B", "https://ex.org/D"])
    assert not expanded.matches(["B", "D"])


@pytest.mark.parametrize(
    "text", ["", ",", "A,", ",A", "A,,B", "A;", "(A", "A)", "()", "(A))", "A B", 'A"', "A;|B"]
)
def test_type_selector_syntax_errors(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_type_selector(text)


# ------------------------------------------------------------------ property-based


@settings(max_examples=400)
@given(st.text(alphabet=st.sampled_from('ab1.,;|()[]!=<>~"\\:-/#*+eTZ '), max_size=30) | st.text())
def test_parse_q_never_raises_anything_but_invalid_request(text: str) -> None:
    try:
        result = parse_q(text)
    except InvalidRequest:
        return
    assert isinstance(result, QExpression)
    result.matches(NUMBERS)  # and evaluation of whatever parsed does not raise either


@given(st.text(alphabet=st.sampled_from("/ab+#,;|() "), max_size=20))
def test_parse_scope_q_never_raises_anything_but_invalid_request(text: str) -> None:
    with contextlib.suppress(InvalidRequest):
        parse_scope_q(text).matches(["/a/b"])


@given(st.text(alphabet=st.sampled_from("AB:/,;|() "), max_size=20))
def test_parse_type_selector_never_raises_anything_but_invalid_request(text: str) -> None:
    with contextlib.suppress(InvalidRequest):
        parse_type_selector(text).matches(["A"])


names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n not in {"observedAt", "modifiedAt", "createdAt", "unitCode", "datasetId"}
)
keys = st.from_regex(r"[A-Za-z0-9_-]{1,5}", fullmatch=True) | st.just("*")
paths = st.builds(
    AttrPath,
    st.lists(names, min_size=1, max_size=3).map(tuple),
    st.none() | st.sampled_from(["observedAt", "unitCode", "datasetId"]),
    st.just(()),
) | st.builds(
    AttrPath,
    st.lists(names, min_size=1, max_size=3).map(tuple),
    st.none(),
    st.lists(keys, min_size=1, max_size=3).map(tuple),
)
zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
numbers = st.integers(-(10**20), 10**20).map(lambda n: QValue(NUM, n)) | st.floats(
    allow_nan=False, allow_infinity=False
).map(lambda f: QValue(NUM, f))
comparable = st.one_of(
    numbers,
    st.text().map(lambda s: QValue(QValueKind.STRING, s)),
    st.datetimes(
        min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones
    ).map(lambda d: QValue(QValueKind.DATETIME, d.astimezone(UTC))),
    st.dates(min_value=date(1000, 1, 1)).map(lambda d: QValue(QValueKind.DATE, d)),
    st.times().map(lambda t: QValue(QValueKind.TIME, t)),
)
equality_only = st.one_of(
    st.booleans().map(lambda b: QValue(QValueKind.BOOLEAN, b)),
    st.from_regex(r"urn:ngsi-ld:[A-Za-z]{1,5}:[0-9]{1,4}", fullmatch=True).map(
        lambda u: QValue(QValueKind.URI, u)
    ),
    names.filter(lambda n: n not in ("true", "false")).map(lambda t: QValue(QValueKind.URI, t)),
)


@st.composite
def same_kind_range(draw: st.DrawFn) -> QRange:
    low = draw(comparable)
    high = draw(comparable.filter(lambda v: v.kind is low.kind))
    return QRange(low, high)


patterns = st.sampled_from(["a.*", "(?i)park", "x|y", "[;|)]+", '"q"', "\\d{2,3}", "a\\)b"]).map(
    QPattern
)
comparisons = st.one_of(
    st.builds(
        QComparison,
        paths,
        st.sampled_from([QOperator.GT, QOperator.GE, QOperator.LT, QOperator.LE]),
        comparable,
    ),
    st.builds(
        QComparison,
        paths,
        st.sampled_from([QOperator.EQ, QOperator.NE]),
        st.one_of(
            comparable,
            equality_only,
            same_kind_range(),
            st.lists(comparable | equality_only, min_size=2, max_size=4).map(
                lambda vs: QValueList(tuple(vs))
            ),
        ),
    ),
    st.builds(
        QComparison, paths, st.sampled_from([QOperator.MATCH, QOperator.NOT_MATCH]), patterns
    ),
)
leaves = st.one_of(st.builds(QExists, paths), st.builds(QNotExists, paths), comparisons)
expressions = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda ts: QAnd(tuple(ts))),
        st.lists(children, min_size=2, max_size=3).map(lambda ts: QOr(tuple(ts))),
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(expressions)
def test_render_parse_round_trip(tree: QExpression) -> None:
    text = tree.render()
    assert parse_q(text) == tree, text
    assert str(tree) == text


@given(expressions)
def test_evaluation_never_raises(tree: QExpression) -> None:
    for ent in (NUMBERS, TIMES, MULTI, REL, OTHER_KINDS, SUBS):
        assert tree.matches(ent) in (True, False)
