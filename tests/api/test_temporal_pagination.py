"""Temporal pagination (§6.3.10), scope history, entity paging of temporal queries and
instance paths without an attribute name,
against the shared test server, whose instance limit is 10 per attribute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cityos.broker.temporal import aggregate

LIMIT = 10
"""``Settings.temporal_instance_limit`` of the shared test server (see tests/conftest.py)."""


def minute(day: int, n: int) -> str:
    return (datetime(2020, 1, day, 1, 0, tzinfo=UTC) + timedelta(minutes=n)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def series(day: int, first: int, count: int) -> list[dict[str, object]]:
    """``count`` instances one minute apart from ``first`` minutes past 01:00 on ``day``."""
    return [
        {"type": "Property", "value": n, "observedAt": minute(day, first + n)} for n in range(count)
    ]


def vehicle(uid: str, kind: str, **attrs: object) -> dict[str, object]:
    return {"id": f"urn:ngsi-ld:Vehicle:{uid}", "type": kind, **attrs}


def create(client: httpx.Client, payload: dict[str, object]) -> str:
    assert client.post("/temporal/entities", json=payload).status_code == 201
    return str(payload["id"])


def observed(instances: list[dict[str, object]]) -> list[str]:
    return [str(i["observedAt"]) for i in instances]


def content_range(response: httpx.Response) -> tuple[str, str, str]:
    unit, rest = response.headers["Content-Range"].split(" ")
    assert unit == "date-time"
    span, size = rest.split("/")
    # Both ends are "YYYY-MM-DDTHH:MM:SSZ": split at the '-' between them.
    return span[:20], span[21:], size


@pytest.fixture
def twenty(client: httpx.Client, uid: str) -> str:
    """Two attributes of 20 instances each, the second starting two minutes later."""
    return create(
        client,
        vehicle(uid, "Vehicle", speed=series(1, 1, 20), fuelLevel=series(1, 3, 20)),
    )


def test_an_attribute_over_the_limit_is_cut_with_206_and_content_range(
    client: httpx.Client, twenty: str
) -> None:
    response = client.get(f"/temporal/entities/{twenty}")
    assert response.status_code == 206
    body = response.json()
    # speed is cut after its 10th instance (01:10); fuelLevel is cut at the same instant
    # so that nothing inside the announced range is missing.
    assert observed(body["speed"]) == [minute(1, n) for n in range(1, 11)]
    assert observed(body["fuelLevel"]) == [minute(1, n) for n in range(3, 11)]
    assert content_range(response) == (minute(1, 1), minute(1, 10), "*")


def test_the_range_starts_at_time_at_when_the_query_has_one(
    client: httpx.Client, twenty: str
) -> None:
    params = {"timerel": "after", "timeAt": "2019-01-01T01:01:00Z"}
    response = client.get(f"/temporal/entities/{twenty}", params=params)
    assert response.status_code == 206
    assert content_range(response) == ("2019-01-01T01:01:00Z", minute(1, 10), "*")


@pytest.mark.parametrize(
    ("params", "start"),
    [
        ({}, minute(1, 22)),
        ({"timerel": "before", "timeAt": "2021-01-01T01:01:00Z"}, "2021-01-01T01:01:00Z"),
        (
            {
                "timerel": "between",
                "timeAt": "2019-01-01T01:01:00Z",
                "endTimeAt": "2021-01-01T01:01:00Z",
            },
            "2021-01-01T01:01:00Z",
        ),
    ],
)
def test_last_n_over_the_limit_is_cut_from_the_end(
    client: httpx.Client, twenty: str, params: dict[str, str], start: str
) -> None:
    response = client.get(f"/temporal/entities/{twenty}", params={**params, "lastN": "20"})
    assert response.status_code == 206
    body = response.json()
    # fuelLevel's last 10 start at 01:13, so speed is cut there too.
    assert observed(body["fuelLevel"]) == [minute(1, n) for n in range(13, 23)]
    assert observed(body["speed"]) == [minute(1, n) for n in range(13, 21)]
    assert content_range(response) == (start, minute(1, 13), "20")


def test_last_n_within_the_limit_is_a_full_response(client: httpx.Client, twenty: str) -> None:
    response = client.get(f"/temporal/entities/{twenty}", params={"lastN": str(LIMIT)})
    assert response.status_code == 200
    assert "Content-Range" not in response.headers
    assert len(response.json()["speed"]) == LIMIT


def test_temporal_values_are_cut_the_same_way(client: httpx.Client, twenty: str) -> None:
    response = client.get(f"/temporal/entities/{twenty}", params={"options": "temporalValues"})
    assert response.status_code == 206
    assert [t for _, t in response.json()["speed"]["values"]] == [
        minute(1, n) for n in range(1, 11)
    ]


def test_aggregated_values_are_never_cut(client: httpx.Client, twenty: str) -> None:
    params = {"options": "aggregatedValues", "aggrMethods": "totalCount"}
    response = client.get(f"/temporal/entities/{twenty}", params=params)
    assert response.status_code == 200
    assert response.json()["speed"]["totalCount"][0][0] == 20


def test_a_short_history_is_a_full_response(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, vehicle(uid, "Vehicle", speed=series(1, 1, 5)))
    response = client.get(f"/temporal/entities/{entity_id}")
    assert response.status_code == 200
    assert "Content-Range" not in response.headers


@pytest.mark.parametrize(
    ("params", "emptied"),
    [
        ({"timerel": "after", "timeAt": "2019-01-01T01:01:00Z"}, "fuelLevel"),
        ({"timerel": "before", "timeAt": "2021-01-01T01:01:00Z", "lastN": "100"}, "speed"),
    ],
)
def test_an_attribute_beyond_the_cut_is_shown_empty(
    client: httpx.Client, uid: str, params: dict[str, str], emptied: str
) -> None:
    # speed is on 1 January, fuelLevel on 2 January: whichever end the reading starts
    # from, the other attribute lies wholly beyond the cut.
    entity_id = create(
        client, vehicle(uid, "Vehicle", speed=series(1, 1, 59), fuelLevel=series(2, 1, 59))
    )
    response = client.get(f"/temporal/entities/{entity_id}", params=params)
    assert response.status_code == 206
    body = response.json()
    assert body[emptied] == []
    assert len(body["speed" if emptied == "fuelLevel" else "fuelLevel"]) == LIMIT


def test_a_query_is_cut_at_one_instant_across_entities(client: httpx.Client, uid: str) -> None:
    kind = f"Car{uid}"
    first = create(
        client, vehicle(f"{uid}-a", kind, speed=series(1, 1, 20), fuelLevel=series(1, 3, 20))
    )
    later = create(client, vehicle(f"{uid}-b", kind, speed=series(5, 0, 3)))
    response = client.get("/temporal/entities", params={"type": kind})
    assert response.status_code == 206
    body = {e["id"]: e for e in response.json()}
    assert len(body[first]["speed"]) == LIMIT
    # The other entity matched but lies after the cut: present, its attribute empty.
    assert body[later]["speed"] == []
    assert content_range(response) == (minute(1, 1), minute(1, 10), "*")


def test_the_post_query_is_cut_too(client: httpx.Client, uid: str) -> None:
    kind = f"Car{uid}"
    create(client, vehicle(uid, kind, speed=series(1, 1, 20)))
    query = {"type": "Query", "entities": [{"type": kind}]}
    response = client.post("/temporal/entityOperations/query", json=query)
    assert response.status_code == 206
    assert response.headers["Content-Range"].startswith("date-time ")


def test_entities_without_instances_in_range_do_not_shorten_a_page(
    client: httpx.Client, uid: str
) -> None:
    kind = f"Car{uid}"
    create(client, vehicle(f"{uid}-old", kind, speed=series(1, 0, 2)))
    wanted = [create(client, vehicle(f"{uid}-{n}", kind, speed=series(3, n, 2))) for n in range(3)]
    params = {"type": kind, "timerel": "after", "timeAt": "2020-01-02T00:00:00Z"}
    pages = [
        client.get("/temporal/entities", params={**params, "limit": "2", "offset": str(offset)})
        for offset in (0, 2)
    ]
    assert [[e["id"] for e in page.json()] for page in pages] == [wanted[:2], wanted[2:]]
    counted = client.get("/temporal/entities", params={**params, "limit": "1", "count": "true"})
    assert counted.headers["NGSILD-Results-Count"] == "3"


def test_scope_changes_are_history(client: httpx.Client, uid: str) -> None:
    entity_id = create(
        client, vehicle(uid, "Vehicle", scope=["/Toyama/North"], speed=series(1, 1, 2))
    )
    assert client.delete(f"/entities/{entity_id}/attrs/scope").status_code == 204
    body = client.get(f"/temporal/entities/{entity_id}").json()
    assert [i["value"] for i in body["scope"]] == [["/Toyama/North"]]
    deleted = client.get(
        f"/temporal/entities/{entity_id}", params={"timeproperty": "deletedAt"}
    ).json()
    assert [(i["type"], i["value"]) for i in deleted["scope"]] == [("Property", [])]
    assert "deletedAt" in deleted["scope"][0]
    simplified = client.get(
        f"/temporal/entities/{entity_id}",
        params={"timeproperty": "deletedAt", "options": "temporalValues"},
    ).json()
    assert simplified["scope"]["values"][0][0] == []


@pytest.mark.parametrize(("method", "status"), [("PATCH", 405), ("DELETE", 400)])
def test_an_instance_path_without_attribute_name(
    client: httpx.Client, twenty: str, method: str, status: int
) -> None:
    response = client.request(
        method, f"/temporal/entities/{twenty}/attrs//urn:ngsi-ld:Instance:1", json={}
    )
    assert response.status_code == status


METHODS = "totalCount,distinctCount,sum,avg,min,max,stddev,sumsq"


@pytest.mark.parametrize("odd", [None, "high"])
def test_storage_and_broker_aggregation_agree(
    client: httpx.Client, uid: str, odd: str | None
) -> None:
    # Plain numbers are aggregated by storage (SQL); one string sends the same range to
    # the broker's general code. Both must give the same figures for the numbers.
    values = [1.0, 2.0, 2.0, 7.0, 3.0]
    instances: list[dict[str, object]] = [
        {"type": "Property", "value": v, "observedAt": minute(1, 20 * n)}
        for n, v in enumerate(values)
    ]
    if odd is not None:
        instances.append({"type": "Property", "value": odd, "observedAt": minute(1, 30)})
    entity_id = create(client, vehicle(uid, "Vehicle", speed=instances))
    params = {
        "attrs": "speed",
        "options": "aggregatedValues",
        "aggrMethods": METHODS,
        "aggrPeriodDuration": "PT1H",
        "timerel": "between",
        "timeAt": minute(1, 0),
        "endTimeAt": minute(1, 120),
    }
    body = client.get(f"/temporal/entities/{entity_id}", params=params).json()["speed"]
    hours: list[list[object]] = [[*values[:3], *([odd] if odd else [])], [*values[3:]]]
    for method in METHODS.split(","):
        expected = [
            [aggregate(method, hour), minute(1, 60 * n), minute(1, 60 * (n + 1))]
            for n, hour in enumerate(hours)
        ]
        assert [[pytest.approx(v), s, e] for v, s, e in body[method]] == expected, method
