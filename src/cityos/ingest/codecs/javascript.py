"""TTN Device Repository JavaScript codecs, run unmodified in QuickJS (``quickjs-ng``).

Contract (https://www.thethingsindustries.com/docs/integrations/payload-formatters/javascript/):
``decodeUplink({bytes, fPort, recvTime})`` returns ``{data, warnings, errors}``. Codecs
that only define the older TTN v2 ``Decoder(bytes, port)`` are run too: its return value
is the ``data``.

Each codec is compiled once into its own QuickJS context (per thread: a QuickJS runtime
must stay on the thread that created it, so a second thread gets its own compiled
copy). The input goes in as one JSON string (parsed by the engine's ``JSON.parse``, in
C) and the result comes back as one JSON string: two string crossings per call. On
this machine that measured the same, within noise, as passing the bytes as a hex
string decoded in JavaScript (benchmarks/bench_codecs.py keeps both measured); the
binding's ``parse_json`` object route cannot carry the ``Date`` that ``recvTime`` is.
Every call runs under a time limit (default 50 ms) and the context under a memory
limit (default 16 MiB); a codec that throws, loops, exhausts memory or returns
``errors`` raises :class:`IngestError`, and the context stays usable for the next
uplink.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson
import quickjs

from cityos.ingest.model import DecodedUplink, IngestError

DEFAULT_TIME_LIMIT_S = 0.05
DEFAULT_MEMORY_LIMIT_BYTES = 16 * 1024 * 1024

# The entry point added after the vendor's source; names start with __cityos_ so they
# cannot clash with a codec's own globals.
_ENTRY = """
function __cityos_decode(document) {
  var input = JSON.parse(document);
  var result;
  if (typeof decodeUplink === "function") {
    input.recvTime = new Date(input.recvTime);
    result = decodeUplink(input);
  } else if (typeof Decoder === "function") {
    result = {data: Decoder(input.bytes, input.fPort)};
  } else {
    throw new Error("codec defines neither decodeUplink nor Decoder");
  }
  return JSON.stringify(result === undefined ? null : result);
}
"""
# Codecs written for The Things Stack may log; QuickJS has no console of its own.
_PRELUDE = """
var console = {log: function () {}, info: function () {}, warn: function () {},
               error: function () {}, debug: function () {}};
"""
_UNKNOWN_FPORT_RE = re.compile(r"unknown\s*f?\s*port", re.IGNORECASE)


class JavaScriptCodec:
    """A :class:`~cityos.ingest.model.Codec` running one JavaScript codec source."""

    def __init__(
        self,
        source: str,
        *,
        name: str = "codec",
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    ) -> None:
        self.name = name
        self.source = source
        self.time_limit_s = time_limit_s
        self.memory_limit_bytes = memory_limit_bytes
        self._local = threading.local()
        self._entry()  # compile now: a broken codec fails at load, not at the first uplink

    def decode_uplink(self, payload: bytes, f_port: int, recv_time: str) -> DecodedUplink:
        """Run the codec on one uplink (see the module docstring for the failures)."""
        try:
            document = orjson.dumps(
                {"bytes": list(payload), "fPort": f_port, "recvTime": recv_time}
            )
            text = self._entry()(document.decode())
        except quickjs.JSException as error:
            message = str(error).split("\n", 1)[0]
            if "interrupted" in message or "out of memory" in message:
                raise IngestError(
                    "codec-timeout", f"{self.name}: over its time or memory limit ({message})"
                ) from None
            raise IngestError("codec-error", f"{self.name} threw: {message}") from None
        except quickjs.StackOverflow:
            raise IngestError("codec-error", f"{self.name}: stack overflow") from None
        return decoded_result(self.name, orjson.loads(text))

    def _entry(self) -> Any:  # Any: a quickjs function object (untyped package)
        entry = getattr(self._local, "entry", None)
        if entry is None:
            context = quickjs.Context()
            context.set_memory_limit(self.memory_limit_bytes)
            # Compiling a large codec may take longer than one decode is allowed.
            context.set_time_limit(max(self.time_limit_s, 1.0))
            try:
                context.eval(_PRELUDE)
                context.eval(self.source)
                context.eval(_ENTRY)
            except quickjs.JSException as error:
                raise ValueError(f"Codec {self.name} does not compile: {error}") from None
            context.set_time_limit(self.time_limit_s)
            entry = context.get("__cityos_decode")
            self._local.context = context
            self._local.entry = entry
        return entry


def decoded_result(name: str, result: object) -> DecodedUplink:
    """Check a ``decodeUplink`` result (shared by the Python codecs).

    ``errors`` (non-empty) raise ``codec-error``, or ``unknown-fport`` when the message
    says so (the Device Repository codecs write "unknown FPort"); a result without an
    object ``data`` is a ``codec-error``.
    """
    if not isinstance(result, dict):
        raise IngestError("codec-error", f"{name} returned {type(result).__name__}, not an object")
    errors = result.get("errors")
    if errors:
        text = (
            "; ".join(str(error) for error in errors) if isinstance(errors, list) else str(errors)
        )
        reason = "unknown-fport" if _UNKNOWN_FPORT_RE.search(text) else "codec-error"
        raise IngestError(reason, f"{name}: {text}")
    data = result.get("data")
    if not isinstance(data, dict):
        raise IngestError("codec-error", f"{name} returned no data object")
    warnings = result.get("warnings") or ()
    return DecodedUplink(data, tuple(str(warning) for warning in warnings))
