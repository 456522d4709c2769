"""The peer fetcher against in-memory peers: corrupt chunks, dying sources, resume."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from covey.errors import FetchError
from covey.fetch.download import part_path
from covey.fetch.manifest import MIN_CHUNK_SIZE, Manifest
from covey.fetch.peers import FetchResult, fetch_from_peers, record_of
from covey.fetch.serve import CHUNK_PATH, MANIFEST_PATH
from covey.mesh.peer_transport import Peer, PeerError
from tests.memory_transport import Handler, MemoryTransport

CS = MIN_CHUNK_SIZE
DATA = os.urandom(9 * CS + 123)
SHA = hashlib.sha256(DATA).hexdigest()
MANIFEST = Manifest(SHA, len(DATA), CS, tuple(
    hashlib.sha256(DATA[i:i + CS]).hexdigest() for i in range(0, len(DATA), CS)))


def _peer(n: int) -> Peer:
    return Peer(f"{n:x}" * 64, (f"10.0.0.{n}:7070",), f"p{n}")


class FakeSource:
    """Serves DATA; `corrupt` chunks come back altered, after `die_after` chunks every call
    fails to connect, and `refuse` answers every chunk with that HTTP status."""

    def __init__(self, *, corrupt: frozenset[int] = frozenset(), die_after: int | None = None,
                 refuse: int | None = None, manifest: dict[str, object] | None = None) -> None:
        self.corrupt, self.die_after, self.refuse = corrupt, die_after, refuse
        self.manifest = manifest or MANIFEST.to_json()
        self.served: list[int] = []

    async def __call__(self, path: str, headers: Mapping[str, str],
                       body: bytes) -> tuple[int, list[bytes]]:
        ask = json.loads(body)
        if self.die_after is not None and len(self.served) >= self.die_after:
            raise PeerError("connect", "connection refused")
        if path == MANIFEST_PATH:
            assert ask == {"sha256": SHA}
            return 200, [json.dumps(self.manifest).encode()]
        assert path == CHUNK_PATH
        if self.refuse is not None:
            return self.refuse, [json.dumps({"error": {"message": "sharing is off"}}).encode()]
        index = ask["index"]
        self.served.append(index)
        offset, length = MANIFEST.span(index)
        chunk = DATA[offset:offset + length]
        if index in self.corrupt:
            chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
        half = len(chunk) // 2
        return 200, [chunk[:half], chunk[half:]]


def _transport(sources: dict[Peer, Handler]) -> MemoryTransport:
    return MemoryTransport(lambda audience, path, body: {},
                           {p.fingerprint: h for p, h in sources.items()})


async def _fetch(target: Path, sources: dict[Peer, Handler], **kw: Any) -> FetchResult:
    seen: list[tuple[int, int]] = []
    result = await fetch_from_peers(SHA, len(DATA), list(sources), _transport(sources), target,
                                    lambda d, t: seen.append((d, t)), parallel=2,
                                    flush_every_s=0, **kw)
    assert seen[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    return result


async def test_two_sources_share_the_work(tmp_path: Path) -> None:
    a, b = FakeSource(), FakeSource()
    target = tmp_path / "m.gguf"
    result = await _fetch(target, {_peer(1): a, _peer(2): b})
    assert target.read_bytes() == DATA
    assert not part_path(target).exists() and not record_of(target).exists()
    assert result.dropped == {}
    assert sum(result.bytes_from.values()) == len(DATA)
    assert a.served and b.served


async def test_corrupt_chunk_drops_the_source_and_the_file_completes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad, good = FakeSource(corrupt=frozenset({0, 1, 2, 3})), FakeSource()
    target = tmp_path / "m.gguf"
    with caplog.at_level(logging.WARNING, "covey.fetch.peers"):
        result = await _fetch(target, {_peer(1): bad, _peer(2): good})
    assert target.read_bytes() == DATA
    assert list(result.dropped) == ["p1"]
    assert "did not match its hash" in result.dropped["p1"]
    drops = [r.getMessage() for r in caplog.records if "dropped source" in r.getMessage()]
    assert len(drops) == 1 and "p1" in drops[0]


async def test_source_dying_mid_transfer(tmp_path: Path) -> None:
    dying, good = FakeSource(die_after=3), FakeSource()
    target = tmp_path / "m.gguf"
    result = await _fetch(target, {_peer(1): dying, _peer(2): good}, max_errors=2)
    assert target.read_bytes() == DATA
    assert "connection refused" in result.dropped["p1"]


async def test_hung_source_times_out(tmp_path: Path) -> None:
    never = asyncio.Event()

    async def hung(path: str, headers: Mapping[str, str], body: bytes
                   ) -> tuple[int, list[bytes]]:
        if path == MANIFEST_PATH:
            return 200, [json.dumps(MANIFEST.to_json()).encode()]
        await never.wait()
        raise AssertionError("unreachable")

    target = tmp_path / "m.gguf"
    result = await _fetch(target, {_peer(1): hung, _peer(2): FakeSource()}, max_errors=1,
                          idle_timeout_s=0.2)
    # Dropped after its idle timeout, or overtaken in the end game: either way the other
    # source delivered the file.
    assert result.bytes_from["p1"] == 0
    assert target.read_bytes() == DATA


async def test_refusing_source_dropped_at_once(tmp_path: Path) -> None:
    off, good = FakeSource(refuse=403), FakeSource()
    target = tmp_path / "m.gguf"
    result = await _fetch(target, {_peer(1): off, _peer(2): good}, max_errors=100)
    assert "sharing is off" in result.dropped["p1"]
    assert target.read_bytes() == DATA


async def test_disagreeing_manifest_drops_that_source(tmp_path: Path) -> None:
    other = {**MANIFEST.to_json(), "chunks": ["0" * 64] * len(MANIFEST.chunks)}
    liar = FakeSource(manifest=other)
    good = FakeSource()
    target = tmp_path / "m.gguf"
    result = await _fetch(target, {_peer(1): good, _peer(2): liar})
    assert "manifest differs" in result.dropped["p2"]
    assert liar.served == []
    assert target.read_bytes() == DATA


async def test_all_sources_bad(tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    sources = {_peer(1): FakeSource(corrupt=frozenset(range(10))),
               _peer(2): FakeSource(refuse=404)}
    with pytest.raises(FetchError, match="every peer was dropped") as info:
        await fetch_from_peers(SHA, len(DATA), list(sources), _transport(sources), target)
    assert "p1" in str(info.value) and "p2" in str(info.value)
    assert not target.exists()


async def test_no_manifest_anywhere(tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    sources = {_peer(1): FakeSource(manifest={"version": 1, "sha256": SHA}),
               _peer(2): FakeSource(die_after=0)}
    with pytest.raises(FetchError, match="no peer could give the manifest"):
        await fetch_from_peers(SHA, len(DATA), list(sources), _transport(sources), target)
    assert not target.exists() and not part_path(target).exists()


async def test_lying_manifest_caught_by_whole_file_sha(tmp_path: Path) -> None:
    # One source consistently serves another file under this sha256: every chunk matches
    # its manifest, only the whole-file check can tell.
    fake_data = os.urandom(len(DATA))
    fake = Manifest(SHA, len(DATA), CS, tuple(
        hashlib.sha256(fake_data[i:i + CS]).hexdigest() for i in range(0, len(DATA), CS)))

    async def liar(path: str, headers: Mapping[str, str], body: bytes
                   ) -> tuple[int, list[bytes]]:
        if path == MANIFEST_PATH:
            return 200, [json.dumps(fake.to_json()).encode()]
        offset, length = fake.span(json.loads(body)["index"])
        return 200, [fake_data[offset:offset + length]]

    target = tmp_path / "m.gguf"
    with pytest.raises(FetchError, match="sha256"):
        await fetch_from_peers(SHA, len(DATA), [_peer(1)], _transport({_peer(1): liar}),
                               target)
    assert not target.exists() and not part_path(target).exists()


async def test_interrupted_then_resumed(tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    first = FakeSource(die_after=4)
    with pytest.raises(FetchError):
        await fetch_from_peers(SHA, len(DATA), [_peer(1)], _transport({_peer(1): first}),
                               target, parallel=1, max_errors=1, flush_every_s=0)
    kept = json.loads(record_of(target).read_text())["done"]
    assert kept == [0, 1, 2, 3] and not target.exists()
    second = FakeSource()
    result = await _fetch(target, {_peer(2): second})
    assert sorted(second.served) == list(range(4, len(MANIFEST.chunks)))
    assert result.resumed_bytes == 4 * CS
    assert target.read_bytes() == DATA


async def test_resume_record_for_another_file_is_ignored(tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    part_path(target).write_bytes(b"\0" * len(DATA))
    record_of(target).write_text(json.dumps({"version": 1, "sha256": "e" * 64,
                                             "size": len(DATA), "done": [0, 1]}))
    src = FakeSource()
    result = await _fetch(target, {_peer(1): src})
    assert result.resumed_bytes == 0
    assert target.read_bytes() == DATA


async def test_resume_with_another_manifest_rechecks_chunks(tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    part = bytearray(len(DATA))
    part[:2 * CS] = DATA[:2 * CS]  # chunks 0 and 1 are right, 2 is recorded but wrong
    part_path(target).write_bytes(bytes(part))
    record_of(target).write_text(json.dumps({"version": 1, "sha256": SHA, "size": len(DATA),
                                             "manifest": "f" * 64, "done": [0, 1, 2]}))
    src = FakeSource()
    result = await _fetch(target, {_peer(1): src})
    assert result.resumed_bytes == 2 * CS
    assert 2 in src.served and 0 not in src.served
    assert target.read_bytes() == DATA
