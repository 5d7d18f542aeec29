"""Relay notices without a database: what fits in one, and what a receiver makes of it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cityos.broker.changes import EntityChange
from cityos.broker.event_relay import decode_notice, encode_notice
from cityos.broker.event_stream import EntityEvent, StreamFilter
from cityos.broker.model import StoredEntity
from cityos.broker.service import EntitySelector
from cityos.storage.postgres_events import MAX_NOTICE_BYTES

LOCATION = "https://uri.etsi.org/ngsi-ld/location"
LEVEL = "https://example.org/waterLevel"
NOTE = "https://example.org/note"
GAUGE = "https://example.org/Gauge"
AT = "2026-11-24T10:00:00.000Z"


def gauge(lon: float, level: float, note_chars: int = 0) -> StoredEntity:
    point: dict[str, Any] = {"type": "Point", "coordinates": [lon, 36.7]}
    attrs: dict[str, Any] = {
        LOCATION: [{"type": "GeoProperty", "value": point}],
        LEVEL: [{"type": "Property", "value": level}],
    }
    if note_chars:
        # Japanese text: three bytes a character, so the byte limit is what counts.
        attrs[NOTE] = [{"type": "Property", "value": "水" * note_chars}]
    return {"id": "urn:ngsi-ld:Gauge:jinzu", "type": [GAUGE], "attrs": attrs}


def no_fetch(tenant: str, entity_id: str) -> StoredEntity | None:
    raise AssertionError("a notice that carries the entity must not read it")


def test_small_change_travels_whole() -> None:
    change = EntityChange("toyama", "urn:ngsi-ld:Gauge:jinzu", gauge(137.2, 1.0), gauge(137.2, 2.0))
    notice = encode_notice("ab12.7", change, AT)
    assert notice is not None
    relayed = decode_notice(notice, no_fetch)
    assert relayed is not None
    assert (relayed.event_id, relayed.tenant, relayed.occurred_at) == ("ab12.7", "toyama", AT)
    assert relayed.before_json is not None and relayed.after_json is not None
    assert orjson.loads(relayed.before_json) == change.before
    assert orjson.loads(relayed.after_json) == change.after
    assert not relayed.before_partial


def test_change_too_large_for_both_documents_drops_the_one_before() -> None:
    # Each document ~4,500 bytes: one fits, both do not.
    before, after = gauge(137.2, 1.0, 1500), gauge(137.2, 2.0, 1500)
    notice = encode_notice("ab12.8", EntityChange("", before["id"], before, after), AT)
    assert notice is not None and len(notice.encode()) <= MAX_NOTICE_BYTES
    relayed = decode_notice(notice, no_fetch)
    assert relayed is not None and relayed.before_partial
    assert relayed.after_json is not None and orjson.loads(relayed.after_json) == after
    assert relayed.changed_attrs == frozenset({LEVEL})


@pytest.mark.parametrize(
    ("kind", "fetches"), [("created", 1), ("updated", 1), ("deleted", 0)], ids=str
)
def test_change_too_large_for_one_document_is_read_by_the_receiver(kind: str, fetches: int) -> None:
    big = gauge(137.2, 5.0, 3000)
    before = None if kind == "created" else big
    after = None if kind == "deleted" else big
    notice = encode_notice("ab12.9", EntityChange("", big["id"], before, after), AT)
    assert notice is not None
    reads: list[str] = []

    def fetch(tenant: str, entity_id: str) -> StoredEntity | None:
        reads.append(entity_id)
        return big

    relayed = decode_notice(notice, fetch)
    assert relayed is not None
    assert len(reads) == fetches
    if kind == "deleted":
        assert relayed.before_json is not None
        assert orjson.loads(relayed.before_json)["type"] == [GAUGE]
        assert relayed.after_json is None
    else:
        assert relayed.after_json is not None and orjson.loads(relayed.after_json) == big


def test_entity_read_for_a_large_notice_that_is_gone_gives_no_event() -> None:
    big = gauge(137.2, 5.0, 3000)
    notice = encode_notice("ab12.10", EntityChange("", big["id"], None, big), AT)
    assert notice is not None
    assert decode_notice(notice, lambda tenant, entity_id: None) is None


def test_change_too_large_for_any_notice_is_refused() -> None:
    huge_id = "urn:ngsi-ld:Gauge:" + "x" * MAX_NOTICE_BYTES
    entity = gauge(137.2, 1.0) | {"id": huge_id}
    assert encode_notice("ab12.11", EntityChange("", huge_id, None, entity), AT) is None


def test_partial_state_before_counts_as_inside_the_box() -> None:
    # In Tokyo before and after: with the state before known this concerns no Toyama map;
    # without it, the map is told the entity left (harmless if it never showed it).
    before, after = gauge(139.7, 1.0, 1500), gauge(139.7, 2.0, 1500)
    notice = encode_notice("ab12.12", EntityChange("", before["id"], before, after), AT)
    assert notice is not None
    relayed = decode_notice(notice, no_fetch)
    assert relayed is not None and relayed.before_partial
    event = EntityEvent(
        1,
        relayed.event_id,
        relayed.tenant,
        relayed.entity_id,
        relayed.before_json,
        relayed.after_json,
        0.0,
        AT,
        relayed.before_partial,
        relayed.changed_attrs,
    )
    box = StreamFilter("", EntitySelector(), bbox=(137.0, 36.5, 137.5, 36.8))
    assert box.event_name(event) == "entityLeft"
