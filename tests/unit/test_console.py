"""What `covey status` prints beyond its tables."""

from __future__ import annotations


def test_fetch_lines_say_what_each_peer_fetch_is_doing() -> None:
    from covey.console import fetch_lines

    lines = fetch_lines({
        "b-model": {"state": "fetching", "done": 50 * 2**20, "total": 200 * 2**20,
                    "sources": ["a", "c"]},
        "a-model": {"state": "fetched", "seconds": 1.2, "dropped": {"x": "bad chunk"},
                    "bytes_from": {"a": 100 * 2**20, "x": 0, "c": 20 * 2**20}},
        "c-model": {"state": "failed", "reason": "no source left"},
        "d-model": {"state": "waiting for a peer that serves it"}})
    assert lines == [
        "a-model: fetched from peers in 1.2s (a 100 MiB, c 20 MiB; dropped x)",
        "b-model: fetching from a, c: 25% of 200 MiB",
        "c-model: failed: no source left",
        "d-model: waiting for a peer that serves it"]
