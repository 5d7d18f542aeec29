"""GET /events against a real server: filters, replay, reset, heartbeat, overflow, access."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cityos.settings import Settings
from cityos.storage.state_stores import open_key_store
from tests.conftest import NGSI, RunningServer, start_server

INSIDE = [137.21, 36.70]  # Toyama city centre
OUTSIDE = [139.76, 35.68]  # Tokyo
TOYAMA_BBOX = "137.0,36.5,137.5,36.8"


@dataclass
class Message:
    """One server-sent event, or a comment (``event`` is ``":"``)."""

    event: str
    data: str = ""
    id: str | None = None

    def json(self) -> Any:  # Any: JSON value
        return orjson.loads(self.data)


class EventReader:
    """Parses a text/event-stream response message by message."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.retry_ms: int | None = None

    def next(self) -> Message:
        fields: dict[str, str] = {}
        for line in self.lines:
            if line.startswith(":"):
                if not fields:
                    return Message(":", line[1:].strip())
                continue
            if line == "":
                if "event" in fields or "data" in fields:
                    return Message(
                        fields.get("event", "message"), fields.get("data", ""), fields.get("id")
                    )
                fields.clear()
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "retry":
                self.retry_ms = int(value)
            else:
                fields[name] = value
        raise EOFError("the stream ended")

    def next_event(self) -> Message:
        """The next message that is not a comment."""
        while True:
            message = self.next()
            if message.event != ":":
                return message

    def until_ready(self) -> tuple[list[Message], Message]:
        """Every event before ``ready``, and ``ready`` itself."""
        seen = []
        while True:
            message = self.next_event()
            if message.event == "ready":
                return seen, message
            seen.append(message)


