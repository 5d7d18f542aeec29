"""``rebase_entity``: a write that lost a race re-applies only its own changes."""

from __future__ import annotations

from cityos.broker.model import StoredEntity
from cityos.storage.base import rebase_entity

A, B, C = "https://example.org/a", "https://example.org/b", "https://example.org/c"


def entity(attrs: dict[str, int], **members: object) -> StoredEntity:
    doc: StoredEntity = {"id": "urn:e", "type": ["https://example.org/T"], **members}
    doc["attrs"] = {name: [{"type": "Property", "value": v}] for name, v in attrs.items()}
    return doc


def values(doc: StoredEntity) -> dict[str, int]:
    return {name: instances[0]["value"] for name, instances in doc["attrs"].items()}


def test_changes_to_different_attributes_are_both_kept() -> None:
    base = entity({A: 1, B: 1})
    rebased = rebase_entity(base, entity({A: 2, B: 1}), entity({A: 1, B: 5}))
    assert values(rebased) == {A: 2, B: 5}


def test_the_later_write_wins_on_the_same_attribute() -> None:
    base = entity({A: 1})
    assert values(rebase_entity(base, entity({A: 2}), entity({A: 5}))) == {A: 2}


def test_an_attribute_added_by_the_other_writer_is_kept() -> None:
    base = entity({A: 1})
    rebased = rebase_entity(base, entity({A: 2}), entity({A: 1, C: 7}))
    assert values(rebased) == {A: 2, C: 7}


def test_an_attribute_this_write_deleted_stays_deleted() -> None:
    base = entity({A: 1, B: 1})
    rebased = rebase_entity(base, entity({A: 1}), entity({A: 3, B: 1}))
    assert values(rebased) == {A: 3}


def test_an_attribute_the_other_writer_deleted_stays_deleted_when_untouched_here() -> None:
    base = entity({A: 1, B: 1})
    rebased = rebase_entity(base, entity({A: 2, B: 1}), entity({A: 1}))
    assert values(rebased) == {A: 2}


def test_top_level_members_follow_the_same_rule() -> None:
    base = entity({}, modifiedAt="t0", scope=["/a"])
    mine = entity({}, modifiedAt="t2", scope=["/a"])
    current = entity({}, modifiedAt="t1", scope=["/b"])
    rebased = rebase_entity(base, mine, current)
    assert (rebased["modifiedAt"], rebased["scope"]) == ("t2", ["/b"])
