"""Entity changes as events: a ``Storage`` wrapper that reports every committed write.

Subscriptions, the live event stream and domain rules listen here instead of being
called from each write operation. Listeners run after the commit (never for a
rolled-back write), get the entity before and after, and must be quick: they only
enqueue work. A listener that raises is logged and never fails the write.

A backend may commit a write later, in a group (``cityos.storage.group_commit``): its
changes are then held back until the commit and told on the event loop; changes are
always told in the order the writes were made, so a change committed at once waits
behind an earlier one whose commit is still in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace

from cityos.broker.model import StoredEntity
from cityos.storage.base import AttributeUsage, EntityScan, Storage
from cityos.storage.group_commit import take_last_deferred

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntityChange:
    """One committed write: ``before`` is ``None`` for a creation, ``after`` for a deletion."""

    tenant: str
    entity_id: str
    before: StoredEntity | None
    after: StoredEntity | None


ChangeListener = Callable[[list[EntityChange]], None]


class ObservedStorage:
    """A ``Storage`` that forwards everything to ``inner`` and reports committed writes.

    An update costs nothing extra (the backend returns the document it replaced); a
    delete with listeners reads the previous document first.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.listeners: list[ChangeListener] = []
        self._pending: list[EntityChange] = []
        self._depth = 0
        # Changes not yet told, in write order, with the commit each waits for (None:
        # committed already).
        self._untold: deque[tuple[list[EntityChange], Future[object] | None]] = deque()

    def add_listener(self, listener: ChangeListener) -> None:
        """Register a callback for committed changes."""
        self.listeners.append(listener)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._depth += 1
        try:
            with self.inner.transaction():
                yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._pending.clear()
            raise
        self._depth -= 1
        if self._depth == 0:
            self._flush()

    def _record(self, change: EntityChange) -> None:
        self._pending.append(change)
        if self._depth == 0:
            self._flush()

    def _flush(self) -> None:
        changes, self._pending = self._pending, []
        if not changes:
            return
        # Outside a transaction a change is one write, which may have been deferred.
        commit = take_last_deferred() if self._depth == 0 else None
        self._untold.append((changes, commit))
        if commit is None:
            self._tell_committed()
            return
        loop = asyncio.get_running_loop()
        commit.add_done_callback(lambda _: loop.call_soon_threadsafe(self._tell_committed))

    def _tell_committed(self) -> None:
        """Tell the listeners the changes at the head of the queue whose commit is done;
        a failed commit's changes are dropped."""
        while self._untold:
            changes, commit = self._untold[0]
            if commit is not None:
                if not commit.done():
                    return
                if commit.cancelled() or commit.exception() is not None:
                    self._untold.popleft()
                    continue
                changes = _with_replaced(changes, commit.result())
            self._untold.popleft()
            for listener in self.listeners:
                try:
                    listener(changes)
                except Exception:
                    log.exception("Change listener %r failed", listener)

    def insert(self, tenant: str, entity: StoredEntity) -> None:
        self.inner.insert(tenant, entity)
        if self.listeners:
            self._record(EntityChange(tenant, entity["id"], None, entity))

    def update(self, tenant: str, entity: StoredEntity) -> StoredEntity:
        before = self.inner.update(tenant, entity)
        if self.listeners:
            self._record(EntityChange(tenant, entity["id"], before, entity))
        return before

    def write_many(
        self, tenant: str, changes: list[tuple[StoredEntity | None, StoredEntity]]
    ) -> None:
        with self.transaction():
            self.inner.write_many(tenant, changes)
            if self.listeners:
                for before, after in changes:
                    self._record(EntityChange(tenant, after["id"], before, after))

    def delete(self, tenant: str, entity_id: str) -> bool:
        before = self.inner.get(tenant, entity_id) if self.listeners else None
        deleted = self.inner.delete(tenant, entity_id)
        if deleted and self.listeners:
            self._record(EntityChange(tenant, entity_id, before, None))
        return deleted

    def get(self, tenant: str, entity_id: str) -> StoredEntity | None:
        return self.inner.get(tenant, entity_id)

    def get_many(self, tenant: str, entity_ids: list[str]) -> dict[str, StoredEntity]:
        return self.inner.get_many(tenant, entity_ids)

    def scan(self, tenant: str, scan: EntityScan) -> Iterator[tuple[int, StoredEntity]]:
        return self.inner.scan(tenant, scan)

    def count_all(self, tenant: str) -> int:
        return self.inner.count_all(tenant)

    def attribute_usage(self, tenant: str) -> list[AttributeUsage]:
        return self.inner.attribute_usage(tenant)

    def type_counts(self, tenant: str) -> dict[str, int]:
        return self.inner.type_counts(tenant)

    def tenant_exists(self, tenant: str) -> bool:
        return self.inner.tenant_exists(tenant)

    def list_tenants(self) -> list[str]:
        return self.inner.list_tenants()

    def close(self) -> None:
        self.inner.close()


def _with_replaced(changes: list[EntityChange], replaced: object) -> list[EntityChange]:
    """The changes of a deferred update, with ``before`` the document its commit actually
    replaced (another process may have written the entity in between)."""
    if isinstance(replaced, dict) and len(changes) == 1 and changes[0].before is not None:
        return [replace(changes[0], before=replaced)]
    return changes
