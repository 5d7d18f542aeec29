"""Helpers for the copy and backup tests: fill an installation through a real server,
and read everything an installation holds into one comparable value."""

from __future__ import annotations

import time
from dataclasses import astuple
from pathlib import Path
from typing import Any

import httpx

from cityos.settings import Settings
from cityos.storage.base import EntityScan, HistoryScan
from cityos.storage.state_stores import open_key_store
from cityos.storage.transfer import open_installation
from tests.conftest import NGSI, free_port, start_server

TENANT = "NGSILD-Tenant"


def sensor(n: int, value: float, observed: str) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Sensor:{n}",
        "type": "Sensor",
        "temperature": {"type": "Property", "value": value, "observedAt": observed},
        "name": {"type": "Property", "value": f"センサー{n}"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [137.2, 36.7]},
        },
    }


def fill(settings: Settings) -> None:
    """Entities in two tenants with history (one deleted since), a hosted @context, an
    API key, and a subscription whose endpoint is down (undelivered outbox, failures)."""
    running = start_server(settings)
    try:
        api = running.base_url + NGSI
        dead = f"http://127.0.0.1:{free_port()}/notify"
        sub = {
            "id": "urn:ngsi-ld:Subscription:copy",
            "type": "Subscription",
            "entities": [{"type": "Sensor"}],
            "notification": {"endpoint": {"uri": dead}},
        }
        assert httpx.post(api + "/subscriptions", json=sub).status_code == 201
        for tenant in ("", "city"):
            headers = {TENANT: tenant} if tenant else {}
            for n in range(3):
                body = sensor(n, 1.0, "2024-01-31T23:59:00.000Z")
                assert httpx.post(api + "/entities", json=body, headers=headers).status_code == 201
                for step, month in ((2.0, "02"), (3.0, "03")):
                    patch = {
                        "temperature": {
                            "type": "Property",
                            "value": step + n,
                            "observedAt": f"2024-{month}-01T00:00:00.000Z",
                        }
                    }
                    response = httpx.patch(
                        f"{api}/entities/urn:ngsi-ld:Sensor:{n}/attrs", json=patch, headers=headers
                    )
                    assert response.status_code == 204, response.text
        assert httpx.delete(f"{api}/entities/urn:ngsi-ld:Sensor:2").status_code == 204
        hosted = {"@context": {"temperature": "https://example.org/temperature"}}
        assert httpx.post(api + "/jsonldContexts", json=hosted).status_code == 201
        deadline = time.monotonic() + 10
        while (
            not httpx.get(f"{api}/subscriptions/{sub['id']}")
            .json()["notification"]
            .get("timesFailed")
        ):
            assert time.monotonic() < deadline, "the dead endpoint was never tried"
            time.sleep(0.1)
    finally:
        running.stop()
    keys = open_key_store(settings.database, settings.sqlite_path)
    try:
        keys.create("toyama-city", "operator")
        _, revoked = keys.create("company", "company")
        assert revoked.key_id is not None and keys.revoke(revoked.key_id)
    finally:
        keys.close()


def dump(url: str) -> dict[str, Any]:
    """Everything the installation at ``url`` holds, in a form equal across backends."""
    installation = open_installation(url, create=False)
    try:
        storage = installation.storage
        tenants = storage.list_tenants()
        history = [astuple(row) for row in installation.history()]
        temporal_entities = sorted({(row[0], row[1]) for row in history})
        state = installation.state
        return {
            "tenants": tenants,
            "entities": {
                tenant: [entity for _, entity in storage.scan(tenant, EntityScan())]
                for tenant in tenants
            },
            "history rows": history,
            # Sorted: the backends may order the attribute groups differently. By time,
            # then by instance number (not its text: "…:10" sorts before "…:9"), the
            # order of writes made within one millisecond.
            "history": {
                key: sorted(
                    (astuple(row) for row in storage.history(*key, HistoryScan())),
                    key=lambda row: (row[0], row[1], int(row[2].rsplit(":", 1)[-1])),
                )
                for key in temporal_entities
            },
            "keys": state.keys.export_keys(),
            "contexts": state.contexts.items(),
            "subscriptions": state.subscriptions.load_all(),
            "outbox": [
                (row.tenant, row.subscription_id, row.payload)
                for row in state.subscriptions.outbox()
            ],
        }
    finally:
        installation.close()


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'cityos.sqlite3'}"
