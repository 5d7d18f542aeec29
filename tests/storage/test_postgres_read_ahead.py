"""Reading entities ahead of writes on a real PostgreSQL (cityos.storage.postgres_read_ahead):
reads asked for together are answered together, each with its own row."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from cityos.storage.base import DEFAULT_TENANT
from cityos.storage.postgres import PostgresStorage
from cityos.storage.postgres_read_ahead import AsyncReader, Outcome

NOW = "2030-05-01T00:00:00.000Z"


@pytest.fixture(scope="module")
def url(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    storage = PostgresStorage(url, upgrade=True)
    for n in range(40):
        storage.insert(
            DEFAULT_TENANT if n % 2 else "city",
            {
                "id": f"urn:ngsi-ld:T:{n}",
                "type": ["https://example.org/T"],
                "createdAt": NOW,
                "modifiedAt": NOW,
                "attrs": {"https://example.org/n": [{"type": "Property", "value": n}]},
            },
        )
    storage.close()
    return url


def test_reads_asked_for_together_are_answered_together_each_with_its_row(url: str) -> None:
    reader = AsyncReader(url)
    queries: list[int] = []
    read_many = reader._read_many

    async def counted(keys: list[tuple[str, str]]) -> dict[tuple[str, str], Outcome]:
        queries.append(len(keys))
        return await read_many(keys)

    reader._read_many = counted  # type: ignore[method-assign]
    # Tenants crossed with ids: half of these exist, one entity is asked for twice.
    keys = [(tenant, f"urn:ngsi-ld:T:{n}") for n in range(40) for tenant in ("", "city")]
    keys.append(("", "urn:ngsi-ld:T:1"))

    async def run() -> list[Outcome]:
        try:
            return list(await asyncio.gather(*(reader.read(t, i) for t, i in keys)))
        finally:
            await reader.close()

    outcomes = asyncio.run(run())
    for (tenant, entity_id), (done, row) in zip(keys, outcomes, strict=True):
        n = int(entity_id.rsplit(":", 1)[1])
        assert done
        if (tenant == DEFAULT_TENANT) == bool(n % 2):
            assert row is not None
            assert orjson.loads(row[0])["attrs"]["https://example.org/n"][0]["value"] == n
            assert row[1].isdigit()  # the row version
        else:
            assert row is None
    assert sum(queries) == len(keys)
    assert len(queries) < len(keys) / 10  # gathered, not one query per read


def test_a_database_that_cannot_be_reached_gives_no_row_and_no_error() -> None:
    reader = AsyncReader("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")

    async def run() -> Outcome:
        return await reader.read(DEFAULT_TENANT, "urn:ngsi-ld:T:1")

    assert asyncio.run(run()) == (False, None)
