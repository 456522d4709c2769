"""A header-only GGUF reader: the metadata, and the tensor table (names, types, offsets).

Why not the `gguf` package: its GGUFReader builds numpy views for every array element,
which takes ~30 s on a 250 MB model because of the 262k-entry tokenizer vocabulary. We need
a handful of scalar keys, so we walk the key/value section and skip arrays without
materialising them. Every length read from the file is capped: the file may be hostile.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
MAX_KV = 1 << 20
MAX_STRING = 1 << 24  # 16 MiB: chat templates are long, nothing legitimate is longer
MAX_ARRAY = 1 << 32
MAX_TENSORS = 1 << 20
MAX_DIMS = 8

# value type → struct format for fixed-size scalars (GGUF spec, gguf.md)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a readable GGUF (bad magic, unsupported version, truncated, garbled)."""


def read_metadata(path: Path, wanted: frozenset[str] | None = None) -> dict[str, object]:
    """Scalar and string metadata values (arrays are skipped). Stops early once every key in
    `wanted` has been seen."""
    size = path.stat().st_size
    with path.open("rb") as f:
        _, kv_count = _header(f)
        return _metadata(f, size, kv_count, wanted)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int  # ggml's type number (gguf.GGMLQuantizationType)
    shape: tuple[int, ...]
    offset: int  # of its data, in bytes from the start of the file


def read_tensor_table(path: Path) -> list[TensorInfo]:
    """The tensor table: each tensor's name, type, shape and where its data starts."""
    size = path.stat().st_size
    with path.open("rb") as f:
        tensor_count, kv_count = _header(f)
        if tensor_count > MAX_TENSORS:
            raise GGUFError(f"implausible tensor count {tensor_count}")
        alignment = _metadata(f, size, kv_count, None).get("general.alignment", 32)
        if not isinstance(alignment, int) or not 0 < alignment <= 1 << 16:
            raise GGUFError(f"implausible alignment {alignment}")
        table = []
        for _ in range(tensor_count):
            name = _string(f)
            n_dims = _unpack(f, "<I")
            if n_dims > MAX_DIMS:
                raise GGUFError(f"implausible tensor rank {n_dims}")
            shape = tuple(_unpack(f, "<Q") for _ in range(n_dims))
            ggml_type = _unpack(f, "<I")
            table.append((name, ggml_type, shape, _unpack(f, "<Q")))
        start = -(-f.tell() // alignment) * alignment
    return [TensorInfo(name, t, shape, start + off) for name, t, shape, off in table]


def _header(f: BinaryIO) -> tuple[int, int]:
    """(tensor count, metadata count), after checking the magic and version."""
    if f.read(4) != MAGIC:
        raise GGUFError("not a GGUF file")
    version = _unpack(f, "<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    tensor_count = _unpack(f, "<Q")
    kv_count = _unpack(f, "<Q")
    if kv_count > MAX_KV:
        raise GGUFError(f"implausible metadata count {kv_count}")
    return tensor_count, kv_count


def _metadata(f: BinaryIO, size: int, kv_count: int, wanted: frozenset[str] | None
              ) -> dict[str, object]:
    out: dict[str, object] = {}
    for _ in range(kv_count):
        key = _string(f)
        vtype = _unpack(f, "<I")
        if vtype == _ARRAY:
            _skip_array(f)
            # seek() past the end does not fail: check we are still inside the file.
            if f.tell() > size:
                raise GGUFError("file ends inside the metadata (truncated)")
        else:
            out[key] = _value(f, vtype)
        if wanted is not None and wanted <= out.keys():
            break
    return out


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("file ends inside the metadata (truncated)")
    return data


def _unpack(f: BinaryIO, fmt: str) -> int:
    (value,) = struct.unpack(fmt, _read(f, struct.calcsize(fmt)))
    return int(value)


def _string(f: BinaryIO) -> str:
    n = _unpack(f, "<Q")
    if n > MAX_STRING:
        raise GGUFError(f"implausible string length {n}")
    return _read(f, n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int) -> object:
    if vtype == _STRING:
        return _string(f)
    fmt = _SCALARS.get(vtype)
    if fmt is None:
        raise GGUFError(f"unknown metadata value type {vtype}")
    (value,) = struct.unpack(fmt, _read(f, struct.calcsize(fmt)))
    return value


def _skip_array(f: BinaryIO) -> None:
    etype = _unpack(f, "<I")
    count = _unpack(f, "<Q")
    if count > MAX_ARRAY:
        raise GGUFError(f"implausible array length {count}")
    if etype == _STRING:
        _skip_strings(f, count)
    elif etype in _SCALARS:
        f.seek(count * struct.calcsize(_SCALARS[etype]), 1)
    else:
        raise GGUFError(f"unsupported array element type {etype}")


_LENGTH = struct.Struct("<Q")
_BLOCK = 1 << 20


def _skip_strings(f: BinaryIO, count: int) -> None:
    """Skip `count` length-prefixed strings. A tokenizer's vocabulary is 50k-260k of them:
    read and seeked one by one they took 0.3 s of every node start, so they are walked in
    1 MiB blocks read ahead, a string that crosses a block's end seeked past."""
    buf, pos = b"", 0
    for _ in range(count):
        if pos + 8 > len(buf):
            buf, pos = buf[pos:] + f.read(_BLOCK), 0
            if len(buf) < 8:
                raise GGUFError("file ends inside the metadata (truncated)")
        (n,) = _LENGTH.unpack_from(buf, pos)
        if n > MAX_STRING:
            raise GGUFError(f"implausible string length {n}")
        pos += 8 + n
        if pos > len(buf):  # past what was read: the caller checks the end of the file
            f.seek(pos - len(buf), 1)
            buf, pos = b"", 0
    f.seek(pos - len(buf), 1)  # give back what was read ahead
