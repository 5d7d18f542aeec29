"""The ``cityos`` command: serve, demo, keys, db, devices, simulate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from cityos.ingest.commands import devices_app, simulate_command
from cityos.settings import Settings

if TYPE_CHECKING:
    from cityos.storage.keys import KeyStore

app = typer.Typer(help="cityos — city data platform (都市OS)", no_args_is_help=True)
keys_app = typer.Typer(help="API keys / APIキー", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="Database schema / データベース", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(devices_app, name="devices")
app.command("simulate")(simulate_command)
console = Console()


def _add_ingest_commands() -> None:
    from cityos.ingest.cli import coverage, ingest_app

    app.add_typer(ingest_app, name="ingest")
    app.command("coverage")(coverage)


_add_ingest_commands()

HostOption = Annotated[str | None, typer.Option(help="Address to listen on")]
PortOption = Annotated[int | None, typer.Option(help="Port to listen on")]
DataDirOption = Annotated[Path | None, typer.Option(help="Directory for the SQLite database")]
DatabaseOption = Annotated[
    str | None,
    typer.Option(help="Database URL, e.g. postgresql://user@host/dbname (default: SQLite)"),
]


def _settings(**overrides: Any) -> Settings:  # Any: pydantic field values
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _run(settings: Settings, *, access_log: bool = False) -> None:
    from cityos.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=access_log,
        loop="uvloop",
        http="httptools",
        # Event streams (GET /events) never finish on their own; without a limit a
        # graceful shutdown would wait for every browser to go away.
        timeout_graceful_shutdown=5,
    )


def _run_workers(
    settings: Settings, overrides: dict[str, Any], *, access_log: bool = False
) -> None:  # Any: pydantic field values
    """Serve with ``settings.workers`` uvicorn worker processes on one port.

    Each worker builds its own app from the environment (``app_from_environment``), so
    the command-line overrides are exported as ``CITYOS_*`` variables first. Pending
    migrations are applied here, once, rather than by every worker at the same time.
    """
    from cityos.app import upgrade_database
    from cityos.storage.postgres import is_postgres_url

    if not is_postgres_url(settings.database):
        Console(stderr=True).print(
            f"[yellow]{settings.workers} workers on SQLite: their writes wait for each other "
            "and each /events stream sees only its own worker's changes; use PostgreSQL "
            "(--database) for several processes. / SQLite では複数ワーカーの書き込みは直列に"
            "なり、/events は自分のワーカーの変更しか配信しません。複数プロセスには "
            "PostgreSQL を使ってください。[/]"
        )
    if settings.upgrade_on_start:
        upgrade_database(settings)
        overrides["upgrade_on_start"] = False
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"CITYOS_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    uvicorn.run(
        "cityos.app:app_from_environment",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=access_log,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
    )


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    upgrade: Annotated[
        bool | None, typer.Option("--upgrade", help="Apply pending schema migrations first")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="API processes on the one port (PostgreSQL; default CITYOS_WORKERS or 1) / "
            "ワーカープロセス数",
        ),
    ] = None,
) -> None:
    """Run the platform (NGSI-LD broker and APIs) / プラットフォームを起動します。"""
    overrides: dict[str, Any] = {  # Any: pydantic field values
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "database": database,
        "upgrade_on_start": upgrade,
        "workers": workers,
    }
    settings = _settings(**overrides)
    if settings.workers > 1:
        _run_workers(settings, overrides, access_log=access_log)
    else:
        _run(settings, access_log=access_log)


@db_app.command("upgrade")
def db_upgrade(database: DatabaseOption = None, data_dir: DataDirOption = None) -> None:
    """Apply pending schema migrations / スキーマを最新にします。"""
    from cityos.app import upgrade_database

    version, applied = upgrade_database(_settings(database=database, data_dir=data_dir))
    if applied:
        console.print(
            f"Applied migrations {', '.join(map(str, applied))}; schema at version {version} / "
            f"スキーマをバージョン {version} に更新しました"
        )
    else:
        console.print(
            f"Schema already at version {version} / スキーマは最新です (version {version})"
        )


@db_app.command("copy")
def db_copy(
    source: Annotated[
        str, typer.Option("--from", help="Source: sqlite:///path/cityos.sqlite3 or postgresql://")
    ],
    target: Annotated[str, typer.Option("--to", help="Target database URL")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace what the target holds / 既存データを置換")
    ] = False,
) -> None:
    """Copy a whole installation between databases / インストール全体を別のDBへ複製します。"""
    from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn
    from rich.progress import Progress as ProgressBar

    from cityos.storage.transfer import TransferError, copy_installation

    with ProgressBar(
        TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(table: str, done: int, total: int | None) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.update(tasks[table], advance=done, total=total)

        try:
            counts = copy_installation(source, target, force=force, progress=progress)
        except TransferError as error:
            bar.stop()
            console.print(f"[red]{error}[/] / コピーできません")
            raise typer.Exit(2) from None
    table = Table("table / 種類", "rows / 件数")
    for kind, count in counts.items():
        table.add_row(kind, str(count))
    console.print(table)
    console.print(f"Copied {source} to {target} / コピーが完了しました")


@db_app.command("backup")
def db_backup(
    to: Annotated[Path, typer.Option("--to", help="Backup file to write / 書き出すファイル")],
    database: DatabaseOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Back up the installation (safe while serving) / バックアップを作成します。"""
    from cityos.storage import backup
    from cityos.storage.postgres import is_postgres_url

    settings = _settings(database=database, data_dir=data_dir)
    try:
        if is_postgres_url(settings.database):
            assert settings.database is not None
            backup.backup_postgres(settings.database, to)
            what = "pg_dump -Fc"
        else:
            what = ", ".join(backup.backup_sqlite(settings.sqlite_path, to))
    except backup.BackupError as error:
        console.print(f"[red]{error}[/] / バックアップできません")
        raise typer.Exit(2) from None
    console.print(f"Backed up to {to} ({what}) / バックアップしました")


