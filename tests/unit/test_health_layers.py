"""Health layers: a failure silences the layers above it; roster freshness; probe parsing."""

from __future__ import annotations

import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.health import layers as L
from covey.health.local import is_loopback, loopback_only, roster_layer
from covey.health.probe import Target, engines_ready, tcp_connect
from covey.mesh.addresses import split_address
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


def _peer_at(*addresses: str) -> object:
    return new_record(Ed25519PrivateKey.generate(), mesh_id="m", seq=1, now=0, ttl_s=30,
                      name="peer", addresses=list(addresses))


HERE = {"127.0.0.1", "::1", "10.0.0.1"}  # this machine's interface addresses


@pytest.mark.parametrize(("own", "peers", "names"), [
    (["127.0.0.1:7071"], [["10.0.0.2:7070"]], "127.0.0.1:7071"),  # the case to name
    (["127.0.0.1:7071"], [["127.0.0.1:7072"], ["10.0.0.2:7070"]], "10.0.0.2:7070"),
    (["[::1]:7071"], [["[fd00::2]:7070"]], "[::1]:7071"),
    (["localhost:7071"], [["peer.lan:7070"]], "localhost:7071"),
    (["127.0.0.1:7071"], [["127.0.0.1:7072"]], None),  # everyone on this machine
    (["127.0.0.1:7071"], [["10.0.0.1:7072"]], None),  # a peer on this host's LAN address
    (["10.0.0.1:7071"], [["10.0.0.2:7070"]], None),  # reachable from elsewhere
    (["127.0.0.1:7071", "10.0.0.1:7071"], [["10.0.0.2:7070"]], None),  # one is enough
    ([], [["10.0.0.2:7070"]], None),  # not listening yet: nothing to judge
    (["127.0.0.1:7071"], [], None),  # no peers
])
def test_loopback_only_node_is_named_with_the_fix(own: list[str], peers: list[list[str]],
                                                  names: str | None) -> None:
    records = [_peer_at(*addresses) for addresses in peers]
    result = loopback_only(own, records, HERE)  # type: ignore[arg-type]
    if names is None:
        assert result is None
        return
    assert result is not None and result.layer == 4 and result.ok is False
    assert result.detail.startswith(f"this node advertises only loopback ({own[0]})")
    assert "but its peers are on other hosts" in result.detail and names in result.detail
    assert result.fix == ("start it with --mesh-host 0.0.0.0 (or --advertise HOST:PORT) so "
                          "peers can reach it")


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:1", True), ("127.1.2.3:1", True), ("[::1]:1", True), ("localhost:1", True),
    ("10.0.0.1:1", False), ("[fe80::1%eth0]:1", False), ("host.lan:1", False), ("", False),
    ("[::1", True), ("::1", True), (":::", False),
])
def test_is_loopback_never_raises(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
