"""HTTP ingestion (ChirpStack HTTP integration, TTN webhooks) and ingestion read-outs.

``POST /ingest/chirpstack?event=up|join|status|log|ack|txack|location|integration``
takes ChirpStack's JSON or protobuf (``marshaler=protobuf``) bodies;
``POST /ingest/ttn`` and ``POST /ingest/ttn/{anything}`` take TTN webhooks (TTN names
the message in the body, and lets each message type have its own path, so any path
below ``/ingest/ttn`` is accepted).

Both need ``X-Ingest-Secret`` equal to ``CITYOS_INGEST_SECRET`` (they are outside the
API-key middleware: network servers cannot send our keys). Answers, always after the
message's batch was committed:

- 200 ``{"status": "stored" | "duplicate" | "ignored"}``;
- 202 ``{"status": "dead-lettered", "reason": ...}``: the message is well formed but
  cannot be processed now (unknown device or fPort, codec failure); it is kept and can
  be replayed, so the sender must not retry;
- 400 ProblemDetails: the body is not the network's message (kept as a dead letter);
- 401 ProblemDetails: wrong or missing secret (only metadata is kept, nothing stored);
- 413 ProblemDetails: body over ``CITYOS_INGEST_MAX_BODY_BYTES`` (kept, truncated);
- 503 ProblemDetails + ``Retry-After``: ``CITYOS_INGEST_SECRET`` is not set, so HTTP
  ingestion is off; the sender keeps the message and retries (nothing is lost).

``GET /ingest/stats`` (counters and dead letters per reason) and ``GET /ingest/coverage``
(per gateway: uplinks heard, RSSI and SNR percentiles) need an API key when
authentication is on.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from cityos.api.auth import principal_of
from cityos.api.problems import problem_response
from cityos.core import errors
from cityos.core.timeutil import datetime_ms, format_ms, now_iso
from cityos.ingest.coverage import summarize
from cityos.ingest.deadletters import replay_message
from cityos.ingest.intake import Submission
from cityos.ingest.model import IngestError, Network, RawMessage
from cityos.ingest.pipeline import Outcome
from cityos.storage.ingest_tables import DeadLetter, DeadLetterFilter, IngestTables

router = APIRouter()

INGEST_PATHS = ("/ingest/chirpstack", "/ingest/ttn")
"""Paths that authenticate with the ingest secret instead of API keys."""

_MALFORMED = frozenset({"invalid-json", "invalid-message", "bad-base64"})


class IngestPayloadTooLarge(errors.PayloadTooLarge):
    title = "Payload too large / ペイロードが大きすぎます"


class IngestUnauthorized(errors.Unauthorized):
    title = "Wrong ingest secret / 取り込み用シークレットが違います"


class IngestNotConfigured(errors.ServiceUnavailable):
    title = "HTTP ingestion is not configured / HTTP 取り込みは未設定です"


class IngestBadMessage(errors.BadRequestData):
    title = "Not a network server message / ネットワークサーバーのメッセージではありません"


@router.post("/ingest/chirpstack", tags=["ingest"])
async def ingest_chirpstack(request: Request) -> Response:
    """One ChirpStack HTTP integration event (``?event=`` names it)."""
    event = request.query_params.get("event", "")
    return await _ingest(request, "chirpstack", f"/ingest/chirpstack?event={event}")


@router.post("/ingest/ttn", tags=["ingest"])
async def ingest_ttn(request: Request) -> Response:
    """One TTN webhook message."""
    return await _ingest(request, "ttn", "/ingest/ttn")


@router.post("/ingest/ttn/{subpath:path}", tags=["ingest"])
async def ingest_ttn_path(request: Request, subpath: str) -> Response:
    """One TTN webhook message sent to a per-message-type path."""
    return await _ingest(request, "ttn", f"/ingest/ttn/{subpath}")


async def _ingest(request: Request, network: Network, address: str) -> Response:
    state = request.app.state
    intake = getattr(state, "ingest_intake", None)
    secret: str | None = state.settings.ingest_secret
    if intake is None or not secret:
        return problem_response(
            IngestNotConfigured(
                "Set CITYOS_INGEST_SECRET to accept HTTP ingestion; the sender keeps the "
                "message and retries / CITYOS_INGEST_SECRET を設定してください"
            ),
            {"Retry-After": "60"},
        )
    limit: int = state.settings.ingest_max_body_bytes
    body, announced = await _read_limited(request, limit)
    raw = RawMessage(
        transport="http",
        network=network,
        address=address,
        body=body,
        content_type=request.headers.get("content-type"),
        received_at_ms=datetime_ms(now_iso()),
    )
    refused: IngestError | None = None
    given = request.headers.get("x-ingest-secret", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        refused = IngestError("unauthorized", "Wrong or missing X-Ingest-Secret")
    elif announced > limit:
        refused = IngestError("oversize", f"The body has {announced} bytes; the limit is {limit}")
    outcome = await intake.process_now(
        Submission(raw, _ignore, refused, announced if announced > len(body) else None)
    )
    return _response(outcome)


async def _read_limited(request: Request, limit: int) -> tuple[bytes, int]:
    """The body, at most ``limit`` bytes of it, and its size (announced or read)."""
    announced = int(request.headers.get("content-length") or 0)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            size += len(chunk)
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), max(announced, size)


def _response(outcome: Outcome) -> Response:
    if outcome.accepted:
        return JSONResponse({"status": outcome.status})
    reason, detail = outcome.reason or "", outcome.detail or ""
    if reason == "unauthorized":
        return problem_response(IngestUnauthorized(detail))
    if reason == "oversize":
        return problem_response(IngestPayloadTooLarge(f"{detail} (kept as a dead letter)"))
    if reason in _MALFORMED:
        return problem_response(IngestBadMessage(f"{reason}: {detail} (kept as a dead letter)"))
    return JSONResponse(
        {"status": "dead-lettered", "reason": reason, "detail": detail}, status_code=202
    )


def _ignore(outcome: Outcome) -> None:
    """HTTP submissions wait on their future instead (see ``Intake.process_now``)."""


# -- read-outs -------------------------------------------------------------------------


def _require_key(request: Request) -> None:
    principal = principal_of(request)
    if principal is not None and principal.role == "anonymous":
        raise errors.Unauthorized("Ingestion statistics need an API key / APIキーが必要です")


@router.get("/ingest/stats", tags=["ingest"])
async def ingest_stats(request: Request) -> JSONResponse:
    """Counters of this process and dead letters kept, per reason."""
    _require_key(request)
    state = request.app.state
    stats = getattr(state, "ingest_stats", None)
    tables = getattr(state, "ingest_tables", None)
    body: dict[str, Any] = {  # Any: JSON document
        "mqtt": getattr(state, "ingest_mqtt_status", lambda: None)(),
        "backlog": state.ingest_intake.backlog if getattr(state, "ingest_intake", None) else 0,
        "process": (
            stats.as_json(histogram="histogram" in request.query_params)
            if stats is not None
            else None
        ),
        "deadLetters": tables.dead_letter_counts() if tables is not None else {},
    }
    return JSONResponse(body)


@router.get("/ingest/coverage", tags=["ingest"])
async def ingest_coverage(request: Request) -> JSONResponse:
    """Per gateway: uplinks heard and RSSI/SNR distribution (``?since=`` ISO date-time)."""
    _require_key(request)
    tables = getattr(request.app.state, "ingest_tables", None)
    since = request.query_params.get("since")
    since_ms = None
    if since:
        try:
            since_ms = datetime_ms(since)
        except errors.CityosError as error:
            raise errors.BadRequestData(f"since: {error.detail}") from None
    hours = tables.gateway_hours(since_ms) if tables is not None else []
    return JSONResponse(
        [
            {
                "gatewayId": gateway.gateway_id,
                "uplinks": gateway.uplinks,
                "firstHour": format_ms(gateway.first_hour_ms),
                "lastHour": format_ms(gateway.last_hour_ms),
                "rssiDbm": gateway.rssi_dbm.as_json(),
                "snrDb": gateway.snr_db.as_json(),
            }
            for gateway in summarize(hours)
        ]
    )


# -- dead letters ------------------------------------------------------------------------


def _letter_filter(params: dict[str, Any]) -> DeadLetterFilter:  # Any: query or JSON values
    """A dead-letter filter from query parameters or a JSON body (400 when malformed)."""
    since = params.get("since")
    limit = params.get("limit", 100)
    ids = params.get("ids")
    try:
        return DeadLetterFilter(
            reason=params.get("reason") or None,
            dev_eui=params.get("device") or None,
            since_ms=datetime_ms(since) if since else None,
            ids=tuple(int(i) for i in ids) if ids else None,
            limit=max(1, min(int(limit), 10_000)),
        )
    except (TypeError, ValueError) as error:
        raise errors.BadRequestData(f"Bad dead-letter filter: {error}") from None


def letter_json(letter: DeadLetter) -> dict[str, Any]:  # Any: JSON document
    """A dead letter as the API and the CLI show it (body in base64)."""
    return {
        "id": letter.id,
        "reason": letter.reason,
        "detail": letter.detail,
        "transport": letter.transport,
        "network": letter.network,
        "address": letter.address,
        "devEui": letter.dev_eui,
        "receivedAt": format_ms(letter.received_ms),
        "lastAttemptAt": format_ms(letter.last_attempt_ms),
        "attempts": letter.attempts,
        "contentType": letter.content_type,
        "bodySize": letter.body_size,
        "replayable": letter.replayable,
        "body": None if letter.body is None else base64.b64encode(letter.body).decode(),
    }


@router.get("/ingest/dead-letters", tags=["ingest"])
async def list_dead_letters(request: Request) -> JSONResponse:
    """Dead letters, newest first (``reason``, ``device``, ``since``, ``limit``)."""
    _require_key(request)
    tables = _tables(request)
    which = _letter_filter(dict(request.query_params))
    return JSONResponse([letter_json(letter) for letter in tables.list_dead_letters(which)])


@router.post("/ingest/dead-letters/replay", tags=["ingest"])
async def replay_dead_letters(request: Request) -> JSONResponse:
    """Run the selected dead letters through the pipeline again (after the registry or
    a profile was fixed): a success leaves the store, a failure stays with its new
    reason. The body selects them like the list's parameters (``ids`` or filters)."""
    tables = _tables(request)
    runtime = getattr(request.app.state, "ingest", None)
    if runtime is None:
        raise errors.ServiceUnavailable("Ingestion is not running / 取り込みが動いていません")
    try:
        selection = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError as error:
        raise errors.BadRequestData(f"The body is not JSON: {error}") from None
    if not isinstance(selection, dict):
        raise errors.BadRequestData("The body must be a JSON object")
    letters = tables.list_dead_letters(_letter_filter(selection))
    results: list[dict[str, Any]] = []  # Any: JSON values
    replayable = [letter for letter in letters if letter.replayable]
    for letter in letters:
        if not letter.replayable:
            results.append({"id": letter.id, "status": "not-replayable", "reason": letter.reason})
    size = runtime.settings.ingest_batch_size
    for start in range(0, len(replayable), size):
        chunk = replayable[start : start + size]
        outcomes = runtime.pipeline.replay(chunk, [replay_message(letter) for letter in chunk])
        results.extend(
            {"id": letter.id, "status": outcome.status, "reason": outcome.reason}
            for letter, outcome in zip(chunk, outcomes, strict=True)
        )
    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    return JSONResponse({"counts": counts, "results": results})


def _tables(request: Request) -> IngestTables:
    tables: IngestTables | None = getattr(request.app.state, "ingest_tables", None)
    if tables is None:
        raise errors.ServiceUnavailable("Ingestion is not running / 取り込みが動いていません")
    return tables
