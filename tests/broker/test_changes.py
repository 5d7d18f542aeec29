"""Committed writes are reported to listeners once, with before/after; rollbacks are not."""

from __future__ import annotations

import pytest

from cityos.broker.changes import EntityChange, ObservedStorage
from cityos.core.errors import AlreadyExists
from cityos.storage.memory import MemoryStorage


def doc(entity_id: str, level: float) -> dict[str, object]:
    return {"id": entity_id, "type": ["T"], "attrs": {"h": [{"type": "Property", "value": level}]}}


@pytest.fixture
def observed() -> tuple[ObservedStorage, list[EntityChange]]:
    storage = ObservedStorage(MemoryStorage())
    seen: list[EntityChange] = []
    storage.add_listener(seen.extend)
    return storage, seen


def test_create_update_delete_are_reported_with_before_and_after(
    observed: tuple[ObservedStorage, list[EntityChange]],
) -> None:
    storage, seen = observed
    storage.insert("", doc("urn:a", 1.0))
    storage.update("", doc("urn:a", 2.0))
    storage.delete("", "urn:a")
    assert [(c.before is None, c.after is None) for c in seen] == [
        (True, False),
        (False, False),
        (False, True),
    ]
    assert seen[1].before == doc("urn:a", 1.0)
    assert seen[1].after == doc("urn:a", 2.0)


def test_changes_in_a_transaction_arrive_after_commit(
    observed: tuple[ObservedStorage, list[EntityChange]],
) -> None:
    storage, seen = observed
    with storage.transaction():
        storage.insert("", doc("urn:a", 1.0))
        storage.insert("", doc("urn:b", 1.0))
        assert seen == []
    assert [c.entity_id for c in seen] == ["urn:a", "urn:b"]


def test_rolled_back_changes_are_never_reported(
    observed: tuple[ObservedStorage, list[EntityChange]],
) -> None:
    storage, seen = observed
    storage.insert("", doc("urn:a", 1.0))
    seen.clear()
    with pytest.raises(AlreadyExists), storage.transaction():
        storage.insert("", doc("urn:b", 1.0))
        storage.insert("", doc("urn:a", 1.0))
    assert seen == []


def test_a_failing_listener_does_not_fail_the_write(
    observed: tuple[ObservedStorage, list[EntityChange]],
) -> None:
    storage, seen = observed

    def broken(changes: list[EntityChange]) -> None:
        raise RuntimeError("listener bug")

    storage.listeners.insert(0, broken)
    storage.insert("", doc("urn:a", 1.0))
    assert [c.entity_id for c in seen] == ["urn:a"]
