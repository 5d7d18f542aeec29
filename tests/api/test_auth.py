"""API keys against a real server with auth on: who may write, who may read what."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cityos.settings import Settings
from cityos.storage.keys import SqliteKeyStore
from tests.conftest import NGSI, RunningServer, start_server

PUBLIC_ENTITY = {
    "id": "urn:ngsi-ld:WaterObserved:auth-1",
    "type": "WaterObserved",
    "height": {"type": "Property", "value": 1.2},
}
PRIVATE_ENTITY = {
    "id": "urn:ngsi-ld:Vehicle:auth-1",
    "type": "Vehicle",
    "speed": {"type": "Property", "value": 30},
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    data_dir = tmp_path_factory.mktemp("auth")
    running = start_server(Settings(data_dir=data_dir, auth="on", public_types=["WaterObserved"]))
    yield running, data_dir
    running.stop()


def make_key(data_dir: Path, role: str) -> str:
    keys = SqliteKeyStore(data_dir / "keys.sqlite3")
    try:
        return keys.create("toyama-city", role)[0]
    finally:
        keys.close()


@pytest.fixture(scope="module")
def operator_headers(secured: tuple[RunningServer, Path]) -> dict[str, str]:
    running, data_dir = secured
    headers = {"X-API-Key": make_key(data_dir, "operator")}
    for entity in (PUBLIC_ENTITY, PRIVATE_ENTITY):
        response = httpx.post(running.base_url + NGSI + "/entities", json=entity, headers=headers)
        assert response.status_code == 201, response.text
    return headers


def test_anonymous_write_is_refused_with_problem_details(
    secured: tuple[RunningServer, Path],
) -> None:
    running, _ = secured
    response = httpx.post(running.base_url + NGSI + "/entities", json=PUBLIC_ENTITY)
    assert response.status_code == 401
    assert response.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/Unauthorized"


def test_unknown_key_is_refused(secured: tuple[RunningServer, Path]) -> None:
    running, _ = secured
    response = httpx.get(
        running.base_url + NGSI + "/entities/" + PUBLIC_ENTITY["id"],
        headers={"X-API-Key": "cok_not-a-real-key"},
    )
    assert response.status_code == 401


def test_public_role_cannot_write(secured: tuple[RunningServer, Path]) -> None:
    running, data_dir = secured
    key = make_key(data_dir, "public")
    response = httpx.post(
        running.base_url + NGSI + "/entities",
        json={**PRIVATE_ENTITY, "id": "urn:ngsi-ld:Vehicle:auth-2"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 403


def test_bearer_key_of_writing_role_can_write(
    secured: tuple[RunningServer, Path], operator_headers: dict[str, str]
) -> None:
    running, _ = secured
    bearer = {"Authorization": "Bearer " + operator_headers["X-API-Key"]}
    response = httpx.patch(
        running.base_url + NGSI + f"/entities/{PRIVATE_ENTITY['id']}/attrs/speed",
        json={"value": 42},
        headers=bearer,
    )
    assert response.status_code == 204


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/entities/{PUBLIC_ENTITY['id']}", 200),
        ("/entities?type=WaterObserved", 200),
        (f"/entities/{PRIVATE_ENTITY['id']}", 401),
        ("/entities?type=Vehicle", 401),
        ("/entities?type=WaterObserved,Vehicle", 401),
        ("/types", 401),
    ],
)
def test_anonymous_reads_only_public_types(
    secured: tuple[RunningServer, Path],
    operator_headers: dict[str, str],
    path: str,
    status: int,
) -> None:
    running, _ = secured
    assert httpx.get(running.base_url + NGSI + path).status_code == status


def test_key_reads_private_types(
    secured: tuple[RunningServer, Path], operator_headers: dict[str, str]
) -> None:
    running, _ = secured
    response = httpx.get(
        running.base_url + NGSI + "/entities?type=Vehicle", headers=operator_headers
    )
    assert response.status_code == 200
    assert [e["id"] for e in response.json()] == [PRIVATE_ENTITY["id"]]


def test_health_needs_no_key(secured: tuple[RunningServer, Path]) -> None:
    running, _ = secured
    response = httpx.get(running.base_url + "/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "database": "ok"})


def test_cli_keys_create_prints_a_working_key_once(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cityos.cli",
            "keys",
            "create",
            "--org",
            "hokuriku-power",
            "--role",
            "company",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    key = result.stdout.strip()
    assert key.startswith("cok_")
    keys = SqliteKeyStore(tmp_path / "keys.sqlite3")
    principal = keys.verify(key)
    listed = keys.list_keys()
    keys.close()
    assert principal is not None and (principal.org, principal.role) == (
        "hokuriku-power",
        "company",
    )
    assert key not in str(listed)


def test_cli_rejects_unknown_role(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cityos.cli",
            "keys",
            "create",
            "--org",
            "x",
            "--role",
            "root",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Unknown role" in result.stdout + result.stderr
