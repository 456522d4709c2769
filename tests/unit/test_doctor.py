"""api/doctor.py: `?peer=` names only members; a refused request never reaches a probe."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.api.app import build_app
from covey.api.doctor import DoctorRoutes, find_peers
from covey.errors import NotFound
from covey.health import layers as L
from covey.mesh.records import NodeRecord, new_record


def _peer(name: str) -> NodeRecord:
    return new_record(Ed25519PrivateKey.generate(), mesh_id="m", seq=1, now=0, ttl_s=60,
                      name=name, addresses=[f"{name}:7070"], tls_fingerprint="ab" * 32)


ALPHA, BETA, TWIN = _peer("alpha"), _peer("beta"), _peer("beta")
PEERS = [ALPHA, BETA, TWIN]


@pytest.mark.parametrize(("wanted", "found"), [
    (ALPHA.node_id, [ALPHA]),
    (ALPHA.node_id[:4], [ALPHA]),
    (ALPHA.node_id[:12], [ALPHA]),
    ("alpha", [ALPHA]),
    ("beta", [BETA, TWIN]),  # a name two members share: both are members, both are checked
])
def test_members_are_found(wanted: str, found: list[NodeRecord]) -> None:
    assert find_peers(wanted, PEERS) == found


# Was a hole: an address (or anything with ":port") was probed directly, unpinned.
@pytest.mark.parametrize("wanted", [
    "127.0.0.1:7070", "alpha:7070", "evil.example:443", "[::1]:22", ALPHA.node_id[:3],
    "gamma", ALPHA.node_id + "x", "ALPHA",
])
def test_anything_else_is_404_listing_the_peers(wanted: str) -> None:
    with pytest.raises(NotFound) as info:
        find_peers(wanted, PEERS)
    assert info.value.param == "peer" and info.value.status == 404
    assert f"alpha ({ALPHA.node_id[:12]})" in info.value.message
    assert f"beta ({BETA.node_id[:12]})" in info.value.message


def test_an_ambiguous_prefix_is_refused() -> None:
    a, b = _peer("a"), _peer("b")
    common = 0
    while a.node_id[common] == b.node_id[common]:
        common += 1
    if common < 4:  # two random ids rarely share 4 characters: make them
        b = b.model_copy(update={"node_id": a.node_id[:4] + b.node_id[4:]})
    with pytest.raises(NotFound, match="several peers"):
        find_peers(a.node_id[:4], [a, b])


class FakeMesh:
    node_id = "self"

    def peers(self, now: float) -> list[NodeRecord]:
        return PEERS


class CountingHealth:
    """Stands in for HealthMonitor: counts probes instead of sending them."""

    def __init__(self) -> None:
        self.probed: list[str] = []

    async def check_now(self, record: NodeRecord, token: bool) -> list[L.LayerResult]:
        self.probed.append(record.node_id)
        return [L.passed(5, "fine")]


class Doctor(DoctorRoutes):
    def local_layers(self) -> list[L.LayerResult]:
        return [L.passed(1, "here")]


def _client(api_key: str | None, health: CountingHealth) -> TestClient[Any, Any]:
    app = build_app(bind_host="127.0.0.1", api_key=api_key, allowed_hosts=frozenset(),
                    max_body_bytes=1 << 20)
    doctor = Doctor(None, FakeMesh(), health, False, lambda: "http://here")  # type: ignore[arg-type]
    doctor.add_to(app)
    return TestClient(TestServer(app))


KEY = {"Authorization": "Bearer secret"}


# Was a hole: `Origin: null` passed the guard, so any page (a sandboxed frame) could make the
# doctor probe; and a browser's cross-site GET carries no Origin at all.
@pytest.mark.parametrize(("api_key", "headers", "status"), [
    ("secret", {}, 401),
    ("secret", {"Authorization": "Bearer wrong"}, 401),
    ("secret", {**KEY, "Origin": "http://evil.example"}, 403),
    ("secret", {**KEY, "Origin": "null"}, 403),
    ("secret", {**KEY, "Sec-Fetch-Site": "cross-site"}, 403),
    (None, {"Origin": "http://evil.example"}, 403),
    (None, {"Origin": "null"}, 403),
    (None, {"Origin": "NULL"}, 403),
    (None, {"Sec-Fetch-Site": "cross-site"}, 403),
    (None, {"Origin": ""}, 403),
])
async def test_a_refused_doctor_request_probes_nothing(api_key: str | None,
                                                      headers: dict[str, str],
                                                      status: int) -> None:
    health = CountingHealth()
    async with _client(api_key, health) as client:
        for query in ("", f"?peer={ALPHA.node_id}", "?peer=127.0.0.1:22"):
            r = await client.get("/api/doctor" + query, headers=headers)
            assert r.status == status, await r.text()
    assert health.probed == []


@pytest.mark.parametrize(("api_key", "headers"), [
    ("secret", KEY),
    ("secret", {**KEY, "Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}),
    (None, {}),
    (None, {"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:7272"}),
])
async def test_an_allowed_doctor_request_probes_members_only(api_key: str | None,
                                                            headers: dict[str, str]) -> None:
    health = CountingHealth()
    async with _client(api_key, health) as client:
        r = await client.get("/api/doctor", headers=headers)
        assert r.status == 200
        assert [p["id"] for p in (await r.json())["peers"]] == [p.node_id for p in PEERS]
        r = await client.get("/api/doctor?peer=alpha", headers=headers)
        assert r.status == 200
        r = await client.get("/api/doctor?peer=127.0.0.1:22", headers=headers)
        assert r.status == 404 and (await r.json())["error"]["param"] == "peer"
    assert health.probed == [*(p.node_id for p in PEERS), ALPHA.node_id]
