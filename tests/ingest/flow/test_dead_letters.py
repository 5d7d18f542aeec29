"""Dead letters: listed by ``cityos ingest dead-letters`` and replayed by ``cityos ingest
replay`` once the registry is fixed (successes leave the store, failures stay with the
new reason); the coverage read-out counts every gateway that heard a stored uplink."""

from __future__ import annotations

from typer.testing import CliRunner

from cityos.cli import app
from tests.ingest.flow.conftest import (
    IngestServer,
    chirpstack_up,
    new_dev_eui,
    wait_for,
    water_level_payload,
)

runner = CliRunner(env={"COLUMNS": "250"})


def _letters(server: IngestServer, **params: str) -> list[dict[str, object]]:
    with server.http() as http:
        return list(http.get("/ingest/dead-letters", params=params).json())


def test_dead_letters_lists_a_message_with_its_reason(ingest_server: IngestServer) -> None:
    dev_eui = new_dev_eui()
    ingest_server.post_chirpstack(chirpstack_up(dev_eui, water_level_payload(1.0)))

    result = runner.invoke(
        app, ["ingest", "dead-letters", "--device", dev_eui, "--url", ingest_server.base_url]
    )

    assert result.exit_code == 0, result.output
    assert "unknown-device" in result.output
    assert dev_eui in result.output


def test_replay_after_registering_the_device_stores_it_and_empties_the_store(
    ingest_server: IngestServer,
) -> None:
    dev_eui = new_dev_eui()
    ingest_server.post_chirpstack(chirpstack_up(dev_eui, water_level_payload(1.0)))
    ingest_server.register(dev_eui)

    result = runner.invoke(
        app, ["ingest", "replay", "--device", dev_eui, "--url", ingest_server.base_url]
    )

    assert result.exit_code == 0, result.output
    assert "1 processed" in result.output
    assert ingest_server.entity(f"urn:ngsi-ld:WaterObserved:{dev_eui}") is not None
    assert _letters(ingest_server, device=dev_eui) == []


def test_replay_that_fails_again_keeps_the_letter_with_the_new_reason(
    ingest_server: IngestServer,
) -> None:
    dev_eui = new_dev_eui()
    ingest_server.post_chirpstack(chirpstack_up(dev_eui, water_level_payload(1.0)))
    ingest_server.register(dev_eui, parameters={})  # lacks mounting_height_m

    result = runner.invoke(
        app, ["ingest", "replay", "--device", dev_eui, "--url", ingest_server.base_url]
    )

    assert result.exit_code == 1
    letters = _letters(ingest_server, device=dev_eui)
    assert [(letter["reason"], letter["attempts"]) for letter in letters] == [("mapping-error", 2)]


def test_unauthorized_letters_keep_no_body_and_are_not_replayable(
    ingest_server: IngestServer,
) -> None:
    dev_eui = new_dev_eui()
    ingest_server.post_chirpstack(chirpstack_up(dev_eui, water_level_payload(1.0)), secret="no")

    letters = [
        letter
        for letter in _letters(ingest_server, reason="unauthorized", limit="1000")
        if letter["bodySize"] and letter["body"] is None
    ]

    assert letters
    assert all(letter["replayable"] is False for letter in letters)


def test_coverage_counts_gateways_that_heard_stored_uplinks(ingest_server: IngestServer) -> None:
    dev_eui = new_dev_eui()
    gateway = f"gw-{new_dev_eui()}"
    ingest_server.register(dev_eui)
    for f_cnt, rssi in enumerate((-100, -90, -80), start=1):
        body = chirpstack_up(
            dev_eui,
            water_level_payload(1.0),
            f_cnt=f_cnt,
            at=f"2026-11-24T03:0{f_cnt}:00.000Z",
            gateway=gateway,
            rssi=rssi,
            snr=2.5,
        )
        assert ingest_server.post_chirpstack(body).status_code == 200

    with ingest_server.http() as http:
        coverage = {g["gatewayId"]: g for g in http.get("/ingest/coverage").json()}

    assert coverage[gateway]["uplinks"] == 3
    assert coverage[gateway]["rssiDbm"] == {
        "count": 3,
        "min": -100,
        "p10": -100,
        "p50": -90,
        "p90": -80,
        "max": -80,
    }
    assert coverage[gateway]["snrDb"]["p50"] == 2.5
    result = runner.invoke(app, ["coverage", "--url", ingest_server.base_url])
    assert result.exit_code == 0 and gateway in result.output


def test_stats_cli_shows_counters(ingest_server: IngestServer) -> None:
    wait_for(lambda: ingest_server.stats()["mqtt"]["connected"], what="MQTT")

    result = runner.invoke(app, ["ingest", "stats", "--url", ingest_server.base_url])

    assert result.exit_code == 0, result.output
    assert "uplinksStored" in result.output
