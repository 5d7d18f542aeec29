"""Ordering query results: the NGSI-LD ``orderBy`` parameter.

``orderBy`` is a comma-separated list of keys, each an entity member or an attribute
path with an optional direction: ``id``, ``type;desc``, ``createdAt``, ``name``
(the attribute's value), ``name.createdAt`` (one of its meta-properties),
``name.subProperty`` (a sub-attribute's value), ``name;asc``. Keys apply in order;
entities lacking a key's value come after all that have it, in either direction.
Values of different JSON kinds order as booleans < numbers < strings < others.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cityos.broker.model import StoredEntity, instance_value
from cityos.core.errors import BadRequestData
from cityos.core.jsonio import dumps

_ENTITY_MEMBERS = frozenset({"id", "type", "scope", "createdAt", "modifiedAt"})
_INSTANCE_MEMBERS = frozenset(
    {"value", "object", "createdAt", "modifiedAt", "observedAt", "unitCode", "datasetId", "lang"}
)
_SEGMENT = re.compile(r"[^\s,;.{}()=<>!|\"'\[\]]+")

SortKey = tuple[int, int, Any]


@dataclass(frozen=True)
class OrderKey:
    """One ``orderBy`` key: a member path (attribute names as IRIs once expanded)."""

    path: tuple[str, ...]
    descending: bool = False

    def value_of(self, entity: StoredEntity) -> object:
        """The value this key reads from the entity; ``None`` when it has none."""
        head, rest = self.path[0], self.path[1:]
        if head in _ENTITY_MEMBERS and not rest:
            value = entity.get(head)
            if isinstance(value, list):
                return value[0] if value else None
            return value
        instances = entity.get("attrs", {}).get(head)
        if not instances:
            return None
        instance = next((i for i in instances if "datasetId" not in i), instances[0])
        for segment in rest:
            if segment in _INSTANCE_MEMBERS:
                return instance.get(segment)
            sub = instance.get(segment)
            if not isinstance(sub, dict):
                return None
            instance = sub
        return instance_value(instance)

    def sort_key(self, entity: StoredEntity) -> SortKey:
        """A comparable key for ``entity`` under this key's direction."""
        return _sort_key(self.value_of(entity), self.descending)


@dataclass(frozen=True)
class OrderBy:
    """A parsed ``orderBy``: its keys, most significant first."""

    keys: tuple[OrderKey, ...]

    def expand(self, expand_term: Callable[[str], str]) -> OrderBy:
        """Expand attribute and sub-attribute names to IRIs; member names stay."""
        keys = []
        for key in self.keys:
            head, rest = key.path[0], key.path[1:]
            if not (head in _ENTITY_MEMBERS and not rest):
                head = expand_term(head)
            rest = tuple(s if s in _INSTANCE_MEMBERS else expand_term(s) for s in rest)
            keys.append(OrderKey((head, *rest), key.descending))
        return OrderBy(tuple(keys))

    def sort(self, entities: list[StoredEntity]) -> None:
        """Sort ``entities`` in place (stable: ties keep their previous order)."""
        for key in reversed(self.keys):
            entities.sort(key=key.sort_key, reverse=key.descending)


def _sort_key(value: object, descending: bool) -> SortKey:
    # Missing values go last: "present" sorts first ascending, and stays first when
    # the whole key is reversed for a descending order.
    missing = 0 if descending else 1
    present = 1 - missing
    if value is None:
        return (missing, 0, 0)
    if isinstance(value, bool):
        return (present, 0, int(value))
    if isinstance(value, int | float):
        return (present, 1, float(value))
    if isinstance(value, str):
        return (present, 2, value)
    return (present, 3, dumps(value).decode())


def parse_order_by(text: str) -> OrderBy:
    """Parse ``orderBy``; ``BadRequestData`` for an empty key, path or unknown direction."""
    keys: list[OrderKey] = []
    for part in text.split(","):
        path_text, _, direction = part.partition(";")
        if direction not in ("", "asc", "desc"):
            raise BadRequestData(f"Invalid orderBy {text!r}: direction must be asc or desc")
        segments = path_text.split(".")
        if not all(_SEGMENT.fullmatch(s) for s in segments):
            raise BadRequestData(f"Invalid orderBy {text!r}: bad key {path_text!r}")
        keys.append(OrderKey(tuple(segments), descending=direction == "desc"))
    return OrderBy(tuple(keys))
