"""CSV device import (plain and The Things Stack formats) and the ``cityos devices``
commands, on a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityos.broker.service import ContextBroker
from cityos.cli import app
from cityos.ingest.device_import import CsvFormatError, import_devices, read_devices
from cityos.ingest.profiles import BUILTIN_PROFILES
from cityos.ingest.registry import DeviceRegistry
from cityos.storage.sqlite import SqliteStorage

CSV = Path(__file__).parent / "fixtures" / "csv"
PLAIN = (CSV / "plain.csv").read_text(encoding="utf-8")
TTS = (CSV / "tts-all-columns.csv").read_text(encoding="utf-8")
TTS_MINIMAL = (CSV / "tts-minimal.csv").read_text(encoding="utf-8")


def test_plain_csv_rows_become_devices() -> None:
    devices, errors = read_devices(PLAIN, BUILTIN_PROFILES)
    assert errors == []
    (line, gauge), (_, tracker) = devices
    assert line == 2
    assert gauge.dev_eui == "70b3d57ed0000001"
    assert (gauge.name, gauge.owner, gauge.tags) == (
        "神通川 神通大橋",
        "toyama-city",
        ("river", "jinzu"),
    )
    assert gauge.location == (137.2018, 36.7124)
    assert gauge.parameters == {"mounting_height_m": 11.0}
    assert gauge.target_entity_id == "urn:ngsi-ld:WaterObserved:toyama-gauge-03"
    assert (tracker.profile.name, tracker.parameters) == ("gps-tracker", {})


def test_tts_csv_takes_the_profile_option_and_ignores_keys() -> None:
    devices, errors = read_devices(TTS, BUILTIN_PROFILES, default_profile="cayenne-lpp")
    assert errors == []
    assert [(d.dev_eui, d.name, d.parameters, d.profile.name) for _, d in devices] == [
        ("1111111111111111", "Device 1", {}, "cayenne-lpp"),
        ("2222222222222222", "Device 2", {}, "cayenne-lpp"),
        ("3333333333333333", "Device 3", {}, "cayenne-lpp"),
    ]


def test_tts_csv_without_name_is_named_by_id_or_dev_eui() -> None:
    without_names = TTS.replace(";Device 2;", ";;")
    devices, _ = read_devices(without_names, BUILTIN_PROFILES, default_profile="cayenne-lpp")
    assert devices[1][1].name == "test-two"
    minimal, _ = read_devices(TTS_MINIMAL, BUILTIN_PROFILES, default_profile="cayenne-lpp")
    assert minimal[0][1].name == "1111111111111111"


def test_tts_csv_profile_column_overrides_the_option() -> None:
    header, first, *rest = TTS_MINIMAL.splitlines()
    text = "\n".join([header + ";profile", first + ";gps-tracker", *(r + ";" for r in rest)])
    devices, errors = read_devices(text, BUILTIN_PROFILES, default_profile="cayenne-lpp")
    assert errors == []
    assert [d.profile.name for _, d in devices] == ["gps-tracker", "cayenne-lpp", "cayenne-lpp"]


def test_tts_csv_without_a_profile_is_refused_per_row() -> None:
    devices, errors = read_devices(TTS, BUILTIN_PROFILES)
    assert devices == []
    assert [(e.line, e.message) for e in errors] == [
        (line, "no profile (add a profile column or use --profile)") for line in (2, 3, 4)
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("xyz,a,gps-tracker,,,,,,", "dev_eui 'xyz' is not 16 hex digits"),
        ("70b3d57ed0000009,a,boiler,,,,,,", "unknown profile 'boiler'"),
        ("70b3d57ed0000009,a,gps-tracker,north,,,,,", "are not numbers"),
        ("70b3d57ed0000009,a,gps-tracker,95,137,,,,", "outside WGS 84"),
        ("70b3d57ed0000009,a,water-level,,,,,,", "needs column(s) mounting_height_m"),
        ("70b3d57ed0000009,a,gps-tracker,,,,,gauge-1,", "is not an entity id"),
        ("70b3d57ed0000009,a,gps-tracker,,,,,,,extra", "more fields than the header"),
        ("70b3d57ed0000001,again,gps-tracker,,,,,,", "duplicate of line 2"),
    ],
)
def test_bad_row_is_reported_with_its_line(row: str, message: str) -> None:
    devices, errors = read_devices(PLAIN + row + "\n", BUILTIN_PROFILES)
    assert len(devices) == 2
    assert len(errors) == 1
    assert errors[0].line == 4
    assert message in errors[0].message


def test_file_without_dev_eui_column_is_refused() -> None:
    with pytest.raises(CsvFormatError):
        read_devices("name,profile\na,b\n", BUILTIN_PROFILES)


def test_import_registers_in_batches_with_progress(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "import.sqlite3")
    registry = DeviceRegistry(ContextBroker(storage))
    rows = "".join(
        f"70b3d57ed1{n:06x},sensor {n},temperature-humidity,36.7,137.2,,,,\n" for n in range(1203)
    )
    progress: list[tuple[int, int]] = []
    report = import_devices(
        registry, PLAIN.split("\n", 1)[0] + "\n" + rows, on_progress=lambda *a: progress.append(a)
    )
    assert (report.imported, report.errors) == (1203, [])
    assert progress == [(500, 1203), (1000, 1203), (1203, 1203)]
    assert DeviceRegistry(ContextBroker(storage)).load() == 1203
    storage.close()


runner = CliRunner()


def test_cli_import_reports_bad_rows_and_exits_1(tmp_path: Path) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text(PLAIN + "zz,bad,gps-tracker,,,,,,\n", encoding="utf-8")
    result = runner.invoke(app, ["devices", "import", str(csv_file), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "2 of 3 devices imported" in result.output
    assert "dev_eui 'zz' is not 16 hex digits" in result.output
    listed = runner.invoke(app, ["devices", "list", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 0
    assert "2 devices / 2 台" in listed.output


def test_cli_import_of_a_clean_file_exits_0(tmp_path: Path) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text(TTS, encoding="utf-8")
    result = runner.invoke(
        app,
        [
            "devices",
            "import",
            str(csv_file),
            "--profile",
            "cayenne-lpp",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output


def test_cli_import_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["devices", "import", str(tmp_path / "nope.csv"), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2


def test_cli_profiles_lists_cayenne() -> None:
    result = runner.invoke(app, ["devices", "profiles"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "cayenne-lpp" in result.output and "water-level" in result.output
