"""In-memory fakes of the state stores (keys, documents, subscriptions + outbox).

They behave like the SQLite stores of one process and keep their data in a
:class:`MemoryState`, which outlives the stores opened on it, as a file outlives its
connections: tests can "restart" by opening new stores on the same state.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cityos.storage.keys import Principal, StoredKey, as_principal, hash_key, key_metadata, new_key
from cityos.storage.subscriptions import DeliveryReport, OutboxRow, SingleProcessCoordination

_Key = tuple[str, str]


@dataclass
class MemoryState:
    """The data of one installation held by the fakes."""

    keys: dict[str, StoredKey] = field(default_factory=dict)
    documents: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    subscriptions: dict[_Key, dict[str, Any]] = field(default_factory=dict)
    outbox: dict[int, OutboxRow] = field(default_factory=dict)
    last_seq: int = 0


class MemoryKeyStore:
    """A :class:`~cityos.storage.keys.KeyStore` in memory."""

    def __init__(self, state: MemoryState) -> None:
        self._state = state

    def create(self, org: str, role: str) -> tuple[str, Principal]:
        key, stored = new_key(org, role)
        self._state.keys[stored.key_id] = stored
        return key, as_principal(stored)

    def revoke(self, key_id: str) -> bool:
        stored = self._state.keys.get(key_id)
        if stored is None:
            return False
        self._state.keys[key_id] = replace(stored, revoked=True)
        return True

    def verify(self, key: str) -> Principal | None:
        digest = hash_key(key)
        for stored in self._state.keys.values():
            if stored.key_hash == digest and not stored.revoked:
                return as_principal(stored)
        return None

    def list_keys(self) -> list[dict[str, object]]:
        return key_metadata(self.export_keys())

    def export_keys(self) -> list[StoredKey]:
        return sorted(self._state.keys.values(), key=lambda k: k.created_at)

    def import_keys(self, keys: list[StoredKey]) -> None:
        self._state.keys.update((k.key_id, k) for k in keys)

    def close(self) -> None:
        """Nothing to release."""


class MemoryDocumentTable:
    """A :class:`~cityos.storage.documents.DocumentTable` in memory."""

    def __init__(self, state: MemoryState, kind: str) -> None:
        self._documents = state.documents.setdefault(kind, {})

    def put(self, key: str, document: dict[str, Any]) -> None:
        self._documents[key] = copy.deepcopy(document)

    def delete(self, key: str) -> None:
        self._documents.pop(key, None)

    def get(self, key: str) -> dict[str, Any] | None:
        document = self._documents.get(key)
        return None if document is None else copy.deepcopy(document)

    def load_all(self) -> list[dict[str, Any]]:
        return [document for _, document in self.items()]

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        return [(key, copy.deepcopy(doc)) for key, doc in self._documents.items()]

    def close(self) -> None:
        """Nothing to release."""


class MemorySubscriptionStore(SingleProcessCoordination):
    """A one-process :class:`~cityos.storage.subscriptions.SubscriptionStore` in memory."""

    shared = False

    def __init__(self, state: MemoryState) -> None:
        self._state = state
        self._first_own_seq = state.last_seq + 1
        self._taken_over = False

    def save(self, tenant: str, sub_id: str, record: dict[str, Any], *, new: bool = False) -> bool:
        if new and (tenant, sub_id) in self._state.subscriptions:
            return False
        self._state.subscriptions[(tenant, sub_id)] = copy.deepcopy(record)
        return True

    def delete(self, tenant: str, sub_id: str) -> None:
        self._state.subscriptions.pop((tenant, sub_id), None)
        for seq, row in list(self._state.outbox.items()):
            if (row.tenant, row.subscription_id) == (tenant, sub_id):
                del self._state.outbox[seq]

    def load(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        record = self._state.subscriptions.get((tenant, sub_id))
        return None if record is None else copy.deepcopy(record)

    def load_all(self) -> list[tuple[str, dict[str, Any]]]:
        return [(key[0], copy.deepcopy(r)) for key, r in self._state.subscriptions.items()]

    def delivery_status(self, tenant: str, sub_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for sub_id in sub_ids:
            record = self._state.subscriptions.get((tenant, sub_id))
            if record is not None:
                found[sub_id] = dict(record.get("delivery") or {})
        return found

    async def changes(self, listening: Callable[[], None] | None = None) -> AsyncIterator[_Key]:
        """Nothing: no other process shares the state."""
        nothing: tuple[_Key, ...] = ()
        for change in nothing:
            yield change

    def enqueue(self, rows: list[tuple[str, str, bytes]]) -> list[int]:
        seqs = []
        for tenant, sub_id, payload in rows:
            self._state.last_seq += 1
            seq = self._state.last_seq
            self._state.outbox[seq] = OutboxRow(seq, tenant, sub_id, payload)
            seqs.append(seq)
        return seqs

    def take_over_outbox(self) -> list[OutboxRow]:
        if self._taken_over:
            return []
        self._taken_over = True
        return [row for row in self.outbox() if row.seq < self._first_own_seq]

    def outbox(self) -> list[OutboxRow]:
        return [self._state.outbox[seq] for seq in sorted(self._state.outbox)]

    def settle(self, seqs: list[int], reports: list[DeliveryReport]) -> None:
        for seq in seqs:
            self._state.outbox.pop(seq, None)
        for report in reports:
            key = (report.tenant, report.subscription_id)
            if key in self._state.subscriptions:
                self._state.subscriptions[key] = copy.deepcopy(report.record)

    def close(self) -> None:
        """Nothing to release."""
