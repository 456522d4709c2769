"""Server-Timing: parsing a peer's header (hostile) and splitting one hop's time."""

from __future__ import annotations

import pytest

from covey.metrics.server_timing import parse, render, split


@pytest.mark.parametrize(("header", "expected"), [
    ("route;dur=1.5, engine;dur=20", {"route": 1.5, "engine": 20.0}),
    ('engine;desc="llama.cpp";dur=3', {"engine": 3.0}),
    ("cache, db;dur=2.0", {"db": 2.0}),  # a metric without dur is skipped
    ("engine;dur=nan, route;dur=-1", {}),
    ("engine;dur=1e400", {}),  # not a plain decimal: refused
    ("x" * 600, {}),  # oversize
    ("", {}),
    (None, {}),
])
def test_parse(header: str | None, expected: dict[str, float]) -> None:
    assert parse(header) == expected


def test_split_local_hop_is_route_plus_engine() -> None:
    assert split(0.5, 30.0, None) == {"route": 0.5, "engine": 30.0}


def test_split_peer_hop_subtracts_the_peers_parts() -> None:
    parts = split(0.5, 40.0, {"route": 0.3, "engine": 30.0})
    assert parts == pytest.approx({"route": 0.8, "network": 9.7, "engine": 30.0})


def test_a_lying_peer_cannot_invent_time() -> None:
    parts = split(0.5, 10.0, {"route": 50.0, "engine": 1000.0})
    assert parts["engine"] == 10.0 and parts["network"] == 0.0
    assert sum(parts.values()) == pytest.approx(10.5)


def test_render_round_trips() -> None:
    parts = {"route": 0.25, "network": 1.5, "engine": 12.0}
    assert parse(render(parts)) == parts
