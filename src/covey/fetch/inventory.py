"""What model files sit in `<data-dir>/models`, where each came from, and removing one.

Each fetched file has a sidecar `<file>.source.json`: {"source", "sha256", "size",
"mtime_ns", "fetched_at"}. A GGUF without one (copied in by hand, or an embedded model) gets
its sha256 computed once and cached in a sidecar with `"source": null`; a sidecar whose size
or mtime no longer matches its file is stale and recomputed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from covey.engine.catalog import ModelFileError, model_id_for, read_card, sha256_file
from covey.errors import FetchError
from covey.fetch.manifest import is_sha256
from covey.types import ModelId

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".source.json"
MAX_SIDECAR_BYTES = 64 * 1024


@dataclass(frozen=True)
class OnDisk:
    id: ModelId
    path: Path
    size: int
    sha256: str
    source: str | None  # the SOURCE it was pulled from; None: put there by other means
    fetched_at: str | None  # ISO 8601, UTC


def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: Path, *, source: str | None, sha256: str, now: datetime) -> None:
    """Record where `path` came from (atomically: a reader sees the old sidecar or the new)."""
    st = path.stat()
    facts = {"source": source, "sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "fetched_at": now.isoformat(timespec="seconds") if source is not None else None}
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(facts, indent=2) + "\n")
    os.replace(tmp, side)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's facts when it exists, parses, and still describes `path`; else None."""
    side = sidecar_path(path)
    try:
        with side.open("rb") as f:
            facts = json.loads(f.read(MAX_SIDECAR_BYTES + 1)[:MAX_SIDECAR_BYTES])
        st = path.stat()
    # Missing, unreadable or hand-edited into nonsense: recompute rather than trust it.
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or not is_sha256(facts.get("sha256")):
        return None
    if facts.get("size") != st.st_size or facts.get("mtime_ns") != st.st_mtime_ns:
        return None
    source = facts.get("source")
    fetched = facts.get("fetched_at")
    return {"sha256": facts["sha256"], "size": st.st_size,
            "source": source[:2048] if isinstance(source, str) else None,
            "fetched_at": fetched[:40] if isinstance(fetched, str) else None}


def describe(path: Path, now: datetime,
             digest_of: Callable[[Path], str] = sha256_file) -> OnDisk:
    """One file's facts. Blocking: hashes the file with `digest_of` when no valid sidecar
    holds its sha256 (a node about to offer the file builds its peer manifest in that one
    read, rather than reading a multi-gigabyte file twice)."""
    facts = read_sidecar(path)
    if facts is None:
        # A stale sidecar's source is dropped too: the file changed, so it may not be what
        # was fetched from there.
        digest = digest_of(path)
        write_sidecar(path, source=None, sha256=digest, now=now)
        facts = read_sidecar(path) or {"sha256": digest, "size": path.stat().st_size,
                                       "source": None, "fetched_at": None}
    return OnDisk(model_id(path), path, facts["size"], facts["sha256"], facts["source"],
                  facts["fetched_at"])


def list_models(data_dir: Path, now: datetime | None = None) -> list[OnDisk]:
    """Every GGUF in `<data_dir>/models`, by id. Blocking (may hash files, see `describe`)."""
    folder = models_dir(data_dir)
    if not folder.is_dir():
        return []
    when = now or datetime.now().astimezone()
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() == ".gguf" and p.is_file() and not p.name.startswith("."))
    return sorted((describe(p, when) for p in files), key=lambda m: m.id)


def model_id(path: Path) -> ModelId:
    """The id a node serves this file under (catalog.read_card), or the bare file-name id
    when the file is not a readable GGUF."""
    try:
        return read_card(path).id
    except ModelFileError:
        return model_id_for(path, None)


def find(data_dir: Path, model: str) -> Path | None:
    """The file in `<data_dir>/models` whose model id or file name is `model`."""
    folder = models_dir(data_dir)
    if not folder.is_dir() or "/" in model or "\\" in model:
        return None
    for p in sorted(folder.glob("*.gguf")):
        if p.is_file() and (p.name == model or model.lower() == model_id(p)):
            return p
    return None


def remove(data_dir: Path, model: str) -> Path:
    """Delete the GGUF whose model id (or file name) is `model` from `<data_dir>/models`,
    with its sidecars and any leftover `.part`. Refuses anything else."""
    folder = models_dir(data_dir)
    path = find(data_dir, model)
    if path is None:
        known = ", ".join(m.id for m in list_models(data_dir)) or "none"
        raise FetchError(f"no model {model!r} in {folder} (on disk: {known})")
    # `find` only returns entries of the folder; a symlink there is removed itself, never
    # what it points to.
    path.unlink()
    for extra in _sidecars(path):
        extra.unlink(missing_ok=True)
    return path


def _sidecars(path: Path) -> list[Path]:
    """Files named `<file>.<…>.json` (this module's, the peer manifest's) and `<file>.part…`."""
    prefix = path.name + "."
    return [p for p in path.parent.iterdir()
            if p.name.startswith(prefix) and (p.name.endswith(".json")
                                              or p.name[len(prefix):].startswith("part"))]

