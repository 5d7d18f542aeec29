"""Python codecs behind the same ``Codec`` interface as the JavaScript ones.

A Python codec is a function ``decode_uplink(payload: bytes, f_port: int, recv_time: str)
-> dict`` returning the TTN-shaped ``{"data": ..., "warnings": [...], "errors": [...]}``.
:class:`PythonCodec` checks the result exactly as for JavaScript codecs and turns an
exception into ``codec-error``. No time limit: Python codecs are our own code, reviewed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cityos.ingest.codecs.javascript import decoded_result
from cityos.ingest.model import DecodedUplink, IngestError

DecodeFunction = Callable[[bytes, int, str], dict[str, Any]]  # Any: TTN result JSON


class PythonCodec:
    """A :class:`~cityos.ingest.model.Codec` around one Python decode function."""

    def __init__(self, decode: DecodeFunction, *, name: str) -> None:
        self.name = name
        self._decode = decode

    def decode_uplink(self, payload: bytes, f_port: int, recv_time: str) -> DecodedUplink:
        """Run the function; exceptions become ``codec-error``."""
        try:
            result = self._decode(payload, f_port, recv_time)
        except Exception as error:  # a codec bug must not stop the worker
            raise IngestError("codec-error", f"{self.name} raised {error!r}") from None
        return decoded_result(self.name, result)
