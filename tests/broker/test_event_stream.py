"""EventHub without HTTP: buffer age, replay positions and box transitions."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from cityos.broker.changes import EntityChange
from cityos.broker.event_stream import EventHub, RelayedChange, StreamFilter, StreamReset
from cityos.broker.model import StoredEntity

LOCATION = "https://uri.etsi.org/ngsi-ld/location"
TOYAMA = (137.0, 36.5, 137.5, 36.8)


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def gauge(lon: float, lat: float) -> StoredEntity:
    point: dict[str, Any] = {"type": "Point", "coordinates": [lon, lat]}
    return {
        "id": "urn:ngsi-ld:Gauge:1",
        "type": ["https://example.org/Gauge"],
        "attrs": {LOCATION: [{"type": "GeoProperty", "value": point}]},
    }


def created(n: int) -> EntityChange:
    return EntityChange(
        "", f"urn:ngsi-ld:Gauge:{n}", None, gauge(137.2, 36.7) | {"id": f"urn:ngsi-ld:Gauge:{n}"}
    )


def test_events_older_than_the_buffer_age_are_not_replayed() -> None:
    clock = Clock()
    hub = EventHub(buffer_age_s=60, clock=clock)
    start = hub.open_stream(StreamFilter(tenant=""), None).start
    hub.publish([created(1)])
    clock.now_s += 61
    hub.publish([created(2)])
    late = hub.open_stream(StreamFilter(tenant=""), start.head_id).start
    assert late.reset_reason is not None


def test_replay_starts_right_after_the_given_id() -> None:
    hub = EventHub(buffer_size=10)
    hub.publish([created(n) for n in range(1, 6)])
    start = hub.open_stream(StreamFilter(tenant=""), hub.event_id(3)).start
    assert [event.seq for _, event in start.replay] == [4, 5]
    assert start.head_id == hub.event_id(5)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ((139.7, 35.7), (137.2, 36.7), "entityUpdated"),
        ((137.2, 36.7), (139.7, 35.7), "entityLeft"),
        ((139.7, 35.7), (139.8, 35.7), None),
    ],
    ids=["moved-in", "moved-out", "stayed-out"],
)
def test_box_transitions(
    before: tuple[float, float], after: tuple[float, float], expected: str | None
) -> None:
    hub = EventHub()
    stream = hub.open_stream(StreamFilter(tenant="", bbox=TOYAMA), None)
    hub.publish([EntityChange("", "urn:ngsi-ld:Gauge:1", gauge(*before), gauge(*after))])
    queued = asyncio.run(stream.next_batch(0))
    assert [name for name, _ in queued] == ([expected] if expected else [])


def relayed(n: int) -> RelayedChange:
    after = orjson.dumps(created(n).after)
    return RelayedChange(
        f"ab12.{n}", "", f"urn:ngsi-ld:Gauge:{n}", None, after, "2026-11-24T10:00:00Z"
    )


@pytest.mark.parametrize(
    ("buffer_size", "last"), [(10, 1), (2, 1)], ids=["buffered", "just-evicted"]
)
def test_relayed_ids_replay_what_came_after_them(buffer_size: int, last: int) -> None:
    hub = EventHub(buffer_size=buffer_size)
    for n in (1, 2, 3):
        hub.publish_relayed(relayed(n))
    start = hub.open_stream(StreamFilter(tenant=""), f"ab12.{last}").start
    assert start.reset_reason is None
    assert [event.event_id for _, event in start.replay] == ["ab12.2", "ab12.3"]
    assert start.head_id == "ab12.3"


def test_discontinuity_sends_open_streams_a_reset() -> None:
    hub = EventHub()
    stream = hub.open_stream(StreamFilter(tenant=""), None)
    hub.discontinuity("lost the database")
    assert asyncio.run(stream.next_batch(0)) == [StreamReset("lost the database")]


@pytest.mark.parametrize("given", ["event", "position"])
def test_ids_from_before_a_discontinuity_get_a_reset(given: str) -> None:
    hub = EventHub()
    hub.publish_relayed(relayed(1))
    hub.discontinuity("lost the database")
    position = hub.head_id()  # nothing is buffered now: a position of this process
    hub.discontinuity("lost it again")
    hub.publish_relayed(relayed(2))
    last = "ab12.1" if given == "event" else position
    assert hub.open_stream(StreamFilter(tenant=""), last).start.reset_reason is not None
