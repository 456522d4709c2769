"""mDNS advertisements: only our mesh's, never ourselves, nothing malformed."""

from __future__ import annotations

import pytest

from covey.mesh.discovery import lan_addresses, mesh_hash, peer_from
from covey.mesh.remembered import Bootstrap

H = mesh_hash("mesh-1")
FP = "ab" * 32
MINE = "cd" * 32


def test_the_hash_names_the_mesh_without_revealing_it() -> None:
    assert H == mesh_hash("mesh-1") != mesh_hash("mesh-2")
    assert "mesh-1" not in H and len(H) == 16


@pytest.mark.parametrize(("props", "addresses", "port", "expected"), [
    ({b"m": H.encode(), b"fp": FP.encode()}, ["10.0.0.5"], 7070,
     Bootstrap("10.0.0.5:7070", FP)),
    ({b"m": mesh_hash("other").encode(), b"fp": FP.encode()}, ["10.0.0.5"], 7070, None),
    ({b"m": H.encode(), b"fp": MINE.encode()}, ["10.0.0.5"], 7070, None),  # ourselves
    ({b"m": H.encode(), b"fp": b"zz" * 32}, ["10.0.0.5"], 7070, None),  # not hex
    ({b"m": H.encode(), b"fp": b"ab"}, ["10.0.0.5"], 7070, None),  # short
    ({b"m": H.encode(), b"fp": None}, ["10.0.0.5"], 7070, None),
    ({b"m": H.encode(), b"fp": FP.encode()}, [], 7070, None),
    ({b"m": H.encode(), b"fp": FP.encode()}, ["10.0.0.5"], 0, None),
    ({}, ["10.0.0.5"], 7070, None),
])
def test_peer_from(props: dict[bytes, bytes | None], addresses: list[str], port: int,
                   expected: Bootstrap | None) -> None:
    assert peer_from(props, addresses, port, H, MINE) == expected


def test_loopback_listeners_are_not_advertised() -> None:
    assert lan_addresses("127.0.0.1") == []
    assert lan_addresses("10.1.2.3") == ["10.1.2.3"]
    assert "127.0.0.1" not in lan_addresses("0.0.0.0")
