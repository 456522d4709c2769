"""A file's manifest: the sha256 of each fixed-size chunk, bound to the whole file's sha256.

A node that shares a model file builds its manifest once (one read of the file, which also
yields the whole-file sha256) and caches it in a sidecar `<file>.manifest.json`, keyed by the
file's size and mtime so a changed file gets a new one. A fetching node checks every chunk
against the manifest as it arrives, and the whole file against the sha256 the serving node
published in its signed record at the end: a manifest only says which bytes to expect, the
signed sha256 says which file is right.

A manifest received from a peer is hostile input: `parse_manifest` checks every field
(sizes, counts, hex, the chunk count against size and chunk size) within fixed caps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 1
CHUNK_SIZE = 8 * 1024 * 1024  # bytes per chunk: one verified unit of transfer
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_CHUNKS = 65_536  # 512 GiB at 8 MiB: every GGUF there is, with room
MAX_SIZE = MAX_CHUNKS * CHUNK_SIZE
# The manifest's JSON on the wire: ~68 bytes per chunk hash.
MAX_MANIFEST_BYTES = 256 * 1024 + 70 * MAX_CHUNKS
SIDECAR_SUFFIX = ".manifest.json"
_HEX = frozenset("0123456789abcdef")


class ManifestError(ValueError):
    """A manifest that cannot be used: malformed, over a cap, or for another file."""


def is_sha256(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


@dataclass(frozen=True)
class Manifest:
    sha256: str  # the whole file's
    size: int  # bytes
    chunk_size: int  # bytes; the last chunk may be shorter
    chunks: tuple[str, ...]  # sha256 of each chunk, in file order

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index` in the file."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk {index} of {len(self.chunks)}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    @property
    def digest(self) -> str:
        """Names this exact list of chunk hashes (a resumed fetch checks it is the same)."""
        return hashlib.sha256(
            f"{self.sha256}:{self.size}:{self.chunk_size}:{','.join(self.chunks)}".encode()
        ).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "sha256": self.sha256, "size": self.size,
                "chunk_size": self.chunk_size, "chunks": list(self.chunks)}


def parse_manifest(data: object, sha256: str | None = None,
                   size: int | None = None) -> Manifest:
    """A manifest from untrusted JSON, checked strictly; `sha256` and `size`, when given,
    must be the ones it states (the file that was asked for). Raises ManifestError."""
    if not isinstance(data, dict):
        raise ManifestError("a manifest must be a JSON object")
    got_sha, got_size = data.get("sha256"), data.get("size")
    chunk_size, chunks = data.get("chunk_size"), data.get("chunks")
    if data.get("version") != VERSION:
        raise ManifestError(f"manifest version {str(data.get('version'))[:16]!r} is not "
                            f"{VERSION}")
    if not isinstance(got_sha, str) or not is_sha256(got_sha):
        raise ManifestError("the manifest's sha256 is not 64 lowercase hex digits")
    if sha256 is not None and got_sha != sha256:
        raise ManifestError(f"the manifest is for file {str(got_sha)[:12]}…, not "
                            f"{sha256[:12]}…")
    if not isinstance(got_size, int) or isinstance(got_size, bool) \
            or not 0 <= got_size <= MAX_SIZE:
        raise ManifestError(f"the manifest's size is not a whole number 0..{MAX_SIZE}")
    if size is not None and got_size != size:
        raise ManifestError(f"the manifest says {got_size} bytes, the record {size}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) \
            or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    if not isinstance(chunks, list) or len(chunks) > MAX_CHUNKS:
        raise ManifestError(f"chunks must be a list of at most {MAX_CHUNKS} hashes")
    if len(chunks) != chunk_count(got_size, chunk_size):
        raise ManifestError(f"{len(chunks)} chunk hashes for {got_size} bytes in chunks of "
                            f"{chunk_size}")
    if not all(is_sha256(c) for c in chunks):
        raise ManifestError("a chunk hash is not 64 lowercase hex digits")
    return Manifest(got_sha, got_size, chunk_size, tuple(chunks))


def hash_file(path: Path, chunk_size: int = CHUNK_SIZE) -> Manifest:
    """Read `path` once: each chunk's sha256 and the whole file's. Blocking."""
    whole, chunks, size = hashlib.sha256(), [], 0
    with path.open("rb", buffering=0) as f:
        while block := f.read(chunk_size):
            # A short read mid-file would shift every later chunk: read to the full size.
            while len(block) < chunk_size and (more := f.read(chunk_size - len(block))):
                block += more
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    return Manifest(whole.hexdigest(), size, chunk_size, tuple(chunks))


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def build_manifest(path: Path, chunk_size: int = CHUNK_SIZE) -> Manifest:
    """The manifest of `path`, from its sidecar when that was made for the file's current
    size and mtime, else by reading the file (and then saved in the sidecar; a sidecar that
    cannot be written only costs a re-read next time). Blocking: run it in a thread."""
    st = path.stat()
    cached = _load_sidecar(sidecar_of(path), st, chunk_size)
    if cached is not None:
        return cached
    manifest = hash_file(path, chunk_size)
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise ManifestError(f"{path.name} changed while it was being hashed")
    with contextlib.suppress(OSError):  # a read-only models folder: no cache, still correct
        tmp = sidecar_of(path).with_suffix(".tmp")
        tmp.write_text(json.dumps({"file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns,
                                   "manifest": manifest.to_json()}))
        os.replace(tmp, sidecar_of(path))
    return manifest


def _load_sidecar(sidecar: Path, st: os.stat_result, chunk_size: int) -> Manifest | None:
    try:
        if sidecar.stat().st_size > MAX_MANIFEST_BYTES + 1024:
            return None
        data = json.loads(sidecar.read_text())
        if (not isinstance(data, dict) or data.get("file_size") != st.st_size
                or data.get("file_mtime_ns") != st.st_mtime_ns):
            return None
        manifest = parse_manifest(data.get("manifest"), size=st.st_size)
    # Missing, damaged or stale: the file is hashed again, which is always right.
    except (OSError, ValueError):
        return None
    return manifest if manifest.chunk_size == chunk_size else None
