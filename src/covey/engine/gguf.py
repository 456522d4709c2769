"""A header-only GGUF metadata reader.

Why not the `gguf` package: its GGUFReader builds numpy views for every array element,
which takes ~30 s on a 250 MB model because of the 262k-entry tokenizer vocabulary. We need
a handful of scalar keys, so we walk the key/value section and skip arrays without
materialising them. Every length read from the file is capped: the file may be hostile.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
MAX_KV = 1 << 20
MAX_STRING = 1 << 24  # 16 MiB: chat templates are long, nothing legitimate is longer
MAX_ARRAY = 1 << 32

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
        if f.read(4) != MAGIC:
            raise GGUFError("not a GGUF file")
        version = _unpack(f, "<I")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        _unpack(f, "<Q")  # tensor count
        kv_count = _unpack(f, "<Q")
        if kv_count > MAX_KV:
            raise GGUFError(f"implausible metadata count {kv_count}")
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
        for _ in range(count):
            n = _unpack(f, "<Q")
            if n > MAX_STRING:
                raise GGUFError(f"implausible string length {n}")
            f.seek(n, 1)
    elif etype in _SCALARS:
        f.seek(count * struct.calcsize(_SCALARS[etype]), 1)
    else:
        raise GGUFError(f"unsupported array element type {etype}")
