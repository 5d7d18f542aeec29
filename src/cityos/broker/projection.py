"""Entity member projection: the ``pick`` and ``omit`` expressions of NGSI-LD (§4.21).

An expression is a comma-separated list of entity member names (``id``, ``type``,
``scope``, attribute names). A Relationship member may carry a nested expression in
braces, ``locatedAt{id,name}``, which applies to the entity it links to when linked
entities are retrieved (``join``)::

    expression := member ("," member)*
    member     := name ["{" expression "}"]

For ``pick`` a member is kept when named, and its nested expression picks members of
the linked entity. For ``omit`` a bare name drops the member; a name with a nested
expression keeps the member and omits inside the linked entity instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cityos.core.errors import BadRequestData

CORE_MEMBERS = frozenset({"id", "type", "scope", "createdAt", "modifiedAt", "deletedAt"})
"""Member names that are never attribute names, so never expanded with the @context."""

_NAME = re.compile(r"[^\s,{}();=<>!|\"'\[\]]+")


@dataclass(frozen=True)
class Projection:
    """A parsed ``pick`` or ``omit``: member names (IRIs for attributes) with nested projections."""

    members: Mapping[str, Projection | None]

    def names(self) -> frozenset[str]:
        """Every member named at this level."""
        return frozenset(self.members)

    def nested(self, member: str) -> Projection | None:
        """The projection for the entity that ``member`` links to, if one was given."""
        return self.members.get(member)

    def expand(self, expand_term: Callable[[str], str]) -> Projection:
        """The same projection with attribute names expanded to IRIs (core members kept)."""
        return Projection(
            {
                (name if name in CORE_MEMBERS else expand_term(name)): (
                    None if nested is None else nested.expand(expand_term)
                )
                for name, nested in self.members.items()
            }
        )


def picks(pick: Projection | None, member: str) -> bool:
    """True when ``pick`` keeps ``member`` (no pick keeps everything)."""
    return pick is None or member in pick.members


def omits(omit: Projection | None, member: str) -> bool:
    """True when ``omit`` drops ``member`` itself (a nested omit keeps it)."""
    return omit is not None and member in omit.members and omit.members[member] is None


def parse_projection(text: str, *, parameter: str = "pick") -> Projection:
    """Parse a ``pick``/``omit`` expression; ``BadRequestData`` on any syntax error.

    Rejected: empty members (``a,,b``, ``a{,b}``, ``a{}``), characters outside names
    (``a;b``), unbalanced or doubled braces, a member named twice on one level.
    """
    projection, end = _parse_list(text, 0, parameter)
    if end != len(text):
        raise BadRequestData(f"Invalid {parameter} {text!r}: unexpected {text[end]!r} at {end}")
    return projection


def _parse_list(text: str, position: int, parameter: str) -> tuple[Projection, int]:
    members: dict[str, Projection | None] = {}
    while True:
        match = _NAME.match(text, position)
        if match is None:
            found = repr(text[position]) if position < len(text) else "the end"
            raise BadRequestData(
                f"Invalid {parameter} {text!r}: expected a member name at {position}, got {found}"
            )
        name = match.group()
        if name in members:
            raise BadRequestData(f"Invalid {parameter} {text!r}: {name!r} is named twice")
        position = match.end()
        nested: Projection | None = None
        if position < len(text) and text[position] == "{":
            nested, position = _parse_list(text, position + 1, parameter)
            if position >= len(text) or text[position] != "}":
                raise BadRequestData(f"Invalid {parameter} {text!r}: unclosed '{{' after {name!r}")
            position += 1
        members[name] = nested
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        return Projection(members), position


def check_pick_and_omit(pick: Projection | None, omit: Projection | None) -> None:
    """A member may not be both picked and omitted on the same level (400)."""
    if pick is None or omit is None:
        return
    for name, nested_omit in omit.members.items():
        if name not in pick.members:
            continue
        if nested_omit is None:
            raise BadRequestData(f"{name!r} is both in pick and in omit")
        check_pick_and_omit(pick.members[name], nested_omit)
