"""Manifests: built once per file and cached by size and mtime, parsed strictly from peers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from covey.fetch.manifest import (
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    Manifest,
    ManifestError,
    build_manifest,
    chunk_count,
    hash_file,
    parse_manifest,
    sidecar_of,
)

CS = MIN_CHUNK_SIZE


def _file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize(("size", "count"), [(0, 0), (1, 1), (CS, 1), (CS + 1, 2),
                                             (3 * CS, 3)])
def test_chunk_count(size: int, count: int) -> None:
    assert chunk_count(size, CS) == count


def test_hash_file_spans_and_digest(tmp_path: Path) -> None:
    import hashlib

    path = _file(tmp_path, 2 * CS + 10)
    data = path.read_bytes()
    m = hash_file(path, CS)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert m.size == len(data) and len(m.chunks) == 3
    assert m.span(2) == (2 * CS, 10)
    assert m.chunks[2] == hashlib.sha256(data[2 * CS:]).hexdigest()
    with pytest.raises(IndexError):
        m.span(3)
    assert parse_manifest(json.loads(json.dumps(m.to_json())), m.sha256, m.size) == m


def test_sidecar_cache_keyed_by_size_and_mtime(tmp_path: Path) -> None:
    path = _file(tmp_path, CS + 5)
    first = build_manifest(path, CS)
    assert sidecar_of(path).exists()
    # A cached manifest is used as is: prove it by planting a recognisable (valid) one.
    planted = {**first.to_json(), "chunks": ["0" * 64, "1" * 64]}
    side = json.loads(sidecar_of(path).read_text())
    sidecar_of(path).write_text(json.dumps({**side, "manifest": planted}))
    assert build_manifest(path, CS).chunks == ("0" * 64, "1" * 64)
    # The file changes (new mtime): hashed again.
    path.write_bytes(os.urandom(CS + 5))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = build_manifest(path, CS)
    assert again == hash_file(path, CS) and again.sha256 != first.sha256
    # A damaged sidecar is ignored.
    sidecar_of(path).write_text("{not json")
    assert build_manifest(path, CS) == again


def _good() -> dict[str, Any]:
    return {"version": 1, "sha256": "a" * 64, "size": CS + 1, "chunk_size": CS,
            "chunks": ["b" * 64, "c" * 64]}


@pytest.mark.parametrize(("change", "match"), [
    ({"version": 2}, "version"),
    ({"sha256": "A" * 64}, "sha256"),
    ({"sha256": "a" * 63}, "sha256"),
    ({"sha256": "d" * 64}, "for file"),
    ({"size": -1}, "size"),
    ({"size": True}, "size"),
    ({"size": 1.5}, "size"),
    ({"size": CS}, "record"),
    ({"chunk_size": 1}, "chunk_size"),
    ({"chunk_size": 2**40}, "chunk_size"),
    ({"chunks": "b" * 64}, "list"),
    ({"chunks": ["b" * 64]}, "1 chunk hashes"),
    ({"chunks": ["b" * 64, "c" * 64, "d" * 64]}, "3 chunk hashes"),
    ({"chunks": ["b" * 64, 7]}, "hex"),
    ({"chunks": ["b" * 64, "g" * 64]}, "hex"),
    ({"chunks": ["0" * 64] * (MAX_CHUNKS + 1)}, "at most"),
])
def test_parse_refuses(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_manifest({**_good(), **change}, "a" * 64, CS + 1)


def test_parse_refuses_non_object() -> None:
    with pytest.raises(ManifestError, match="object"):
        parse_manifest([1, 2], None, None)


def test_parse_accepts() -> None:
    m = parse_manifest(_good(), "a" * 64, CS + 1)
    assert m == Manifest("a" * 64, CS + 1, CS, ("b" * 64, "c" * 64))
    assert m.digest != Manifest("a" * 64, CS + 1, CS, ("c" * 64, "b" * 64)).digest
