"""Parsing and checking NGSI-LD pick/omit expressions."""

from __future__ import annotations

import pytest

from cityos.broker.projection import (
    Projection,
    check_pick_and_omit,
    omits,
    parse_projection,
    picks,
)
from cityos.core.errors import BadRequestData


def test_nested_expression_parses_to_nested_projections() -> None:
    parsed = parse_projection("id,locatedAt{id,name,isInCountry{id,description}}")
    assert parsed.names() == {"id", "locatedAt"}
    city = parsed.nested("locatedAt")
    assert city is not None
    assert city.names() == {"id", "name", "isInCountry"}
    country = city.nested("isInCountry")
    assert country is not None
    assert country.names() == {"id", "description"}
    assert parsed.nested("id") is None


@pytest.mark.parametrize(
    "text",
    [
        "id;name",
        "id,locatedAt{name",
        "id,locatedAt{{name}",
        "id,,name",
        "id,locatedAt{,name}",
        "id,locatedAt{}",
        "",
        "name,",
        "a}b",
        "name,name",
    ],
)
def test_malformed_expression_is_bad_request_data(text: str) -> None:
    with pytest.raises(BadRequestData):
        parse_projection(text)


def test_expand_keeps_core_members_and_expands_attributes() -> None:
    parsed = parse_projection("id,type,name{description}").expand(lambda n: "urn:x:" + n)
    assert parsed.names() == {"id", "type", "urn:x:name"}
    nested = parsed.nested("urn:x:name")
    assert nested is not None
    assert nested.names() == {"urn:x:description"}


def test_omit_with_nested_expression_keeps_the_member() -> None:
    omit = parse_projection("type,locatedAt{name}")
    assert omits(omit, "type")
    assert not omits(omit, "locatedAt")
    assert not omits(None, "type")


def test_pick_keeps_only_named_members() -> None:
    pick = parse_projection("id,name")
    assert picks(pick, "name")
    assert not picks(pick, "type")
    assert picks(None, "type")


@pytest.mark.parametrize(
    ("pick", "omit"),
    [("name", "name"), ("id,locatedAt{name}", "locatedAt{name}")],
)
def test_same_member_in_pick_and_omit_is_bad_request_data(pick: str, omit: str) -> None:
    with pytest.raises(BadRequestData):
        check_pick_and_omit(parse_projection(pick), parse_projection(omit))


def test_nested_omit_of_a_picked_member_is_allowed() -> None:
    check_pick_and_omit(parse_projection("id,locatedAt{name}"), parse_projection("locatedAt{id}"))
    check_pick_and_omit(Projection({"a": None}), None)
