"""Health layers: a failure silences the layers above it; roster freshness; probe parsing."""

from __future__ import annotations

import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.health import layers as L
from covey.health.local import roster_layer
from covey.health.probe import Target, engines_ready, split_address, tcp_connect
from covey.mesh.peer_transport import Peer
from covey.mesh.records import new_record


def test_settle_silences_layers_above_the_first_failure() -> None:
    results = [L.passed(5, "fresh"), L.failed(6, "connection refused", "start it"),
               L.failed(8, "noise", "noise")]
    settled = L.settle(results, L.PEER_LAYERS)
    assert [r.layer for r in settled] == list(range(5, 12))
    assert [r.ok for r in settled] == [True, False, None, None, None, None, None]
    assert "layer 6 (TCP connect) failed" in settled[3].detail
    report = L.report(settled, 1.0)
    assert report["ok"] is False and report["first_failure"]["layer"] == 6
    assert report["first_failure"]["fix"] == "start it"


def test_nothing_checked_is_unknown_not_ok() -> None:
    report = L.report(L.settle([], L.PEER_LAYERS), None)
    assert report["ok"] is None and report["first_failure"] is None
    assert all(layer["detail"] == "not checked yet" for layer in report["layers"])


def _record(issued: float, ttl: float = 30.0) -> object:
    return new_record(Ed25519PrivateKey.generate(), mesh_id="m", seq=1, now=issued,
                      ttl_s=ttl)


@pytest.mark.parametrize(("issued", "now", "ok", "words"), [
    (100.0, 101.0, True, "1.0s old"),
    (100.0, 110.0, False, "10s old"),
    (100.0, 200.0, False, "not present"),  # expired
])
def test_roster_freshness(issued: float, now: float, ok: bool, words: str) -> None:
    result = roster_layer(_record(issued), "peer", now, fresh_s=3.0)  # type: ignore[arg-type]
    assert result.ok is ok and words in result.detail


def test_missing_record_is_not_present() -> None:
    result = roster_layer(None, "peer", 0.0, 3.0)
    assert result.ok is False and "covey serve" in result.fix


@pytest.mark.parametrize(("answer", "ok", "words"), [
    ({"models": {"a": {"state": "ready"}}}, True, "1 model(s) ready"),
    ({"models": {"a": {"state": "failed", "reason": "bad file"}}}, False, "failed: bad file"),
    ({"models": {}}, False, "is absent"),
    ({"models": "garbage"}, False, "is absent"),
    ({}, False, "is absent"),
])
def test_engines_ready(answer: dict[str, object], ok: bool, words: str) -> None:
    result = engines_ready(Target(Peer("ab" * 32, ("h:1",), "peer", "id")), answer, ["a"])
    assert result.ok is ok and words in result.detail


def test_split_address() -> None:
    assert split_address("10.0.0.1:7070") == ("10.0.0.1", 7070)
    assert split_address("[fe80::1]:7070") == ("fe80::1", 7070)


async def test_refused_connection_names_covey_not_running() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = await tcp_connect(Target(Peer("ab" * 32, (f"127.0.0.1:{port}",), "peer", "id")), 2.0)
    assert result.ok is False and "refused" in result.detail and "covey serve" in result.fix
