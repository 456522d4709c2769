"""The sharing side's decisions: rate limiting, what is asked, what is refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from covey.fetch.serve import (
    FileShare,
    ShareRefused,
    TokenBucket,
    mbps_to_bytes,
    parse_chunk_ask,
    parse_manifest_ask,
)


def test_token_bucket_paces_after_the_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=50.0)
    assert bucket.reserve(50, now=0.0) == 0.0  # the burst goes at once
    assert bucket.reserve(100, now=0.0) == pytest.approx(1.0)  # then 100 bytes take 1 s
    assert bucket.reserve(100, now=1.0) == pytest.approx(1.0)  # in debt until t=2
    assert bucket.reserve(10, now=10.0) == 0.0  # refilled (capped at the burst)
    assert bucket.tokens == pytest.approx(40.0)


def test_token_bucket_unlimited() -> None:
    assert TokenBucket(rate=0.0, burst=0.0).reserve(10**12, now=0.0) == 0.0


def test_rate_is_megabits() -> None:
    assert mbps_to_bytes(8) == 1_000_000


def test_overall_and_per_peer_limits() -> None:
    now = [0.0]
    share = FileShare(mbps=8, peer_mbps=4, clock=lambda: now[0], piece_bytes=1)
    # burst: a quarter second of each rate
    assert share._reserve("a", 125_000) == 0.0  # within both bursts
    assert share._reserve("a", 500_000) == pytest.approx(1.0)  # a's own 0.5 MB/s binds
    assert share._reserve("b", 250_000) == pytest.approx(0.625)  # the overall 1 MB/s binds


@pytest.mark.parametrize("body", [{}, {"sha256": "A" * 64}, {"sha256": 5},
                                  {"sha256": "a" * 65}])
def test_manifest_ask_refused(body: dict[str, object]) -> None:
    with pytest.raises(ShareRefused) as info:
        parse_manifest_ask(body)
    assert info.value.status == 400


@pytest.mark.parametrize("index", [None, -1, True, 1.0, "1"])
def test_chunk_ask_refused(index: object) -> None:
    with pytest.raises(ShareRefused, match="index"):
        parse_chunk_ask({"sha256": "a" * 64, "index": index})
    assert parse_chunk_ask({"sha256": "a" * 64, "index": 3}) == ("a" * 64, 3)


async def test_refusals_and_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(os.urandom(1000))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    share = FileShare()
    share.register(sha, path)
    assert (await share.manifest(sha)).size == 1000
    with pytest.raises(ShareRefused) as info:
        await share.manifest("b" * 64)
    assert info.value.status == 404
    share.enabled = False
    with pytest.raises(ShareRefused, match="turned model sharing off") as info:
        await share.manifest(sha)
    assert info.value.status == 403
    share.enabled = True
    path.write_bytes(os.urandom(1001))  # replaced on disk by another file
    with pytest.raises(ShareRefused) as info:
        await share.manifest(sha)
    assert info.value.status == 409
    path.unlink()
    with pytest.raises(ShareRefused) as info:
        await share.manifest(sha)
    assert info.value.status == 409
    with pytest.raises(ValueError):
        share.register("nope", path)



def test_settings_share_models_flags() -> None:
    import argparse

    from covey.config import add_flags, flag_values, from_layers
    from covey.errors import ConfigError

    def flags(*argv: str) -> dict[str, object]:
        parser = argparse.ArgumentParser()
        add_flags(parser)
        return flag_values(parser.parse_args(list(argv)))

    s = from_layers({}, {}, flags("--no-share-models", "--share-models-mbps", "200"))
    assert s.share_models is False and s.share_models_mbps == 200.0
    assert from_layers({}, {}, flags()).share_models is True
    with pytest.raises(ConfigError, match="share_models_mbps"):
        from_layers({}, {}, flags("--share-models-mbps", "-1"))._check()
