"""Network adapters: a transport's :class:`RawMessage` to network-independent events.

``parse_event(raw)`` is the one entry point; it dispatches on ``raw.network``. A new
network server is one more module here with a ``parse(raw) -> list[NetworkEvent]``.
"""

from __future__ import annotations

from cityos.ingest.model import NetworkEvent, RawMessage
from cityos.ingest.networks import chirpstack, ttn

_PARSERS = {"chirpstack": chirpstack.parse, "ttn": ttn.parse}


def parse_event(raw: RawMessage) -> list[NetworkEvent]:
    """The events in one raw message.

    Raises :class:`~cityos.ingest.model.IngestError` with reason ``invalid-json``,
    ``invalid-message`` or ``bad-base64``; never anything else for bad input.
    """
    return _PARSERS[raw.network](raw)