@db_app.command("restore")
def db_restore(
    source: Annotated[Path, typer.Option("--from", help="Backup file / バックアップファイル")],
    database: DatabaseOption = None,
    data_dir: DataDirOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing installation / 既存を置換")
    ] = False,
) -> None:
    """Restore a backup; stop the server first / バックアップから復元します（サーバー停止後）。"""
    from cityos.storage import backup
    from cityos.storage.postgres import is_postgres_url

    settings = _settings(database=database, data_dir=data_dir)
    try:
        if is_postgres_url(settings.database):
            assert settings.database is not None
            backup.restore_postgres(source, settings.database, force=force)
        else:
            backup.restore_sqlite(source, settings.sqlite_path, force=force)
    except backup.BackupError as error:
        console.print(f"[red]{error}[/] / 復元できません")
        raise typer.Exit(2) from None
    console.print(f"Restored {source} / 復元しました")


@app.command()
def demo(
    host: HostOption = None,
    port: PortOption = None,
    data_dir: Annotated[Path, typer.Option(help="Directory for the demo database")] = Path(
        "data/demo"
    ),
    simulate: Annotated[
        bool, typer.Option(help="Feed simulated sensors through MQTT / センサーを模擬送信")
    ] = True,
    devices: Annotated[int, typer.Option(help="Simulated devices / 模擬端末数")] = 60,
    rate: Annotated[float, typer.Option(help="Simulated uplinks per second")] = 5.0,
) -> None:
    """Run with Toyama demo data and print an admin key / 富山市のデモデータで起動します。"""
    settings = _settings(host=host, port=port, data_dir=data_dir, auth="on")
    if not settings.public_types:
        # River levels are public information in Toyama; the demo shows them to anyone.
        settings = settings.model_copy(update={"public_types": ["WaterObserved"]})
    from cityos.demo import seed_demo
    from cityos.storage.keys import SqliteKeyStore

    created = asyncio.run(seed_demo(settings))
    keys = SqliteKeyStore(settings.sqlite_path.with_name("keys.sqlite3"))
    key, _ = keys.create("toyama-city", "admin")
    keys.close()
    base = f"http://{settings.host}:{settings.port}"
    console.print(
        f"[bold green]cityos demo[/] — {created} Toyama entities ready / "
        "富山市のデモデータを用意しました"
    )
    console.print(f"  NGSI-LD API: {base}/ngsi-ld/v1/entities?type=WaterObserved")
    console.print(f"  API docs:    {base}/docs")
    console.print(f"  Public without a key / キー不要で公開: {', '.join(settings.public_types)}")
    console.print(f"  Admin API key (shown once) / 管理者APIキー（一度だけ表示）: [bold]{key}[/]")
    feed = _demo_feed(settings, devices, rate) if simulate else None
    if feed is not None:
        settings = feed.settings
    try:
        _run(settings)
    finally:
        if feed is not None:
            feed.stop()


