"""What is in `<data-dir>/models`: sidecars, listing, removal, and `pull` landing files there."""

from __future__ import annotations

import hashlib
import json
import os
import random
from datetime import datetime
from pathlib import Path

import pytest

from covey.errors import FetchError
from covey.fetch import inventory
from covey.fetch.pull import pull
from covey.fetch.sources import HttpFile, parse_source
from tests.file_server import FileServer
from tests.unit.synthetic_gguf import TINY

NOW = datetime.fromisoformat("2026-05-01T12:00:00+00:00")


def gguf(path: Path, seed: int = 1) -> bytes:
    data = TINY + random.Random(seed).randbytes(100_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def test_an_empty_data_dir_lists_nothing(tmp_path: Path) -> None:
    assert inventory.list_models(tmp_path) == []


def test_a_file_without_sidecar_is_hashed_once(tmp_path: Path) -> None:
    path = tmp_path / "models" / "tiny.gguf"
    data = gguf(path)
    (tmp_path / "models" / "notes.txt").write_text("not a model")
    (tmp_path / "models" / "other.gguf.part").write_bytes(b"half")
    [m] = inventory.list_models(tmp_path, NOW)
    assert (m.id, m.path, m.size, m.source, m.fetched_at) == (
        "tiny-q4_k_m", path, len(data), None, None)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    side = json.loads(inventory.sidecar_path(path).read_text())
    assert side["sha256"] == m.sha256 and side["source"] is None

    # The cached value is what the next listing reads (proved by planting another one).
    side["sha256"] = "f" * 64
    inventory.sidecar_path(path).write_text(json.dumps(side))
    assert inventory.list_models(tmp_path)[0].sha256 == "f" * 64


def test_a_stale_sidecar_is_recomputed_and_loses_its_source(tmp_path: Path) -> None:
    path = tmp_path / "models" / "tiny.gguf"
    gguf(path)
    inventory.write_sidecar(path, source="https://example.org/tiny.gguf", sha256="a" * 64,
                            now=NOW)
    data = gguf(path, seed=2) + b"longer"
    path.write_bytes(data)
    [m] = inventory.list_models(tmp_path, NOW)
    assert m.sha256 == hashlib.sha256(data).hexdigest() and m.source is None


@pytest.mark.parametrize("junk", [b"", b"[]", b"{\"sha256\": 5}", b"\xff\xfe", b"{" * 70_000])
def test_a_broken_sidecar_is_ignored(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "models" / "tiny.gguf"
    data = gguf(path)
    inventory.sidecar_path(path).write_bytes(junk)
    assert inventory.list_models(tmp_path)[0].sha256 == hashlib.sha256(data).hexdigest()


def test_a_file_that_is_not_a_gguf_gets_its_name_as_id(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "Odd Name.gguf").write_bytes(b"nope")
    assert [m.id for m in inventory.list_models(tmp_path)] == ["odd-name"]


def test_remove_by_id_takes_the_sidecars_and_nothing_else(tmp_path: Path) -> None:
    models = tmp_path / "models"
    path = models / "tiny.gguf"
    gguf(path)
    gguf(models / "keep.gguf", seed=3)
    inventory.list_models(tmp_path)  # writes both sidecars
    for extra in ("tiny.gguf.manifest.json", "tiny.gguf.part", "tiny.gguf.part.chunks"):
        (models / extra).write_bytes(b"x")
    (models / "tiny.gguf.notes").write_text("the user's, not ours")

    assert inventory.remove(tmp_path, "tiny-q4_k_m") == path
    left = sorted(p.name for p in models.iterdir())
    assert left == ["keep.gguf", "keep.gguf.source.json", "tiny.gguf.notes"]
    assert inventory.remove(tmp_path, "keep.gguf") == models / "keep.gguf"  # by file name


@pytest.mark.parametrize("name", ["nothing", "../models/tiny.gguf", "/etc/passwd", "tiny"])
def test_remove_refuses_anything_but_a_listed_model(tmp_path: Path, name: str) -> None:
    gguf(tmp_path / "models" / "tiny.gguf")
    with pytest.raises(FetchError, match="on disk: tiny-q4_k_m"):
        inventory.remove(tmp_path, name)
    assert (tmp_path / "models" / "tiny.gguf").exists()


def test_remove_takes_a_symlink_not_what_it_points_to(tmp_path: Path) -> None:
    elsewhere = tmp_path / "precious.gguf"
    gguf(elsewhere)
    (tmp_path / "data" / "models").mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / "data" / "models" / "linked.gguf")
    inventory.remove(tmp_path / "data", "linked.gguf")
    assert elsewhere.exists() and not (tmp_path / "data" / "models" / "linked.gguf").exists()


async def test_pull_lands_the_file_with_its_sidecar_and_skips_it_next_time(
        tmp_path: Path) -> None:
    www = tmp_path / "www"
    data = gguf(www / "Tiny.gguf")
    sha = hashlib.sha256(data).hexdigest()
    with FileServer(www) as server:
        text = f"{server.url}/Tiny.gguf#sha256={sha}"
        source = parse_source(text)
        assert isinstance(source, HttpFile)
        got = await pull(source, text, tmp_path / "data", env={})
        again = await pull(source, text, tmp_path / "data", env={})
        assert len(server.requests) == 1  # the second pull found it on disk
    path = tmp_path / "data" / "models" / "Tiny.gguf"
    assert got == again
    assert (got.id, got.path, got.sha256, got.source) == ("tiny-q4_k_m", path, sha, text)
    side = json.loads(inventory.sidecar_path(path).read_text())
    assert side["source"] == text and side["sha256"] == sha and side["size"] == len(data)
    assert side["mtime_ns"] == path.stat().st_mtime_ns
    assert datetime.fromisoformat(side["fetched_at"]).tzinfo is not None


async def test_pull_refuses_to_overwrite_another_file_and_keeps_no_password(
        tmp_path: Path) -> None:
    www = tmp_path / "www"
    gguf(www / "a.gguf")
    gguf(tmp_path / "data" / "models" / "a.gguf", seed=9)
    with FileServer(www) as server:
        text = f"http://user:pw@127.0.0.1:{server.url.rsplit(':', 1)[1]}/a.gguf"
        source = parse_source(text)
        assert isinstance(source, HttpFile)
        with pytest.raises(FetchError, match=r"already exists.*--name"):
            await pull(source, text, tmp_path / "data", env={})
        got = await pull(source, text, tmp_path / "data", env={}, name="b")
    assert got.path.name == "b.gguf" and got.source == text.replace("user:pw@", "")


async def test_pull_from_the_hub_layout_takes_the_hub_sha256(tmp_path: Path) -> None:
    www = tmp_path / "www"
    data = gguf(www / "tiny.gguf")
    with FileServer(www) as cdn, FileServer(www, hub_cdn=cdn.url) as hub:
        text = "hf:someone/tiny-GGUF/tiny.gguf@v2"
        source = parse_source(text)
        got = await pull(source, text, tmp_path,  # type: ignore[arg-type]
                         env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_x"})
        [(hub_path, hub_headers)] = hub.requests
        [(_, cdn_headers)] = cdn.requests
    assert hub_path == "/someone/tiny-GGUF/resolve/v2/tiny.gguf"
    assert hub_headers["authorization"] == "Bearer hf_x" and "authorization" not in cdn_headers
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.source == text
