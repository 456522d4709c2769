"""Resumable, verified downloads against a local server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from covey.errors import FetchError
from covey.fetch import download as download_module
from covey.fetch.download import download, fetch_file, part_path
from tests.file_server import FileServer

SIZE = 5 * 2**20 + 12_345  # not a whole number of blocks
NO_WAIT = (0.0,) * 5


class Served(NamedTuple):
    server: FileServer
    data: bytes
    sha256: str
    url: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    folder = tmp_path / "www"
    folder.mkdir()
    data = random.Random(12).randbytes(SIZE)
    (folder / "model.gguf").write_bytes(data)
    with FileServer(folder) as server:
        yield Served(server, data, hashlib.sha256(data).hexdigest(), f"{server.url}/model.gguf")


def ranges(server: FileServer) -> list[str | None]:
    return [headers.get("range") for _, headers in server.requests]


async def test_whole_download(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "models" / "m.gguf"
    seen: list[tuple[int, int | None]] = []
    got = await fetch_file(served.url, target, sha256=served.sha256,
                           progress=lambda done, total: seen.append((done, total)))
    assert got.path == target and got.size == SIZE and got.sha256 == served.sha256
    assert target.read_bytes() == served.data
    assert not part_path(target).exists()
    assert seen[0] == (0, SIZE) and seen[-1] == (SIZE, SIZE)
    assert ranges(served.server) == [None]


async def test_resumes_after_the_server_cuts_the_connection(
        served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    served.server.cut_once["model.gguf"] = 2 * 2**20 + 7
    target = tmp_path / "m.gguf"
    with caplog.at_level(logging.WARNING, logger="covey.fetch"):
        await download(served.url, target, sha256=served.sha256, retry_delays_s=NO_WAIT)
    assert target.read_bytes() == served.data
    first, second = ranges(served.server)
    assert first is None
    assert second is not None and second.startswith("bytes=") and second != "bytes=0-"
    retries = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert len(retries) == 1 and "retry 1 of 5" in retries[0]


async def test_resumes_from_a_part_left_by_an_earlier_run(served: Served,
                                                          tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    part_path(target).write_bytes(served.data[:3_000_000])
    got = await fetch_file(served.url, target, sha256=served.sha256)
    assert got.sha256 == served.sha256 and target.read_bytes() == served.data
    assert ranges(served.server) == ["bytes=3000000-"]


async def test_a_whole_part_is_kept_when_the_server_says_416(served: Served,
                                                             tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    part_path(target).write_bytes(served.data)
    got = await fetch_file(served.url, target, sha256=served.sha256)
    assert got.sha256 == served.sha256 and target.read_bytes() == served.data
    assert ranges(served.server) == [f"bytes={SIZE}-"]


async def test_a_part_longer_than_the_file_starts_over(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    part_path(target).write_bytes(served.data + b"junk")
    await download(served.url, target, sha256=served.sha256)
    assert target.read_bytes() == served.data
    assert ranges(served.server) == [f"bytes={SIZE + 4}-", None]


async def test_200_to_a_range_request_starts_over(served: Served, tmp_path: Path) -> None:
    served.server.ignore_range = True
    target = tmp_path / "m.gguf"
    part_path(target).write_bytes(b"not the right bytes" * 1000)
    got = await fetch_file(served.url, target, sha256=served.sha256)
    assert got.sha256 == served.sha256 and target.read_bytes() == served.data
    assert ranges(served.server) == [f"bytes={19_000}-"]


async def test_bad_sha256_is_refused_and_leaves_nothing(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    wrong = "0" * 64
    with pytest.raises(FetchError) as caught:
        await download(served.url, target, sha256=wrong)
    assert wrong in caught.value.message and served.sha256 in caught.value.message
    assert not target.exists() and not part_path(target).exists()


async def test_too_little_disk_is_refused_before_any_byte(
        served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = 1_000_000

    def tiny(path: object) -> shutil._ntuple_diskusage:
        return shutil._ntuple_diskusage(10**12, 10**12 - free, free)

    monkeypatch.setattr(download_module.shutil, "disk_usage", tiny)
    target = tmp_path / "m.gguf"
    with pytest.raises(FetchError, match="disk space") as caught:
        await download(served.url, target)
    assert str(SIZE) in caught.value.message and str(free) in caught.value.message
    assert not target.exists() and not part_path(target).exists()


async def test_missing_file_names_the_status(served: Served, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="404"):
        await download(f"{served.server.url}/nothing.gguf", tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == ["www"]


async def test_a_host_that_never_answers_fails_without_retrying(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` now; retries would wait the default 31 s before failing.
    with pytest.raises(FetchError, match=r"cannot reach 127\.0\.0\.1"):
        await download(f"http://127.0.0.1:{port}/m.gguf", tmp_path / "m.gguf")


async def test_hub_redirect_drops_the_token_and_supplies_the_sha256(tmp_path: Path) -> None:
    folder = tmp_path / "www"
    folder.mkdir()
    data = random.Random(3).randbytes(2 * 2**20)
    (folder / "x.gguf").write_bytes(data)
    with FileServer(folder) as cdn, FileServer(folder, hub_cdn=cdn.url) as hub:
        got = await fetch_file(f"{hub.url}/o/r/resolve/main/x.gguf", tmp_path / "x.gguf",
                               headers={"Authorization": "Bearer hf_secret"},
                               sha256_from_hub=True)
        assert got.sha256 == hashlib.sha256(data).hexdigest()
        [(_, hub_headers)] = hub.requests
        [(cdn_path, cdn_headers)] = cdn.requests
    assert hub_headers["authorization"] == "Bearer hf_secret"
    assert "authorization" not in cdn_headers
    assert cdn_path == "/x.gguf?X-Amz-Signature=abc%2Fdef"  # the signed URL, not re-encoded


async def test_hub_sha256_catches_a_cdn_serving_other_bytes(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    (tmp_path / "cdn").mkdir()
    (tmp_path / "hub" / "x.gguf").write_bytes(b"what the hub hashed" * 1000)
    (tmp_path / "cdn" / "x.gguf").write_bytes(b"what the cdn sends!" * 1000)
    target = tmp_path / "x.gguf"
    with FileServer(tmp_path / "cdn") as cdn, \
            FileServer(tmp_path / "hub", hub_cdn=cdn.url) as hub:
        with pytest.raises(FetchError, match="sha256 mismatch"):
            await download(f"{hub.url}/o/r/resolve/main/x.gguf", target, sha256_from_hub=True)
    assert not target.exists() and not part_path(target).exists()
