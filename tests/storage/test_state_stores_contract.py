"""Contract of the state stores (API keys, documents, subscriptions + outbox), run against
every implementation: the SQLite files of one process and the shared PostgreSQL tables.

Behaviours only shared stores have (several processes at once) are tested on
PostgreSQL with two stores on one database, as two processes would hold them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cityos.core.errors import BadRequestData
from cityos.storage import postgres
from cityos.storage.keys import StoredKey
from cityos.storage.memory_state import (
    MemoryDocumentTable,
    MemoryKeyStore,
    MemoryState,
    MemorySubscriptionStore,
)
from cityos.storage.state_stores import CONTEXTS_TABLE, StateStores, open_state_stores
from cityos.storage.subscriptions import DeliveryReport
from tests.private_postgres import wait_until

OpenStores = Callable[..., StateStores]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def open_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStores]:
    """Opens the stores of one installation (each call: another process's stores)."""
    if request.param == "memory":
        state = MemoryState()

        def open_memory(lease_s: float = 10.0, key_cache_s: float = 5.0) -> StateStores:
            return StateStores(
                keys=MemoryKeyStore(state),
                contexts=MemoryDocumentTable(state, CONTEXTS_TABLE),
                subscriptions=MemorySubscriptionStore(state),
            )

        yield open_memory
        return
    database: str | None = None
    if request.param == "postgres":
        database = request.getfixturevalue("new_postgres_database")()
        with psycopg.connect(database, autocommit=True) as conn:
            postgres.upgrade_schema(conn)
    opened: list[StateStores] = []

    def open_(lease_s: float = 10.0, key_cache_s: float = 5.0) -> StateStores:
        stores = open_state_stores(
            database, tmp_path / "cityos.sqlite3", lease_s=lease_s, key_cache_s=key_cache_s
        )
        opened.append(stores)
        return stores

    yield open_
    for stores in opened:
        stores.close()


@pytest.fixture
def shared_stores(new_postgres_database: Callable[[], str], tmp_path: Path) -> Iterator[OpenStores]:
    """Opens stores of one PostgreSQL installation, as separate processes would."""
    database = new_postgres_database()
    with psycopg.connect(database, autocommit=True) as conn:
        postgres.upgrade_schema(conn)
    opened: list[StateStores] = []

    def open_(lease_s: float = 10.0) -> StateStores:
        stores = open_state_stores(database, tmp_path / "unused.sqlite3", lease_s=lease_s)
        opened.append(stores)
        return stores

    yield open_
    for stores in opened:
        stores.close()


def record(sub_id: str, modified: str = "2024-01-01T00:00:00.000Z") -> dict[str, object]:
    return {
        "id": sub_id,
        "document": {"type": "Subscription", "entities": [{"type": "T"}]},
        "context": None,
        "createdAt": "2024-01-01T00:00:00.000Z",
        "modifiedAt": modified,
        "delivery": {
            "timesSent": 0,
            "timesFailed": 0,
            "lastNotification": None,
            "lastSuccess": None,
            "lastFailure": None,
            "status": None,
        },
    }


# ---------------------------------------------------------------------------- keys


def test_created_key_verifies_as_its_principal(open_stores: OpenStores) -> None:
    keys = open_stores().keys
    key, principal = keys.create("toyama-city", "operator")
    assert keys.verify(key) == principal
    assert principal.org == "toyama-city" and principal.role == "operator"


def test_unknown_key_does_not_verify(open_stores: OpenStores) -> None:
    assert open_stores().keys.verify("cok_nothing") is None


def test_revoked_key_no_longer_verifies(open_stores: OpenStores) -> None:
    keys = open_stores().keys
    key, principal = keys.create("toyama-city", "admin")
    assert keys.verify(key) is not None
    assert principal.key_id is not None and keys.revoke(principal.key_id)
    assert keys.verify(key) is None


def test_revoking_an_unknown_key_says_so(open_stores: OpenStores) -> None:
    assert open_stores().keys.revoke("nosuchid") is False


@pytest.mark.parametrize(("org", "role"), [("toyama-city", "king"), ("", "admin")])
def test_bad_key_request_is_refused(open_stores: OpenStores, org: str, role: str) -> None:
    with pytest.raises(BadRequestData):
        open_stores().keys.create(org, role)


def test_key_list_shows_metadata_never_the_key(open_stores: OpenStores) -> None:
    keys = open_stores().keys
    key, principal = keys.create("a-org", "company")
    listed = keys.list_keys()
    assert [row["key_id"] for row in listed] == [principal.key_id]
    assert set(listed[0]) == {"key_id", "org", "role", "created_at", "revoked"}
    assert key not in str(listed)


def test_exported_keys_import_into_another_store_and_verify(
    open_stores: OpenStores, tmp_path: Path
) -> None:
    source = open_stores().keys
    key, principal = source.create("a-org", "public")
    exported = source.export_keys()
    assert [k.key_id for k in exported] == [principal.key_id]
    target = open_state_stores(None, tmp_path / "other" / "cityos.sqlite3")
    try:
        target.keys.import_keys(exported)
        assert target.keys.verify(key) == principal
        assert target.keys.export_keys() == exported
    finally:
        target.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_revocation_in_another_process_takes_effect_after_the_cache_time(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    database = None
    if backend == "postgres":
        database = request.getfixturevalue("new_postgres_database")()
        with psycopg.connect(database, autocommit=True) as conn:
            postgres.upgrade_schema(conn)
    first = open_state_stores(database, tmp_path / "cityos.sqlite3")
    second = open_state_stores(database, tmp_path / "cityos.sqlite3", key_cache_s=0.2)
    try:
        key, principal = first.keys.create("a-org", "operator")
        assert second.keys.verify(key) == principal
        assert principal.key_id is not None and first.keys.revoke(principal.key_id)
        assert second.keys.verify(key) == principal  # still the cached answer
        time.sleep(0.3)
        assert second.keys.verify(key) is None
    finally:
        first.close()
        second.close()


def test_imported_key_row_is_kept_as_exported(open_stores: OpenStores) -> None:
    keys = open_stores().keys
    row = StoredKey("abcdefgh", "0" * 64, "org", "admin", "2024-01-01T00:00:00.000Z", True)
    keys.import_keys([row])
    assert keys.export_keys() == [row]


# ----------------------------------------------------------------------- documents


def test_documents_are_put_got_replaced_and_deleted(open_stores: OpenStores) -> None:
    table = open_stores().contexts
    table.put("a", {"n": 1})
    table.put("b", {"n": 2})
    table.put("a", {"n": 3})
    assert table.get("a") == {"n": 3}
    assert table.load_all() == [{"n": 3}, {"n": 2}], "insertion order, replaced in place"
    table.delete("a")
    table.delete("missing")
    assert table.get("a") is None
    assert table.items() == [("b", {"n": 2})]


def test_documents_survive_reopening(open_stores: OpenStores) -> None:
    open_stores().contexts.put("k", {"x": [1, "二"]})
    assert open_stores().contexts.get("k") == {"x": [1, "二"]}


# ------------------------------------------------------------------- subscriptions


def test_subscriptions_load_in_creation_order_per_tenant(open_stores: OpenStores) -> None:
    subs = open_stores().subscriptions
    assert subs.save("", "urn:s:2", record("urn:s:2"), new=True)
    assert subs.save("city", "urn:s:1", record("urn:s:1"), new=True)
    assert [(t, r["id"]) for t, r in subs.load_all()] == [("", "urn:s:2"), ("city", "urn:s:1")]
    assert subs.load("city", "urn:s:1") == record("urn:s:1")
    assert subs.load("", "urn:s:1") is None


def test_creating_a_taken_subscription_id_fails(open_stores: OpenStores) -> None:
    subs = open_stores().subscriptions
    assert subs.save("", "urn:s:1", record("urn:s:1"), new=True)
    assert not subs.save("", "urn:s:1", record("urn:s:1", "2025-01-01T00:00:00.000Z"), new=True)
    assert subs.load("", "urn:s:1") == record("urn:s:1")


def test_saving_replaces_a_subscription(open_stores: OpenStores) -> None:
    subs = open_stores().subscriptions
    subs.save("", "urn:s:1", record("urn:s:1"))
    subs.save("", "urn:s:1", record("urn:s:1", "2025-01-01T00:00:00.000Z"))
    assert subs.load_all() == [("", record("urn:s:1", "2025-01-01T00:00:00.000Z"))]


def test_deleting_a_subscription_deletes_its_outbox(open_stores: OpenStores) -> None:
    subs = open_stores().subscriptions
    subs.save("", "urn:s:1", record("urn:s:1"))
    subs.save("", "urn:s:2", record("urn:s:2"))
    subs.enqueue([("", "urn:s:1", b"{}"), ("", "urn:s:2", b"[]")])
    subs.delete("", "urn:s:1")
    assert subs.load("", "urn:s:1") is None
    assert [row.subscription_id for row in subs.outbox()] == ["urn:s:2"]


def test_enqueued_notifications_are_numbered_in_order(open_stores: OpenStores) -> None:
    subs = open_stores().subscriptions
    first = subs.enqueue([("", "urn:s:1", b"1"), ("t", "urn:s:2", b"2")])
    second = subs.enqueue([("", "urn:s:1", b"3")])
    assert first[0] < first[1] < second[0]
    assert [(r.seq, r.payload) for r in subs.outbox()] == list(
        zip([*first, *second], [b"1", b"2", b"3"], strict=True)
    )


def test_settled_notifications_leave_the_outbox(open_stores: OpenStores) -> None:
    subs = open_stores().subscriptions
    seqs = subs.enqueue([("", "urn:s:1", b"1"), ("", "urn:s:1", b"2")])
    subs.settle([seqs[0]], [])
    assert [row.seq for row in subs.outbox()] == [seqs[1]]


def test_settled_report_becomes_the_delivery_status(open_stores: OpenStores) -> None:
    subs = open_stores().subscriptions
    subs.save("", "urn:s:1", record("urn:s:1"))
    report = DeliveryReport("", "urn:s:1")
    report.add_attempt("2024-05-01T00:00:00.000Z", ok=False)
    report.add_attempt("2024-05-01T00:00:01.000Z", ok=True)
    expected = {
        "timesSent": 2,
        "timesFailed": 1,
        "lastNotification": "2024-05-01T00:00:01.000Z",
        "lastSuccess": "2024-05-01T00:00:01.000Z",
        "lastFailure": "2024-05-01T00:00:00.000Z",
        "status": "ok",
    }
    report.record = {**record("urn:s:1"), "delivery": expected}
    subs.settle([], [report])
    assert subs.delivery_status("", ["urn:s:1", "urn:s:9"]) == {"urn:s:1": expected}


def test_outbox_left_by_a_previous_run_is_taken_over_at_start(
    open_stores: OpenStores,
) -> None:
    first = open_stores(lease_s=0.5).subscriptions
    seqs = first.enqueue([("", "urn:s:1", b"1")])
    first.release()
    second = open_stores().subscriptions
    assert [row.seq for row in second.take_over_outbox()] == seqs
    assert second.take_over_outbox() == [], "taken once"


# --------------------------------------------------------- several processes (shared)


def test_reports_of_two_processes_add_up(shared_stores: OpenStores) -> None:
    first, second = shared_stores().subscriptions, shared_stores().subscriptions
    first.save("", "urn:s:1", record("urn:s:1"))
    one, two = DeliveryReport("", "urn:s:1"), DeliveryReport("", "urn:s:1")
    one.add_attempt("2024-05-01T00:00:02.000Z", ok=False)
    two.add_attempt("2024-05-01T00:00:01.000Z", ok=True)
    two.add_attempt("2024-05-01T00:00:01.500Z", ok=True)
    first.settle([], [one])
    second.settle([], [two])
    status = first.delivery_status("", ["urn:s:1"])["urn:s:1"]
    assert status == {
        "timesSent": 3,
        "timesFailed": 1,
        "lastNotification": "2024-05-01T00:00:02.000Z",
        "lastSuccess": "2024-05-01T00:00:01.500Z",
        "lastFailure": "2024-05-01T00:00:02.000Z",
        "status": "failed",
    }, "the latest attempt decides the status, whoever settles last"


def test_saving_a_record_keeps_the_status_other_processes_wrote(
    shared_stores: OpenStores,
) -> None:
    subs = shared_stores().subscriptions
    subs.save("", "urn:s:1", record("urn:s:1"))
    report = DeliveryReport("", "urn:s:1")
    report.add_attempt("2024-05-01T00:00:00.000Z", ok=True)
    subs.settle([], [report])
    subs.save("", "urn:s:1", record("urn:s:1", "2025-01-01T00:00:00.000Z"))
    loaded = subs.load("", "urn:s:1")
    assert loaded is not None and loaded["delivery"]["timesSent"] == 1


def test_live_process_keeps_its_outbox(shared_stores: OpenStores) -> None:
    first, second = shared_stores().subscriptions, shared_stores().subscriptions
    first.enqueue([("", "urn:s:1", b"1")])
    assert second.take_over_outbox() == []


def test_rows_of_a_process_whose_lease_ran_out_go_to_one_other_process(
    shared_stores: OpenStores,
) -> None:
    dead = shared_stores(lease_s=0.2).subscriptions
    seqs = dead.enqueue([("", "urn:s:1", b"1"), ("", "urn:s:1", b"2")])
    second, third = shared_stores().subscriptions, shared_stores().subscriptions
    time.sleep(0.4)
    taken = [row.seq for row in second.take_over_outbox()]
    assert taken == seqs
    assert third.take_over_outbox() == []
    assert dead.renew_lease() is False, "the dead process learns it lost its lease"
    assert dead.owned(seqs) == set()
    assert second.owned(seqs) == set(seqs)


def test_renewed_lease_keeps_the_rows(shared_stores: OpenStores) -> None:
    first = shared_stores(lease_s=0.5).subscriptions
    first.enqueue([("", "urn:s:1", b"1")])
    second = shared_stores().subscriptions
    for _ in range(4):
        time.sleep(0.2)
        assert first.renew_lease() is True
    assert second.take_over_outbox() == []


def test_throttle_is_granted_to_one_process_per_period(shared_stores: OpenStores) -> None:
    first, second = shared_stores().subscriptions, shared_stores().subscriptions
    first.save("", "urn:s:1", record("urn:s:1"))
    assert first.claim_throttle([("", "urn:s:1", 0.5)]) == {("", "urn:s:1")}
    assert second.claim_throttle([("", "urn:s:1", 0.5)]) == set()
    time.sleep(0.6)
    assert second.claim_throttle([("", "urn:s:1", 0.5)]) == {("", "urn:s:1")}


def test_one_process_leads_periodic_notifications_until_it_dies(
    shared_stores: OpenStores,
) -> None:
    first, second = shared_stores().subscriptions, shared_stores().subscriptions
    assert first.lead_periodic() is True
    assert second.lead_periodic() is False
    assert first.lead_periodic() is True, "leadership is kept"
    first.close()
    # The server lets go of a closed session's advisory lock a moment later, not at once.
    assert wait_until(lambda: second.lead_periodic() is True, timeout_s=5)


def test_other_processes_hear_of_subscription_changes(shared_stores: OpenStores) -> None:
    first, second = shared_stores().subscriptions, shared_stores().subscriptions

    async def first_change() -> tuple[str, str]:
        changes = second.changes()
        waiting = asyncio.ensure_future(anext(changes))
        try:
            # Saved until heard: the listener connects at its own pace.
            for _ in range(50):
                await asyncio.to_thread(first.save, "city", "urn:s:1", record("urn:s:1"))
                done, _ = await asyncio.wait({waiting}, timeout=0.1)
                if done:
                    break
            return await asyncio.wait_for(waiting, 1)
        finally:
            await changes.aclose()

    assert asyncio.run(first_change()) == ("city", "urn:s:1")
