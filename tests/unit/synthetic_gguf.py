"""Build small synthetic GGUF v3 headers for the reader's tests (never the real model).

Layout (gguf.md): magic b"GGUF", uint32 version, uint64 tensor count, uint64 key/value count,
then per entry: key (uint64 length + UTF-8), uint32 value type, value. A string is a uint64
length + bytes; an array is a uint32 element type, a uint64 count and the elements.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

UINT32, INT32, STRING, ARRAY, UINT64 = 4, 5, 8, 9, 10

Value = tuple[int, bytes]  # (GGUF value type, encoded value)


def gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def u32(n: int) -> Value:
    return UINT32, struct.pack("<I", n)


def u64(n: int) -> Value:
    return UINT64, struct.pack("<Q", n)


def string(text: str) -> Value:
    return STRING, gguf_string(text)


def string_array(items: Sequence[str]) -> Value:
    return ARRAY, struct.pack("<IQ", STRING, len(items)) + b"".join(map(gguf_string, items))


def u32_array(items: Sequence[int]) -> Value:
    return ARRAY, struct.pack("<IQ", UINT32, len(items)) + struct.pack(f"<{len(items)}I", *items)


def gguf_header(entries: Sequence[tuple[str, Value]], *, version: int = 3,
                kv_count: int | None = None, magic: bytes = b"GGUF") -> bytes:
    """A header with `entries`; `kv_count` overrides the declared count (to lie about it)."""
    count = len(entries) if kv_count is None else kv_count
    out = magic + struct.pack("<IQQ", version, 0, count)
    for key, (vtype, value) in entries:
        out += gguf_string(key) + struct.pack("<I", vtype) + value
    return out


# A small but realistic header: an architecture, a skipped vocabulary, the trained context,
# the quantisation (15 = Q4_K_M) and a name; the vocabulary sits between scalars.
TINY = gguf_header([
    ("general.architecture", string("llama")),
    ("tokenizer.ggml.tokens", string_array(["a", "bb", "ccc"])),
    ("llama.context_length", u32(8192)),
    ("general.file_type", u32(15)),
    ("general.name", string("Tiny")),
])
