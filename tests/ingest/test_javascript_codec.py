"""JavaScript codecs in QuickJS: real Device Repository codecs with their own example
vectors, and a misbehaving codec that must not take the runtime down."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from cityos.ingest.codecs.javascript import JavaScriptCodec
from cityos.ingest.model import IngestError

CODECS = Path(__file__).parent / "fixtures" / "codecs"
VENDOR_CODECS = ("browan-tbhh100", "browan-tbdw100", "decentlab-dl-mbx")
RECV_TIME = "2026-11-24T01:02:03.456Z"


def _examples() -> list[Any]:
    cases = []
    for name in VENDOR_CODECS:
        spec = yaml.safe_load((CODECS / f"{name}-codec.yaml").read_text())
        for example in spec["uplinkDecoder"]["examples"]:
            cases.append(pytest.param(name, example, id=f"{name}: {example['description']}"))
    return cases


def _without_nulls(value: Any) -> Any:
    """The repository's YAML writes ``unit:`` (null) where the codec sets no key at all."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


@pytest.fixture(scope="module")
def vendor_codecs() -> dict[str, JavaScriptCodec]:
    return {
        name: JavaScriptCodec((CODECS / f"{name}.js").read_text(), name=name)
        for name in VENDOR_CODECS
    }


@pytest.mark.parametrize(("name", "example"), _examples())
def test_vendor_codec_example(
    vendor_codecs: dict[str, JavaScriptCodec], name: str, example: dict[str, Any]
) -> None:
    codec = vendor_codecs[name]
    payload = bytes(example["input"]["bytes"])
    f_port = example["input"]["fPort"]
    expected = example["output"]
    if "errors" in expected:
        with pytest.raises(IngestError) as caught:
            codec.decode_uplink(payload, f_port, RECV_TIME)
        assert caught.value.reason == "unknown-fport"
        assert expected["errors"][0] in caught.value.detail
    else:
        decoded = codec.decode_uplink(payload, f_port, RECV_TIME)
        assert decoded.data == _without_nulls(expected["data"])


MISBEHAVING = """
function decodeUplink(input) {
  switch (input.fPort) {
    case 1: while (true) {}
    case 2: throw new RangeError("sensor byte out of range");
    case 3: var hog = []; while (true) { hog.push(new Array(100000).fill(input.fPort)); }
    case 4: return {errors: ["checksum mismatch"]};
    case 5: return {data: {}, warnings: ["low battery"]};
    case 6: return "a string";
    case 7: return {data: {when: input.recvTime.toISOString(), n: input.bytes.length}};
  }
}
"""


@pytest.fixture(scope="module")
def misbehaving() -> JavaScriptCodec:
    return JavaScriptCodec(MISBEHAVING, name="misbehaving", memory_limit_bytes=8 * 1024 * 1024)


@pytest.mark.parametrize(
    ("f_port", "reason", "detail"),
    [
        (1, "codec-timeout", "interrupted"),
        (2, "codec-error", "RangeError: sensor byte out of range"),
        (3, "codec-timeout", "misbehaving"),
        (4, "codec-error", "checksum mismatch"),
        (6, "codec-error", "not an object"),
    ],
)
def test_failures_raise_and_the_codec_keeps_working(
    misbehaving: JavaScriptCodec, f_port: int, reason: str, detail: str
) -> None:
    with pytest.raises(IngestError) as caught:
        misbehaving.decode_uplink(b"\x01", f_port, RECV_TIME)
    assert caught.value.reason == reason
    assert detail in caught.value.detail
    assert misbehaving.decode_uplink(b"\x01\x02", 7, RECV_TIME).data == {
        "when": RECV_TIME,
        "n": 2,
    }


def test_warnings_are_kept(misbehaving: JavaScriptCodec) -> None:
    assert misbehaving.decode_uplink(b"", 5, RECV_TIME).warnings == ("low battery",)


def test_time_limit_is_configurable() -> None:
    codec = JavaScriptCodec(
        "function decodeUplink(i) { var end = Date.now() + 30; while (Date.now() < end) {}"
        " return {data: {}}; }",
        time_limit_s=0.01,
    )
    with pytest.raises(IngestError) as caught:
        codec.decode_uplink(b"", 1, RECV_TIME)
    assert caught.value.reason == "codec-timeout"


def test_ttn_v2_decoder_function_is_supported() -> None:
    codec = JavaScriptCodec(
        "function Decoder(bytes, port) { return {port: port, first: bytes[0]}; }"
    )
    assert codec.decode_uplink(b"\x2a", 9, RECV_TIME).data == {"port": 9, "first": 42}


def test_codec_may_log_to_the_console() -> None:
    codec = JavaScriptCodec(
        "function decodeUplink(i) { console.log('decoding', i.fPort); return {data: {}}; }"
    )
    assert codec.decode_uplink(b"", 1, RECV_TIME).data == {}


def test_all_byte_values_reach_the_codec_unchanged() -> None:
    codec = JavaScriptCodec("function decodeUplink(i) { return {data: {bytes: i.bytes}}; }")
    payload = bytes(range(256))
    assert codec.decode_uplink(payload, 1, RECV_TIME).data["bytes"] == list(payload)


def test_codec_that_does_not_compile_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="does not compile"):
        JavaScriptCodec("function decodeUplink(input) {")


def test_codec_without_entry_point_is_a_codec_error() -> None:
    with pytest.raises(IngestError, match="neither decodeUplink nor Decoder"):
        JavaScriptCodec("var nothing = 1;").decode_uplink(b"", 1, RECV_TIME)


def test_each_thread_gets_its_own_compiled_context() -> None:
    codec = JavaScriptCodec(
        "var calls = 0; function decodeUplink(i) { calls++; return {data: {calls: calls}}; }"
    )
    assert codec.decode_uplink(b"", 1, RECV_TIME).data == {"calls": 1}
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(codec.decode_uplink(b"", 1, RECV_TIME)))
    thread.start()
    thread.join()
    assert seen[0].data == {"calls": 1}
    assert codec.decode_uplink(b"", 1, RECV_TIME).data == {"calls": 2}
