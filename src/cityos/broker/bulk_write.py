"""Lean batch writes of observations: what a PATCH with ``observedAt`` does, for many
entities at once (sensor ingestion writes thousands per second).

:class:`ObservationWriter` applies :class:`~cityos.ingest.model.EntityWrite`-shaped
updates (entity id, type, normalized attributes with short names) and produces the same
stored entities and history rows as the NGSI-LD update/append operations would:

- a missing entity is created with the write's type; a type it lacks is added;
- each attribute replaces the instance with the same ``datasetId`` (the default one
  unless given), keeping its ``createdAt``; ``modifiedAt`` is the write time;
- an instance without ``observedAt`` whose value and metadata equal the stored one is
  left alone (no modification, no history row: a ``deviceState`` that stays "ok");
- an observation older than the stored one (a late or replayed uplink) goes to the
  history only and does not overwrite the newer current value.

The batch costs one ``get_many`` and one ``write_many`` on the storage, whatever its
size, and no JSON-LD expansion per message: names are expanded once and remembered.
Writes go through the storage the caller gives (the broker's ``ObservedStorage``), so
subscriptions and live events see them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cityos.broker.changes import EntityChange
from cityos.broker.entities import ExpandTerm, parse_instance
from cityos.broker.model import AttributeInstance, StoredEntity
from cityos.core.timeutil import datetime_ms
from cityos.storage.base import Storage

_PLAIN_KINDS = frozenset({"Property"})
_PLAIN_KEYS = frozenset({"type", "value", "object", "observedAt", "unitCode", "datasetId"})


class HistoryAppender(Protocol):
    """The part of ``TemporalStorage`` that adds history rows without an entity write."""

    def append_history(
        self,
        tenant: str,
        entity_id: str,
        types: list[str],
        rows: list[tuple[str, AttributeInstance]],
    ) -> list[str]: ...


class ObservationUpdate(Protocol):
    """Attributes for one entity (``attributes`` in NGSI-LD normalized form, short names);
    ``cityos.ingest.model.EntityWrite`` is one."""

    @property
    def entity_id(self) -> str: ...

    @property
    def entity_type(self) -> str: ...

    @property
    def attributes(self) -> dict[str, dict[str, Any]]: ...  # Any: JSON attribute members


@dataclass(slots=True)
class WriteOutcome:
    """What a batch did: entities created and updated, late observations kept as history."""

    created: int = 0
    updated: int = 0
    late: int = 0


class ObservationWriter:
    """Writes batches of observations to one tenant (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        history: HistoryAppender,
        expand: ExpandTerm,
        tenant: str = "",
        *,
        cache_size: int = 0,
        changed_elsewhere: Callable[[], bool] | None = None,
    ) -> None:
        """``cache_size`` > 0 keeps that many entities in memory between batches, so a
        sensor's next reading does not read back what its last one wrote. Only valid
        when every write of the database goes through this process's ``ObservedStorage``
        (SQLite) and :meth:`on_changes` is registered as its listener: it keeps the
        cache in step with every other committed write (API requests, health alerts).
        ``changed_elsewhere`` (called in each batch's transaction) tells when another
        process wrote the database after all (a CLI import): the cache is dropped."""
        self.storage = storage
        self.history = history
        self.tenant = tenant
        self._expand = expand
        self._iris: dict[str, str] = {}
        self._cache_size = cache_size
        self._cache: dict[str, StoredEntity] = {}
        self._changed_elsewhere = changed_elsewhere

    def on_changes(self, changes: list[EntityChange]) -> None:
        """``ObservedStorage`` listener: remember committed documents (see ``__init__``)."""
        if not self._cache_size:
            return
        cache = self._cache
        for change in changes:
            if change.tenant != self.tenant:
                continue
            if change.after is None:
                cache.pop(change.entity_id, None)
            else:
                cache[change.entity_id] = change.after
        while len(cache) > self._cache_size:
            del cache[next(iter(cache))]

    def iri(self, term: str) -> str:
        """The expanded name of ``term`` (remembered: the @context does not change)."""
        found = self._iris.get(term)
        if found is None:
            found = self._iris[term] = self._expand(term)
        return found

    def write(self, updates: Iterable[ObservationUpdate], now: str) -> WriteOutcome:
        """Apply ``updates`` in order, in one storage transaction (the caller's, if open).

        Raises ``BadRequestData`` when an attribute is not valid NGSI-LD (only attributes
        other than plain Properties are validated); nothing of the batch is written then.
        """
        updates = list(updates)
        ids = list(dict.fromkeys(update.entity_id for update in updates))
        outcome = WriteOutcome()
        try:
            return self._write(updates, ids, now, outcome)
        except BaseException:
            self._cache.clear()  # it may hold documents of the rolled-back batch
            raise

    def _write(
        self, updates: list[ObservationUpdate], ids: list[str], now: str, outcome: WriteOutcome
    ) -> WriteOutcome:
        with self.storage.transaction():
            if self._cache and self._changed_elsewhere is not None and self._changed_elsewhere():
                self._cache.clear()
            current = {i: self._cache[i] for i in ids if i in self._cache}
            missing = [i for i in ids if i not in current]
            if missing:
                current.update(self.storage.get_many(self.tenant, missing))
            changes: list[tuple[StoredEntity | None, StoredEntity]] = []
            late: list[tuple[str, list[str], list[tuple[str, AttributeInstance]]]] = []
            for update in updates:
                before = current.get(update.entity_id)
                after, late_rows = self._apply(before, update, now)
                if late_rows:
                    late.append((update.entity_id, after["type"], late_rows))
                    outcome.late += len(late_rows)
                if after is before:
                    continue
                changes.append((before, after))
                current[update.entity_id] = after
                if before is None:
                    outcome.created += 1
                else:
                    outcome.updated += 1
            if changes:
                self.storage.write_many(self.tenant, changes)
            for entity_id, types, rows in late:
                self.history.append_history(self.tenant, entity_id, types, rows)
        return outcome

    def _apply(
        self, before: StoredEntity | None, update: ObservationUpdate, now: str
    ) -> tuple[StoredEntity, list[tuple[str, AttributeInstance]]]:
        """The entity after ``update`` (``before`` itself when nothing changed) and the
        late observations that go to history only."""
        type_iri = self.iri(update.entity_type)
        if before is None:
            entity: StoredEntity = {
                "id": update.entity_id,
                "type": [type_iri],
                "createdAt": now,
                "modifiedAt": now,
                "attrs": {},
            }
        else:
            entity = {**before, "attrs": dict(before["attrs"])}
            if type_iri not in entity["type"]:
                entity["type"] = [*entity["type"], type_iri]
        attrs: dict[str, list[AttributeInstance]] = entity["attrs"]
        changed = before is None or entity["type"] is not before["type"]
        late: list[tuple[str, AttributeInstance]] = []
        iris = self._iris
        for name, raw in update.attributes.items():
            iri = iris.get(name) or self.iri(name)
            if raw.keys() <= _PLAIN_KEYS and raw.get("type", "Property") in _PLAIN_KINDS:
                # The sensor case, copied as it is (see _instance), inlined: it runs for
                # every attribute of every uplink.
                instance: AttributeInstance = {"type": "Property", **raw}
                instance["createdAt"] = instance["modifiedAt"] = now
            else:
                instance = self._instance(name, raw, now, update.entity_id)
            existing = attrs.get(iri)
            if not existing:
                attrs[iri] = [instance]
                changed = True
                continue
            dataset_id = instance.get("datasetId")
            position = -1
            for index, old in enumerate(existing):
                if old.get("datasetId") == dataset_id:
                    position = index
                    break
            if position < 0:
                attrs[iri] = [*existing, instance]
                changed = True
                continue
            old = existing[position]
            if "observedAt" not in instance:
                if (
                    instance.get("value") == old.get("value")
                    and instance.get("type") == old.get("type")
                    and instance.get("object") == old.get("object")
                    and instance.get("unitCode") == old.get("unitCode")
                ):
                    continue  # the same value again (a deviceState that stays "ok")
            elif _is_older(instance["observedAt"], old.get("observedAt")):
                late.append((iri, instance))
                continue
            instance["createdAt"] = old.get("createdAt", now)
            if len(existing) == 1:
                attrs[iri] = [instance]
            else:
                replaced = list(existing)
                replaced[position] = instance
                attrs[iri] = replaced
            changed = True
        if not changed:
            return before if before is not None else entity, late
        entity["modifiedAt"] = now
        return entity, late

    def _instance(
        self, name: str, raw: dict[str, Any], now: str, entity_id: str
    ) -> AttributeInstance:  # Any: JSON attribute members
        """The stored instance of a normalized attribute. Plain ones (the sensor case) are
        copied as they are; anything else goes through the broker's full parser."""
        if raw.get("type", "Property") in _PLAIN_KINDS and raw.keys() <= _PLAIN_KEYS:
            instance = dict(raw)
            instance.setdefault("type", "Property")
            instance["createdAt"] = now
            instance["modifiedAt"] = now
            return instance
        return parse_instance(name, raw, self.iri, now, entity_id=entity_id)


def _is_older(new_at: object, old_at: object) -> bool:
    """True when both observation times are texts and ``new_at`` is before ``old_at``."""
    if not isinstance(new_at, str) or not isinstance(old_at, str):
        return False
    if len(new_at) == len(old_at) and new_at.endswith("Z") and old_at.endswith("Z"):
        return new_at < old_at  # same format, UTC: text order is time order
    return datetime_ms(new_at) < datetime_ms(old_at)
