"""The ``cityos devices ...`` and ``cityos simulate`` commands (``cli.py`` mounts them).

They work on the database directly, like ``cityos keys``: ``--data-dir`` for SQLite or
``--database`` for PostgreSQL. A running server picks new devices up within its
registry's retry delay (see ``registry``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cityos.broker.changes import ObservedStorage
from cityos.broker.service import ContextBroker
from cityos.ingest.profiles import BUILTIN_PROFILES
from cityos.ingest.registry import DeviceRegistry
from cityos.settings import Settings

devices_app = typer.Typer(help="Sensor devices / センサー端末", no_args_is_help=True)
console = Console()

DataDirOption = Annotated[Path | None, typer.Option(help="Directory of the SQLite database")]
DatabaseOption = Annotated[
    str | None, typer.Option(help="Database URL, e.g. postgresql://user@host/dbname")
]


@contextmanager
def open_registry(data_dir: Path | None, database: str | None) -> Iterator[DeviceRegistry]:
    """A loaded registry on the configured database, closed afterwards."""
    # The CLI sits above every layer; app.open_storage is the one place that knows
    # how to open each backend.
    from cityos.app import open_storage

    overrides: dict[str, Any] = {"data_dir": data_dir, "database": database}  # Any: fields
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if settings.database is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = ObservedStorage(open_storage(settings))
    try:
        registry = DeviceRegistry(ContextBroker(storage))
        registry.load()
        yield registry
    finally:
        storage.close()


@devices_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="CSV file (plain or The Things Stack's)")],
    profile: Annotated[
        str | None, typer.Option(help="Profile for rows without a profile column")
    ] = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Import devices from CSV / CSVから端末を一括登録します。

    Exit code 0: every row imported; 1: some rows refused (the others imported);
    2: the file cannot be read.
    """
    from cityos.ingest.device_import import CsvFormatError, import_devices

    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        console.print(f"[red]Cannot read {file}: {error} / ファイルを読めません[/]")
        raise typer.Exit(2) from None
    with (
        open_registry(data_dir, database) as registry,
        Progress(
            TextColumn("Importing / 登録中"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("import", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            report = import_devices(registry, text, default_profile=profile, on_progress=advance)
        except CsvFormatError as error:
            console.print(f"[red]{error}[/]")
            raise typer.Exit(2) from None
    console.print(
        f"{report.imported} of {report.rows} devices imported / "
        f"{report.rows} 件中 {report.imported} 件を登録しました"
    )
    if report.errors:
        table = Table(
            "line / 行", "DevEUI", "error / エラー", title="Rows not imported / 未登録の行"
        )
        for row_error in report.errors:
            table.add_row(str(row_error.line), row_error.dev_eui, row_error.message)
        console.print(table)
        raise typer.Exit(1)


@devices_app.command("list")
def list_command(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """List registered devices / 登録済み端末の一覧。"""
    with open_registry(data_dir, database) as registry:
        devices = registry.devices()
    table = Table("DevEUI", "name / 名前", "profile", "lat", "lon", "owner", "tags", "target")
    for device in devices:
        lon, lat = device.location or ("", "")
        table.add_row(
            device.dev_eui,
            device.name,
            device.profile.name,
            str(lat),
            str(lon),
            device.owner or "",
            " ".join(device.tags),
            device.target_entity_id or "",
        )
    console.print(table)
    console.print(f"{len(devices)} devices / {len(devices)} 台")


@devices_app.command("profiles")
def profiles_command() -> None:
    """List the built-in device profiles / 組み込みの端末プロファイル一覧。"""
    table = Table("profile", "entity type", "interval", "attributes (unit)", "description / 説明")
    for profile in BUILTIN_PROFILES.values():
        attributes = ", ".join(
            f"{m.attribute} ({m.unit_code})" if m.unit_code else m.attribute
            for m in profile.mappings
        )
        table.add_row(
            profile.name,
            profile.entity_type,
            f"{profile.expected_interval_s:.0f} s",
            attributes or "one per channel on the Device / チャネルごと",
            profile.description,
        )
    console.print(table)


def simulate_command(
    to: Annotated[
        str,
        typer.Option(help="mqtt://host:port, or an HTTP ingest URL (.../ingest/chirpstack)"),
    ] = "mqtt://127.0.0.1:1883",
    network_format: Annotated[
        str, typer.Option("--format", help="chirpstack or ttn")
    ] = "chirpstack",
    rate: Annotated[float, typer.Option(help="Uplinks per second in total (0: flat out)")] = 10.0,
    devices: Annotated[int, typer.Option(help="Number of simulated devices")] = 100,
    duration: Annotated[float, typer.Option(help="Seconds to run (0: until Ctrl-C)")] = 60.0,
    scenario: Annotated[str, typer.Option(help="none or flood")] = "none",
    river: Annotated[str, typer.Option(help="River that floods (flood scenario)")] = "神通川",
    flood_minutes: Annotated[float, typer.Option(help="Minutes to reach flood level")] = 5.0,
    secret: Annotated[
        str | None,
        typer.Option(help="X-Ingest-Secret for HTTP targets", envvar="CITYOS_INGEST_SECRET"),
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Register the simulated devices first")
    ] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Send simulated Toyama sensor traffic / 富山市のセンサー通信を模擬送信します。"""
    from cityos.ingest import simulator

    if network_format not in ("chirpstack", "ttn"):
        console.print("[red]--format must be chirpstack or ttn[/]")
        raise typer.Exit(2)
    if scenario not in ("none", "flood"):
        console.print("[red]--scenario must be none or flood[/]")
        raise typer.Exit(2)
    fleet = simulator.build_fleet(devices)
    if register:
        with open_registry(data_dir, database) as registry:
            refused = registry.register_many(device.registration() for device in fleet)
        console.print(
            f"Registered {len(fleet) - len(refused)} simulated devices / "
            f"模擬端末 {len(fleet) - len(refused)} 台を登録しました"
        )
    flood = simulator.FloodScenario(river, flood_minutes) if scenario == "flood" else None
    builder = simulator.TrafficBuilder(
        fleet,
        network="ttn" if network_format == "ttn" else "chirpstack",
        flood=flood,
    )
    try:
        publisher = simulator.open_publisher(to, builder.network, secret=secret)
    except (ValueError, OSError) as error:
        console.print(f"[red]Cannot connect to {to}: {error} / 接続できません[/]")
        raise typer.Exit(2) from None
    console.print(
        f"Sending {network_format} uplinks from {len(fleet)} devices to {to} at "
        f"{rate or 'max'} /s / {to} へ送信中 (Ctrl-C で停止)"
    )
    try:
        report = simulator.run(builder, publisher, rate=rate, duration_s=duration or None)
    except KeyboardInterrupt:
        publisher.close(timeout_s=5)
        raise typer.Exit(0) from None
    except OSError as error:
        console.print(f"[red]Sending failed: {error} / 送信できません[/]")
        raise typer.Exit(2) from None
    console.print(
        f"Sent {report.sent} uplinks in {report.seconds:.1f} s ({report.rate:.0f}/s), "
        f"{report.acknowledged} acknowledged / {report.sent} 件送信、{report.acknowledged} 件確認"
    )