@contextmanager
def open_events(
    base_url: str, params: dict[str, str], headers: dict[str, str] | None = None
) -> Iterator[EventReader]:
    with (
        httpx.Client(base_url=base_url, timeout=5) as http,
        http.stream("GET", "/events", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventReader(response)


def entity(entity_id: str, kind: str, position: list[float] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": entity_id,
        "type": kind,
        "waterLevel": {"type": "Property", "value": 1.5},
        "name": {"type": "Property", "value": "神通大橋"},
    }
    if position is not None:
        body["location"] = {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": position},
        }
    return body


def create(base_url: str, *entities: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    for body in entities:
        response = httpx.post(base_url + NGSI + "/entities", json=body, headers=headers)
        assert response.status_code == 201, response.text


def settings_like(server: RunningServer, data_dir: Path, **events: Any) -> Settings:
    """The shared server's settings (so its storage backend) with a fresh data dir."""
    database = server.settings.database
    if database is not None and database.startswith("sqlite:"):
        database = None
    return server.settings.model_copy(update={"data_dir": data_dir, "database": database, **events})


@pytest.fixture(scope="module")
def tight(
    server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server with a tiny replay buffer, a tiny stream queue and a fast heartbeat."""
    settings = settings_like(
        server,
        tmp_path_factory.mktemp("events-tight"),
        events_buffer_size=3,
        events_queue_limit=2,
        events_heartbeat_s=0.2,
        events_retry_ms=1234,
    )
    running = start_server(settings)
    yield running
    running.stop()


# ------------------------------------------------------------------------ filters


@pytest.mark.parametrize(
    ("params", "wanted", "unwanted"),
    [
        (
            {"type": "Gauge{u}"},
            ("urn:ngsi-ld:Gauge:{u}-a", "Gauge{u}"),
            ("urn:ngsi-ld:Other:{u}-b", "Other{u}"),
        ),
        (
            {"type": "Gauge{u}", "id": "urn:ngsi-ld:Gauge:{u}-a,urn:ngsi-ld:Gauge:{u}-c"},
            ("urn:ngsi-ld:Gauge:{u}-a", "Gauge{u}"),
            ("urn:ngsi-ld:Gauge:{u}-b", "Gauge{u}"),
        ),
        (
            {"idPattern": "urn:ngsi-ld:Gauge:{u}-jinzu.*"},
            ("urn:ngsi-ld:Gauge:{u}-jinzu-1", "Gauge{u}"),
            ("urn:ngsi-ld:Gauge:{u}-joganji-1", "Gauge{u}"),
        ),
    ],
    ids=["type", "id", "idPattern"],
)
def test_only_matching_entities_arrive(
    server: RunningServer,
    uid: str,
    params: dict[str, str],
    wanted: tuple[str, str],
    unwanted: tuple[str, str],
) -> None:
    query = {k: v.format(u=uid) for k, v in params.items()}
    with open_events(server.base_url, query) as events:
        events.until_ready()
        create(
            server.base_url,
            entity(unwanted[0].format(u=uid), unwanted[1].format(u=uid)),
            entity(wanted[0].format(u=uid), wanted[1].format(u=uid)),
        )
        message = events.next_event()
    assert message.event == "entityCreated"
    assert message.json()["id"] == wanted[0].format(u=uid)


def test_bbox_keeps_entities_inside_the_box(server: RunningServer, uid: str) -> None:
    with open_events(server.base_url, {"type": f"Gauge{uid}", "bbox": TOYAMA_BBOX}) as events:
        events.until_ready()
        create(
            server.base_url,
            entity(f"urn:ngsi-ld:Gauge:{uid}-tokyo", f"Gauge{uid}", OUTSIDE),
            entity(f"urn:ngsi-ld:Gauge:{uid}-nowhere", f"Gauge{uid}"),
            entity(f"urn:ngsi-ld:Gauge:{uid}-toyama", f"Gauge{uid}", INSIDE),
        )
        message = events.next_event()
    assert message.json()["id"] == f"urn:ngsi-ld:Gauge:{uid}-toyama"


def test_entity_moving_out_of_the_box_is_reported_as_left(server: RunningServer, uid: str) -> None:
    entity_id = f"urn:ngsi-ld:Gauge:{uid}"
    create(server.base_url, entity(entity_id, f"Gauge{uid}", INSIDE))
    with open_events(server.base_url, {"type": f"Gauge{uid}", "bbox": TOYAMA_BBOX}) as events:
        events.until_ready()
        response = httpx.patch(
            f"{server.base_url}{NGSI}/entities/{entity_id}/attrs",
            json={
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": OUTSIDE},
                }
            },
        )
        assert response.status_code == 204, response.text
        message = events.next_event()
    assert (message.event, message.json()["id"]) == ("entityLeft", entity_id)


def test_update_and_delete_events_carry_the_entity(server: RunningServer, uid: str) -> None:
    entity_id = f"urn:ngsi-ld:Gauge:{uid}"
    create(server.base_url, entity(entity_id, f"Gauge{uid}", INSIDE))
    with open_events(server.base_url, {"type": f"Gauge{uid}", "options": "keyValues"}) as events:
        events.until_ready()
        url = f"{server.base_url}{NGSI}/entities/{entity_id}"
        assert (
            httpx.patch(
                url + "/attrs", json={"waterLevel": {"type": "Property", "value": 2.7}}
            ).status_code
            == 204
        )
        assert httpx.delete(url).status_code == 204
        updated, deleted = events.next_event(), events.next_event()
    assert updated.event == "entityUpdated"
    assert updated.json()["waterLevel"] == 2.7
    assert deleted.event == "entityDeleted"
    assert set(deleted.json()) == {"id", "type", "deletedAt"}


def test_attrs_limit_the_payload_and_the_updates(server: RunningServer, uid: str) -> None:
    entity_id = f"urn:ngsi-ld:Gauge:{uid}"
    create(server.base_url, entity(entity_id, f"Gauge{uid}", INSIDE))
    with open_events(
        server.base_url, {"type": f"Gauge{uid}", "attrs": "waterLevel", "options": "keyValues"}
    ) as events:
        events.until_ready()
        url = f"{server.base_url}{NGSI}/entities/{entity_id}/attrs"
        for body in (
            {"name": {"type": "Property", "value": "x"}},
            {"waterLevel": {"type": "Property", "value": 3.1}},
        ):
            assert httpx.patch(url, json=body).status_code == 204
        message = events.next_event()
    assert message.json() == {"id": entity_id, "type": f"Gauge{uid}", "waterLevel": 3.1}


def test_events_of_another_tenant_do_not_arrive(server: RunningServer, uid: str) -> None:
    kind = f"Gauge{uid}"
    with open_events(server.base_url, {"type": kind, "tenant": f"city-{uid}"}) as events:
        events.until_ready()
        create(server.base_url, entity(f"urn:ngsi-ld:Gauge:{uid}-default", kind))
        create(
            server.base_url,
            entity(f"urn:ngsi-ld:Gauge:{uid}-tenant", kind),
            headers={"NGSILD-Tenant": f"city-{uid}"},
        )
        message = events.next_event()
    assert message.json()["id"] == f"urn:ngsi-ld:Gauge:{uid}-tenant"


@pytest.mark.parametrize(
    "params",
    [{"bbox": "137,36"}, {"bbox": "138,36,137,37"}, {"idPattern": "("}, {"colour": "red"}],
    ids=["short-bbox", "inverted-bbox", "bad-pattern", "unknown-param"],
)
def test_bad_parameters_are_a_400(server: RunningServer, params: dict[str, str]) -> None:
    response = httpx.get(server.base_url + "/events", params=params)
    assert response.status_code == 400
    assert response.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")


# ------------------------------------------------------------------ replay, reset


def test_last_event_id_replays_missed_events(server: RunningServer, uid: str) -> None:
    kind = f"Gauge{uid}"
    with open_events(server.base_url, {"type": kind}) as events:
        _, ready = events.until_ready()
    create(
        server.base_url,
        entity(f"urn:ngsi-ld:Gauge:{uid}-1", kind),
        entity(f"urn:ngsi-ld:Gauge:{uid}-2", kind),
    )
    assert ready.id is not None
    with open_events(server.base_url, {"type": kind}, {"Last-Event-ID": ready.id}) as events:
        replayed, ready_again = events.until_ready()
    assert [(m.event, m.json()["id"]) for m in replayed] == [
        ("entityCreated", f"urn:ngsi-ld:Gauge:{uid}-1"),
        ("entityCreated", f"urn:ngsi-ld:Gauge:{uid}-2"),
    ]
    assert ready_again.json()["replayed"] == 2


@pytest.mark.parametrize("stale", ["too-old", "other-process"])
def test_unreplayable_last_event_id_gets_a_reset(
    tight: RunningServer, uid: str, stale: str
) -> None:
    kind = f"Gauge{uid}"
    with open_events(tight.base_url, {"type": kind}) as events:
        _, ready = events.until_ready()
    create(tight.base_url, *(entity(f"urn:ngsi-ld:Gauge:{uid}-{n}", kind) for n in range(5)))
    last_id = ready.id if stale == "too-old" else "abc-1"
    assert last_id is not None
    with open_events(tight.base_url, {"type": kind}, {"Last-Event-ID": last_id}) as events:
        before_ready, ready_again = events.until_ready()
    assert [m.event for m in before_ready] == ["reset"]
    assert ready_again.json()["replayed"] == 0


# ------------------------------------------------------------ heartbeat, overflow


def test_idle_stream_gets_retry_hint_and_heartbeats(tight: RunningServer, uid: str) -> None:
    with open_events(tight.base_url, {"type": f"Gauge{uid}"}) as events:
        events.until_ready()
        message = events.next()
        assert events.retry_ms == 1234
    assert message.event == ":"


def test_slow_consumer_is_dropped_and_replays_after_reconnect(
    tight: RunningServer, uid: str
) -> None:
    kind = f"Gauge{uid}"
    batch = [entity(f"urn:ngsi-ld:Gauge:{uid}-{n}", kind) for n in range(3)]
    with open_events(tight.base_url, {"type": kind}) as events:
        _, ready = events.until_ready()
        # One commit of three changes outruns a queue of two, like a client that
        # stopped reading; the stream is dropped, not the write.
        response = httpx.post(tight.base_url + NGSI + "/entityOperations/create", json=batch)
        assert response.status_code == 201, response.text
        assert events.next_event().event == "overflow"
        with pytest.raises(EOFError):
            events.next_event()
    assert ready.id is not None
    with open_events(tight.base_url, {"type": kind}, {"Last-Event-ID": ready.id}) as events:
        replayed, _ = events.until_ready()
    assert [m.json()["id"] for m in replayed] == [e["id"] for e in batch]


def test_stream_cap_answers_503(server: RunningServer, tmp_path: Path) -> None:
    running = start_server(settings_like(server, tmp_path, events_max_streams=1))
    try:
        with open_events(running.base_url, {"type": "Gauge"}) as events:
            events.until_ready()
            response = httpx.get(running.base_url + "/events", params={"type": "Gauge"})
        assert response.status_code == 503
        assert "Retry-After" in response.headers
    finally:
        running.stop()


# ------------------------------------------------------------------ access control


@pytest.fixture(scope="module")
def secured(
    server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str]]:
    data_dir = tmp_path_factory.mktemp("events-auth")
    settings = settings_like(server, data_dir, auth="on", public_types=["WaterObserved"])
    running = start_server(settings)
    keys = open_key_store(settings.database, settings.sqlite_path)
    try:
        key = keys.create("toyama-city", "operator")[0]
    finally:
        keys.close()
    yield running, key
    running.stop()


@pytest.mark.parametrize(
    "params",
    [{"type": "Vehicle"}, {"type": "WaterObserved|Vehicle"}, {"id": "urn:ngsi-ld:Vehicle:1"}, {}],
    ids=["private-type", "mixed-types", "id-only", "everything"],
)
def test_anonymous_stream_of_non_public_types_is_refused(
    secured: tuple[RunningServer, str], params: dict[str, str]
) -> None:
    running, _ = secured
    response = httpx.get(running.base_url + "/events", params=params)
    assert response.status_code == 401
    assert response.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/Unauthorized"


def test_key_in_the_url_is_refused(secured: tuple[RunningServer, str]) -> None:
    running, key = secured
    response = httpx.get(running.base_url + "/events", params={"type": "Vehicle", "key": key})
    assert response.status_code == 400
    assert "X-API-Key" in response.json()["detail"]


def test_anonymous_public_stream_and_keyed_private_stream_work(
    secured: tuple[RunningServer, str],
) -> None:
    running, key = secured
    suffix = uuid.uuid4().hex[:8]
    headers = {"X-API-Key": key}
    with (
        open_events(running.base_url, {"type": "WaterObserved"}) as public,
        open_events(running.base_url, {"type": "Vehicle"}, headers) as private,
    ):
        public.until_ready()
        private.until_ready()
        create(
            running.base_url,
            entity(f"urn:ngsi-ld:WaterObserved:{suffix}", "WaterObserved"),
            entity(f"urn:ngsi-ld:Vehicle:{suffix}", "Vehicle"),
            headers=headers,
        )
        assert public.next_event().json()["id"] == f"urn:ngsi-ld:WaterObserved:{suffix}"
        assert private.next_event().json()["id"] == f"urn:ngsi-ld:Vehicle:{suffix}"
