"""Network adapters against the vendors' recorded event examples (see fixtures/README.md)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cityos.ingest.model import (
    GatewayReception,
    IngestError,
    OtherEvent,
    RawMessage,
    StatusReport,
    Uplink,
)
from cityos.ingest.networks import parse_event
from cityos.ingest.networks.fields import event_time

FIXTURES = Path(__file__).parent / "fixtures"
CHIRPSTACK_EVENTS = ("up", "status", "join", "ack", "txack", "log", "location")
DOC_DEV_EUI = "0101010101010101"


def chirpstack_json(event: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "chirpstack" / f"{event}.json").read_text())


def ttn_json(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "ttn" / f"{name}.json").read_text())


def mqtt_chirpstack(event: str, body: bytes, dev_eui: str = DOC_DEV_EUI) -> RawMessage:
    topic = f"application/17c82e96/device/{dev_eui}/event/{event}"
    return RawMessage("mqtt", "chirpstack", topic, body, None, 1_700_000_000_000)


def http_chirpstack(event: str, body: bytes, content_type: str) -> RawMessage:
    return RawMessage(
        "http", "chirpstack", f"/ingest/chirpstack?event={event}", body, content_type, 0
    )


def ttn_message(body: bytes) -> RawMessage:
    return RawMessage("mqtt", "ttn", "v3/app1@ttn/devices/dev1/up", body, None, 1_700_000_000_000)


def only(events: list[Any]) -> Any:
    assert len(events) == 1
    return events[0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            mqtt_chirpstack("up", (FIXTURES / "chirpstack" / "up.json").read_bytes()),
            Uplink(
                network="chirpstack",
                dev_eui=DOC_DEV_EUI,
                observed_at="2022-07-18T09:34:15.775Z",
                dedup_key="3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
                f_port=1,
                f_cnt=0,  # absent in the protobuf JSON mapping: the default value
                payload=b"\xaa",
                network_decoded=None,
                receptions=(GatewayReception("0016c001f153a14c", -36.0, 10.5),),
                spreading_factor=11,
                frequency_hz=867100000,
                device_name="Test device",
                application_id="17c82e96-be03-4f38-aef3-f83d48582d97",
            ),
            id="chirpstack",
        ),
        pytest.param(
            ttn_message((FIXTURES / "ttn" / "uplink.json").read_bytes()),
            Uplink(
                network="ttn",
                dev_eui="0004a30b001c0530",
                observed_at="2020-02-12T15:15:45.789Z",
                dedup_key="0004a30b001c0530:1:1581520500000",
                f_port=0,  # absent: TTN omits zero values
                f_cnt=1,
                payload=base64.b64decode("gkHe"),
                network_decoded={"temperature": 1.0, "luminosity": 0.64},
                receptions=(GatewayReception("gtw1", -35.0, 5.0),),
                spreading_factor=7,
                frequency_hz=868300000,
                device_name="dev1",
                application_id="app1",
            ),
            id="ttn",
        ),
    ],
)
def test_uplink_documented_example(raw: RawMessage, expected: Uplink) -> None:
    assert only(parse_event(raw)) == expected


def test_chirpstack_uplink_with_object_and_counter() -> None:
    body = chirpstack_json("up")
    body["fCnt"] = 42
    body["object"] = {"temperature": 21.5}
    uplink = only(parse_event(mqtt_chirpstack("up", json.dumps(body).encode())))
    assert (uplink.f_cnt, uplink.network_decoded) == (42, {"temperature": 21.5})


@pytest.mark.parametrize("network", ["chirpstack", "ttn"])
def test_gateway_location_of_a_reception(network: str) -> None:
    location = {"latitude": 36.7, "longitude": 137.2}
    if network == "chirpstack":
        body = chirpstack_json("up")
        body["rxInfo"][0]["location"] = location
        raw = mqtt_chirpstack("up", json.dumps(body).encode())
    else:
        body = ttn_json("uplink")
        body["uplink_message"]["rx_metadata"][0]["location"] = location
        raw = ttn_message(json.dumps(body).encode())
    reception = only(parse_event(raw)).receptions[0]
    # Absent inside a present location: the protobuf / TTN default, 0.
    assert (reception.latitude, reception.longitude, reception.altitude_m) == (36.7, 137.2, 0.0)


@pytest.mark.parametrize("event", CHIRPSTACK_EVENTS)
def test_chirpstack_protobuf_body_reads_like_json(event: str) -> None:
    """The .pb fixtures were encoded from the .json ones by the official chirpstack-api."""
    from_json = parse_event(
        http_chirpstack(
            event, (FIXTURES / "chirpstack" / f"{event}.json").read_bytes(), "application/json"
        )
    )
    from_protobuf = parse_event(
        http_chirpstack(
            event,
            (FIXTURES / "chirpstack" / f"{event}.pb").read_bytes(),
            "application/octet-stream",
        )
    )
    assert from_protobuf == from_json


def test_chirpstack_status_battery_is_a_fraction() -> None:
    body = (FIXTURES / "chirpstack" / "status.json").read_bytes()
    assert only(parse_event(mqtt_chirpstack("status", body))) == StatusReport(
        "chirpstack", DOC_DEV_EUI, "2022-07-18T09:35:06.927Z", 0.883, 10.0, False
    )


def test_chirpstack_status_external_power_has_no_battery_level() -> None:
    body = chirpstack_json("status")
    body["externalPowerSource"] = True
    report = only(parse_event(mqtt_chirpstack("status", json.dumps(body).encode())))
    assert (report.battery_level, report.external_power) == (None, True)


@pytest.mark.parametrize("event", ("join", "ack", "txack", "log", "location"))
def test_chirpstack_other_events_keep_their_details(event: str) -> None:
    body = (FIXTURES / "chirpstack" / f"{event}.json").read_bytes()
    result = only(parse_event(mqtt_chirpstack(event, body)))
    assert isinstance(result, OtherEvent)
    assert (result.kind, result.dev_eui) == (event, DOC_DEV_EUI)
    assert "deviceInfo" not in result.details


def test_chirpstack_integration_event_is_other_event() -> None:
    body = (FIXTURES / "chirpstack" / "integration.json").read_bytes()
    result = only(parse_event(mqtt_chirpstack("integration", body, "0016c001f000175a")))
    assert result.kind == "integration"


def test_ttn_redelivery_has_the_same_dedup_key() -> None:
    body = ttn_json("uplink")
    first = only(parse_event(ttn_message(json.dumps(body).encode())))
    again = RawMessage("http", "ttn", "/ingest/ttn/up", json.dumps(body).encode(), None, 9)
    assert only(parse_event(again)).dedup_key == first.dedup_key


def test_ttn_counter_reused_later_is_a_new_uplink() -> None:
    body = ttn_json("uplink")
    first = only(parse_event(ttn_message(json.dumps(body).encode())))
    body["uplink_message"]["received_at"] = "2020-02-12T16:15:45.789585559Z"
    later = only(parse_event(ttn_message(json.dumps(body).encode())))
    assert later.dedup_key != first.dedup_key


@pytest.mark.parametrize(("name", "kind"), [("join", "join"), ("downlink_ack", "ack")])
def test_ttn_other_messages(name: str, kind: str) -> None:
    body = (FIXTURES / "ttn" / f"{name}.json").read_bytes()
    result = only(parse_event(ttn_message(body)))
    assert (result.kind, result.dev_eui) == (kind, "0004a30b001c0530")


def _chirpstack_up(**changes: Any) -> bytes:
    body = chirpstack_json("up")
    body.update(changes)
    return json.dumps(body).encode()


def _ttn_uplink(**changes: Any) -> bytes:
    body = ttn_json("uplink")
    body["uplink_message"].update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (mqtt_chirpstack("up", b"{not json"), "invalid-json"),
        (mqtt_chirpstack("up", b"[1, 2]"), "invalid-message"),
        (mqtt_chirpstack("up", _chirpstack_up(data="q g==")), "bad-base64"),
        (mqtt_chirpstack("up", _chirpstack_up(data="qg")), "bad-base64"),
        (mqtt_chirpstack("up", _chirpstack_up(deviceInfo={"devEui": "xyz"})), "invalid-message"),
        (mqtt_chirpstack("up", _chirpstack_up(time="yesterday")), "invalid-message"),
        (mqtt_chirpstack("up", _chirpstack_up(fCnt="many")), "invalid-message"),
        (mqtt_chirpstack("up", _chirpstack_up(object=[21.5])), "invalid-message"),
        (
            mqtt_chirpstack("up", _chirpstack_up(rxInfo=[{"gatewayId": "g", "snr": "x"}])),
            "invalid-message",
        ),
        (mqtt_chirpstack("up", _chirpstack_up(), dev_eui="0202020202020202"), "invalid-message"),
        (mqtt_chirpstack("bogus", _chirpstack_up()), "invalid-message"),
        (http_chirpstack("up", b"\xff\xff\xff", "application/x-protobuf"), "invalid-json"),
        (RawMessage("http", "chirpstack", "/ingest/chirpstack", b"{}", None, 0), "invalid-message"),
        (ttn_message(b"{}"), "invalid-message"),
        (ttn_message(_ttn_uplink(decoded_payload=[1.0])), "invalid-message"),
        (
            ttn_message(
                _ttn_uplink(rx_metadata=[{"gateway_ids": {"gateway_id": "g"}, "rssi": "x"}])
            ),
            "invalid-message",
        ),
        (
            ttn_message(json.dumps({"end_device_ids": {"dev_eui": "0004A30B001C0530"}}).encode()),
            "invalid-message",
        ),
    ],
)
def test_bad_input_raises_its_reason(raw: RawMessage, reason: str) -> None:
    with pytest.raises(IngestError) as caught:
        parse_event(raw)
    assert caught.value.reason == reason


def test_ttn_bad_payload_base64() -> None:
    body = ttn_json("uplink")
    body["uplink_message"]["frm_payload"] = "!!"
    with pytest.raises(IngestError) as caught:
        parse_event(ttn_message(json.dumps(body).encode()))
    assert caught.value.reason == "bad-base64"


def test_missing_time_uses_the_receive_time() -> None:
    body = chirpstack_json("up")
    del body["time"]
    uplink = only(parse_event(mqtt_chirpstack("up", json.dumps(body).encode())))
    assert uplink.observed_at == "2023-11-14T22:13:20.000Z"


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-24T01:02:03.456789123Z", datetime(2026, 11, 24, 1, 2, 3, 456000, tzinfo=UTC)),
        ("2026-11-24T01:02:03.9Z", datetime(2026, 11, 24, 1, 2, 3, 900000, tzinfo=UTC)),
        ("2026-11-24T01:02:03Z", datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)),
        ("2026-11-24T10:02:03.5+09:00", datetime(2026, 11, 24, 1, 2, 3, 500000, tzinfo=UTC)),
        ("1969-12-31T23:59:59.999Z", datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
    ],
)
def test_event_time_is_read_to_the_millisecond(text: str, moment: datetime) -> None:
    expected_ms = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    expected_text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    # Twice: the second reading takes the date and second from what the first remembered.
    for _ in range(2):
        assert event_time(text, "time", 0) == (expected_text, expected_ms)


@pytest.mark.parametrize(
    "text", ["2026-02-30T00:00:00Z", "2026-11-24T25:00:00.1Z", "2026-11-24T01:02:03.\u0663Z"]
)
def test_impossible_event_time_is_refused(text: str) -> None:
    with pytest.raises(IngestError) as caught:
        event_time(text, "time", 0)
    assert caught.value.reason == "invalid-message"
