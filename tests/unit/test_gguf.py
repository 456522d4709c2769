"""engine/gguf.py: the header-only metadata reader, on small synthetic files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from covey.engine import gguf
from covey.engine.gguf import MAX_ARRAY, MAX_KV, MAX_STRING, GGUFError, read_metadata
from tests.unit.synthetic_gguf import (
    ARRAY,
    STRING,
    TINY,
    Value,
    gguf_header,
    string,
    string_array,
    u32,
    u32_array,
)


def _read(tmp_path: Path, data: bytes, wanted: frozenset[str] | None = None) -> dict[str, object]:
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    return read_metadata(path, wanted)


def test_reads_scalars_and_skips_arrays(tmp_path: Path) -> None:
    assert _read(tmp_path, TINY) == {
        "general.architecture": "llama", "llama.context_length": 8192,
        "general.file_type": 15, "general.name": "Tiny",
    }


@pytest.mark.parametrize(("vtype", "fmt", "value"), [
    (0, "<B", 200), (1, "<b", -5), (2, "<H", 60000), (3, "<h", -300), (4, "<I", 8192),
    (5, "<i", -1), (6, "<f", 1.5), (7, "<?", True), (10, "<Q", 1 << 40), (11, "<q", -(1 << 40)),
    (12, "<d", 0.25),
])
def test_every_scalar_type(tmp_path: Path, vtype: int, fmt: str, value: object) -> None:
    data = gguf_header([("k", (vtype, struct.pack(fmt, value))), ("after", string("x"))])
    assert _read(tmp_path, data) == {"k": value, "after": "x"}


@pytest.mark.parametrize("array", [
    string_array([]),
    string_array(["<s>", "</s>", "héllo"]),
    u32_array([1, 2, 3]),
    (ARRAY, struct.pack("<IQ", 12, 2) + struct.pack("<2d", 0.5, 1.5)),  # float64 elements
    (ARRAY, struct.pack("<IQ", 0, 3) + b"\x01\x02\x03"),  # uint8 elements
], ids=["empty", "strings", "uint32", "float64", "uint8"])
def test_arrays_are_skipped(tmp_path: Path, array: Value) -> None:
    data = gguf_header([("before", u32(1)), ("arr", array), ("after", string("x"))])
    assert _read(tmp_path, data) == {"before": 1, "after": "x"}


@pytest.mark.parametrize(("version", "ok"), [(1, False), (2, True), (3, True), (4, False)])
def test_versions(tmp_path: Path, version: int, ok: bool) -> None:
    data = gguf_header([("k", u32(1))], version=version)
    if ok:
        assert _read(tmp_path, data) == {"k": 1}
    else:
        with pytest.raises(GGUFError, match=f"unsupported GGUF version {version}"):
            _read(tmp_path, data)


@pytest.mark.parametrize("data", [b"", b"GGU", b"gguf" + TINY[4:], b"GGML" + TINY[4:],
                                  b"\x00" + TINY])
def test_wrong_magic(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(GGUFError, match="not a GGUF file"):
        _read(tmp_path, data)


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    for n in range(len(TINY)):
        path.write_bytes(TINY[:n])
        with pytest.raises(GGUFError):
            read_metadata(path)


# Was a bug: _skip_array steps over array elements with f.seek(), which succeeds past the end of
# the file; when the array is the last entry nothing is read afterwards, so a header cut
# inside that array is returned as if it were whole (e.g. the string-array header below is
# accepted at prefix lengths 114..116 of 117; the uint32 one at 96..107 of 108).
# A vocabulary's strings are walked in blocks read ahead (0.3 s of every node start when read
# one by one): strings that end exactly at, straddle, or outrun a block's end must all leave
# the file where the next key starts.
@pytest.mark.parametrize("block", [8, 13, 64, 1 << 20])
def test_string_arrays_across_read_ahead_blocks(tmp_path: Path, block: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf, "_BLOCK", block)
    vocabulary = ["x" * (i % 37) for i in range(500)] + ["long" * 40, "", "é"]
    data = gguf_header([("tokens", string_array(vocabulary)), ("after", u32(7)),
                        ("merges", string_array(vocabulary[:50])), ("last", string("end"))])
    assert _read(tmp_path, data) == {"after": 7, "last": "end"}
    for n in range(0, len(data), 97):  # cut anywhere in it: refused, never a short read
        with pytest.raises(GGUFError):
            _read(tmp_path, data[:n])


@pytest.mark.parametrize("array", [string_array(["ab", "cde"]), u32_array([1, 2, 3])],
                         ids=["strings", "uint32"])
def test_truncation_inside_a_trailing_array_is_refused(tmp_path: Path, array: Value) -> None:
    data = gguf_header([("general.architecture", string("llama")), ("tokens", array)])
    accepted = []
    for n in range(len(data)):
        try:
            _read(tmp_path, data[:n])
        except GGUFError:
            continue
        accepted.append(n)
    assert accepted == []


@pytest.mark.parametrize(("data", "message"), [
    (gguf_header([], kv_count=MAX_KV + 1), "implausible metadata count"),
    (gguf_header([], kv_count=1 << 40), "implausible metadata count"),
    (gguf_header([], kv_count=1) + struct.pack("<Q", MAX_STRING + 1),
     "implausible string length"),  # a key
    (gguf_header([("k", (STRING, struct.pack("<Q", MAX_STRING + 1)))]),
     "implausible string length"),
    (gguf_header([("k", (ARRAY, struct.pack("<IQ", STRING, MAX_ARRAY + 1)))]),
     "implausible array length"),
    (gguf_header([("k", (ARRAY, struct.pack("<IQQ", STRING, 1, MAX_STRING + 1)))]),
     "implausible string length"),  # an element of a string array
], ids=["count", "huge-count", "key", "string", "array", "array-element"])
def test_implausible_lengths_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(GGUFError, match=message):
        _read(tmp_path, data)


def test_the_caps_themselves_are_plausible(tmp_path: Path) -> None:
    # Exactly at the cap the count is believed, and the short file is then reported truncated.
    with pytest.raises(GGUFError, match="truncated"):
        _read(tmp_path, gguf_header([], kv_count=MAX_KV))


@pytest.mark.parametrize(("value", "message"), [
    ((99, b""), "unknown metadata value type 99"),
    ((ARRAY, struct.pack("<IQ", 99, 1)), "unsupported array element type 99"),
])
def test_unknown_types_are_refused(tmp_path: Path, value: Value, message: str) -> None:
    with pytest.raises(GGUFError, match=message):
        _read(tmp_path, gguf_header([("k", value)]))


def test_wanted_stops_early(tmp_path: Path) -> None:
    data = gguf_header([("general.architecture", string("llama")), ("general.file_type", u32(15)),
                        ("garbled", (99, b""))])
    wanted = frozenset({"general.architecture", "general.file_type"})
    assert _read(tmp_path, data, wanted) == {"general.architecture": "llama",
                                             "general.file_type": 15}
    with pytest.raises(GGUFError):
        _read(tmp_path, data)


def test_undecodable_text_is_replaced_not_fatal(tmp_path: Path) -> None:
    data = gguf_header([("k", (STRING, struct.pack("<Q", 2) + b"\xff\xfe"))])
    assert _read(tmp_path, data) == {"k": "\ufffd\ufffd"}
