"""Dead letters: messages that reached cityos and could not be processed.

Every such message is kept (see :mod:`cityos.storage.ingest_tables`) with its reason
(one of :data:`cityos.ingest.model.REJECT_REASONS`), so nothing is dropped silently;
``cityos ingest dead-letters`` lists them and ``cityos ingest replay`` runs them
through the pipeline again once the registry or the profile is fixed.

What is kept of the body:
- the whole body, for every reason but the two below (it can be replayed);
- for ``oversize``, the first ``max_body_bytes`` only (``truncated``: not replayable,
  as the rest never reached memory);
- for ``unauthorized``, nothing but the metadata: the sender did not prove it is our
  network server, so its body is neither trusted nor allowed to fill the disk.
"""

from __future__ import annotations

from cityos.ingest.model import IngestError, Network, RawMessage, Transport, Uplink
from cityos.storage.ingest_tables import DeadLetter

NOT_KEPT_REASONS = frozenset({"unauthorized"})


def dead_letter(
    raw: RawMessage,
    error: IngestError,
    *,
    now_ms: int,
    max_body_bytes: int,
    uplink: Uplink | None = None,
    dev_eui: str | None = None,
    attempts: int = 1,
    body_size: int | None = None,
) -> DeadLetter:
    """The letter that keeps ``raw``, refused for ``error``.

    ``uplink`` (when the message got that far) names the device and the dedupe key, so
    a redelivery of the same uplink that fails again updates this letter. ``body_size``
    is the size the sender announced when the body was not read whole.
    """
    body: bytes | None = raw.body
    truncated = False
    if error.reason in NOT_KEPT_REASONS:
        body = None
    elif len(raw.body) > max_body_bytes:
        body = raw.body[:max_body_bytes]
        truncated = True
    elif body_size is not None and body_size > len(raw.body):
        truncated = True
    return DeadLetter(
        received_ms=raw.received_at_ms,
        transport=raw.transport,
        network=raw.network,
        address=raw.address,
        reason=error.reason,
        detail=error.detail,
        body=body,
        body_size=body_size if body_size is not None else len(raw.body),
        content_type=raw.content_type,
        dev_eui=uplink.dev_eui if uplink is not None else dev_eui,
        dedup_key=uplink.dedup_key if uplink is not None else None,
        truncated=truncated,
        attempts=attempts,
        last_attempt_ms=now_ms,
    )


def replay_message(letter: DeadLetter) -> RawMessage:
    """The message a replayable letter kept, to run through the pipeline again (with
    its original receive time and address, so network adapters see what they saw)."""
    if letter.body is None or letter.truncated:
        raise ValueError(f"Dead letter {letter.id} did not keep its whole body")
    transport: Transport = "replay"
    if letter.transport == "mqtt":
        transport = "mqtt"
    elif letter.transport == "http":
        transport = "http"
    network: Network = "ttn" if letter.network == "ttn" else "chirpstack"
    return RawMessage(
        transport=transport,
        network=network,
        address=letter.address,
        body=letter.body,
        content_type=letter.content_type,
        received_at_ms=letter.received_ms,
    )
