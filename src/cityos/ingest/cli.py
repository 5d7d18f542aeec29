"""``cityos ingest ...`` and ``cityos coverage``: the operator's view of ingestion.

They talk to a running server over HTTP (``--url``, an API key in ``--key`` or
``CITYOS_API_KEY``): replaying dead letters must happen in the process that ingests,
so that its batches, caches and subscriptions see the writes.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

ingest_app = typer.Typer(help="Sensor ingestion / センサーデータ取り込み", no_args_is_help=True)
console = Console()

UrlOption = Annotated[
    str, typer.Option(help="Base URL of the running cityos server / サーバーのURL")
]
KeyOption = Annotated[
    str | None,
    typer.Option(envvar="CITYOS_API_KEY", help="API key (or CITYOS_API_KEY) / APIキー"),
]
ReasonOption = Annotated[str | None, typer.Option(help="Only this reason / 理由で絞り込み")]
DeviceOption = Annotated[str | None, typer.Option(help="Only this DevEUI / DevEUIで絞り込み")]
SinceOption = Annotated[
    str | None, typer.Option(help="Only since this ISO 8601 time / この時刻以降")
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _call(method: str, url: str, path: str, key: str | None, **kwargs: Any) -> Any:  # Any: JSON
    headers = {"X-API-Key": key} if key else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, headers=headers, timeout=120, **kwargs
        )
    except httpx.HTTPError as error:
        console.print(f"[red]Cannot reach {url}: {error} / サーバーに接続できません[/]")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        console.print(f"[red]{response.status_code}: {detail}[/]")
        raise typer.Exit(1)
    return response.json()


@ingest_app.command("stats")
def stats(url: UrlOption = DEFAULT_URL, key: KeyOption = None) -> None:
    """Counters and dead letters per reason / 取り込み件数と理由別のデッドレター数。"""
    body = _call("GET", url, "/ingest/stats", key)
    process = body.get("process") or {}
    table = Table("counter / 項目", "value / 値")
    mqtt = body.get("mqtt")
    table.add_row("MQTT", "off / なし" if mqtt is None else str(mqtt))
    table.add_row("backlog / 待ち", str(body.get("backlog", 0)))
    for name in ("uplinksStored", "uplinksDuplicate", "statusEvents", "batches", "largestBatch"):
        table.add_row(name, str(process.get(name, 0)))
    for transport, count in sorted((process.get("received") or {}).items()):
        table.add_row(f"received / 受信 ({transport})", str(count))
    for reason, count in sorted((process.get("rejected") or {}).items()):
        table.add_row(f"rejected / 拒否 ({reason})", str(count))
    for reason, count in sorted((body.get("deadLetters") or {}).items()):
        table.add_row(f"dead letters / デッドレター ({reason})", str(count))
    console.print(table)


@ingest_app.command("dead-letters")
def dead_letters(
    reason: ReasonOption = None,
    device: DeviceOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(help="At most this many / 最大件数")] = 50,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List messages that could not be processed / 処理できなかったメッセージの一覧。"""
    params = {"reason": reason, "device": device, "since": since, "limit": limit}
    letters = _call(
        "GET", url, "/ingest/dead-letters", key, params={k: v for k, v in params.items() if v}
    )
    table = Table(
        "id", "reason / 理由", "device", "transport", "received / 受信", "tries", "detail / 詳細"
    )
    for letter in letters:
        table.add_row(
            str(letter["id"]),
            letter["reason"],
            letter.get("devEui") or "-",
            letter["transport"],
            letter["receivedAt"],
            str(letter["attempts"]),
            letter["detail"],
        )
    console.print(table)
    console.print(f"{len(letters)} dead letter(s) / 件")


@ingest_app.command("replay")
def replay(
    ids: Annotated[list[int] | None, typer.Option("--id", help="Letter id (repeatable)")] = None,
    reason: ReasonOption = None,
    device: DeviceOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(help="At most this many / 最大件数")] = 1000,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Process dead letters again after fixing the registry or a profile /
    デバイス登録やプロファイルを直した後にデッドレターを再処理します。"""
    selection: dict[str, Any] = {"limit": limit}  # Any: JSON values
    for name, value in (("ids", ids), ("reason", reason), ("device", device), ("since", since)):
        if value:
            selection[name] = value
    body = _call("POST", url, "/ingest/dead-letters/replay", key, json=selection)
    counts = body.get("counts", {})
    stored = counts.get("stored", 0) + counts.get("duplicate", 0) + counts.get("ignored", 0)
    failed = counts.get("rejected", 0)
    console.print(
        f"Replayed {len(body.get('results', []))}: {stored} processed (removed from the store), "
        f"{failed} failed again (kept with the new reason), "
        f"{counts.get('not-replayable', 0)} not replayable / "
        f"再処理 {stored} 件成功、{failed} 件失敗"
    )
    for result in body.get("results", []):
        if result["status"] == "rejected":
            console.print(f"  {result['id']}: {result['reason']}")
    if failed:
        raise typer.Exit(1)


def coverage(
    since: SinceOption = None, url: UrlOption = DEFAULT_URL, key: KeyOption = None
) -> None:
    """Per gateway: uplinks heard, RSSI and SNR percentiles /
    ゲートウェイごとの受信数と RSSI・SNR の分布。"""
    gateways = _call(
        "GET", url, "/ingest/coverage", key, params={"since": since} if since else None
    )
    table = Table(
        "gateway",
        "uplinks / 受信数",
        "RSSI p10 / p50 / p90 (dBm)",
        "SNR p10 / p50 / p90 (dB)",
        "last hour / 最終",
    )
    for gateway in gateways:
        rssi, snr = gateway["rssiDbm"], gateway["snrDb"]
        table.add_row(
            gateway["gatewayId"],
            str(gateway["uplinks"]),
            f"{rssi['p10']} / {rssi['p50']} / {rssi['p90']}",
            f"{snr['p10']} / {snr['p50']} / {snr['p90']}",
            gateway["lastHour"],
        )
    console.print(table)