def _demo_feed(settings: Settings, devices: int, rate: float) -> Any:  # Any: DemoFeed
    """The simulator feed of the demo (see ``cityos.ingest.demo_feed``), or ``None``."""
    from cityos.ingest.demo_feed import DemoFeed, prepare

    fed = prepare(settings, devices)
    if fed is None:
        console.print(
            "  No MQTT broker on 127.0.0.1:1883 (or CITYOS_MQTT_URL): no simulated sensors / "
            "MQTT ブローカーがないため模擬センサーなし"
        )
        return None
    feed = DemoFeed(fed, devices, rate)
    feed.start()
    console.print(
        f"  Simulated sensors / 模擬センサー: {devices} devices, {rate:g}/s via {fed.mqtt_url} "
        f"(flood scenario); GET {fed.host}:{fed.port}/ingest/stats"
    )
    console.print(f"  HTTP ingest secret / HTTP取り込みシークレット: {fed.ingest_secret}")
    return feed


def _key_store(data_dir: Path | None, database: str | None) -> KeyStore:
    """The key store of the installation the options name (SQLite files or PostgreSQL)."""
    from cityos.storage.migrations import SchemaOutOfDateError
    from cityos.storage.state_stores import open_key_store

    settings = _settings(data_dir=data_dir, database=database)
    try:
        return open_key_store(settings.database, settings.sqlite_path)
    except SchemaOutOfDateError as error:
        console.print(
            f"[red]{error}[/] / スキーマが古いため `cityos db upgrade` を実行してください"
        )
        raise typer.Exit(2) from None


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation the key belongs to")],
    role: Annotated[str, typer.Option(help="admin, operator, company or public")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Create an API key and print it once / APIキーを作成し一度だけ表示します。"""
    from cityos.core.errors import CityosError

    keys = _key_store(data_dir, database)
    try:
        key, principal = keys.create(org, role)
    except CityosError as error:
        console.print(f"[red]{error.detail}[/]")
        raise typer.Exit(2) from None
    finally:
        keys.close()
    typer.echo(key)
    Console(stderr=True).print(
        f"key id {principal.key_id} for {org} ({role}); store it now, it is not "
        "shown again / このキーは再表示されません",
        style="dim",
    )


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """List API keys (never the keys themselves) / APIキー一覧。"""
    keys = _key_store(data_dir, database)
    table = Table("key id", "org", "role", "created", "revoked")
    for row in keys.list_keys():
        table.add_row(*(str(row[c]) for c in ("key_id", "org", "role", "created_at", "revoked")))
    keys.close()
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str, data_dir: DataDirOption = None, database: DatabaseOption = None
) -> None:
    """Revoke an API key by its id / APIキーを無効にします。"""
    keys = _key_store(data_dir, database)
    found = keys.revoke(key_id)
    keys.close()
    if not found:
        console.print(f"[red]No key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}")


if __name__ == "__main__":
    app()
