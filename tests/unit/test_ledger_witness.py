"""Members witnessing the keeper's checkpoints (issue 15): the pure judgments, the keeper's
answers, and the witness loop against a keeper in memory (tests/memory_transport.py) that
keeps one history, rewrites it, or shows two."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.ledger import merkle
from covey.ledger.checkpoint import checkpoint_body, parse_checkpoint, sign_note
from covey.ledger.witness import (
    Witness,
    accept_cosignature,
    compare,
    consistency_answer,
    judge,
    mesh_origin,
    parse_proof,
    witness_name,
)
from covey.mesh.records import NodeRecord
from covey.mesh.sealed import b64e
from tests.memory_transport import MemoryTransport

MESH = "m" * 26
ORIGIN = mesh_origin(MESH)


def _leaves(n: int, seed: bytes = b"") -> list[bytes]:
    return [merkle.leaf_hash(seed + i.to_bytes(4, "big")) for i in range(n)]


def _note(key: Ed25519PrivateKey, leaves: list[bytes]) -> str:
    return sign_note(checkpoint_body(ORIGIN, len(leaves), merkle.root(leaves)), ORIGIN, key)


def _cp(text: str):  # type: ignore[no-untyped-def]
    parsed = parse_checkpoint(text)
    assert parsed is not None
    return parsed


KEY = Ed25519PrivateKey.generate()
HISTORY = _leaves(9)
REWRITTEN = [HISTORY[0], merkle.leaf_hash(b"forged"), *HISTORY[2:]]


def test_judge_each_case() -> None:
    c3, c7 = _cp(_note(KEY, HISTORY[:3])), _cp(_note(KEY, HISTORY[:7]))
    assert judge(None, c3, None) == "first"
    assert judge(c3, c3, None) == "same"
    assert judge(c7, c3, None) == "older"
    assert judge(c3, c7, None) == "need_proof"
    assert judge(c3, c7, merkle.consistency_proof(HISTORY[:7], 3)) == "consistent"
    forged7 = _cp(_note(KEY, REWRITTEN[:7]))
    assert judge(c3, forged7, merkle.consistency_proof(REWRITTEN[:7], 3)) == "inconsistent"
    assert judge(c3, _cp(_note(KEY, REWRITTEN[:3])), None) == "fork"


def test_compare_views() -> None:
    c3, c7 = _cp(_note(KEY, HISTORY[:3])), _cp(_note(KEY, HISTORY[:7]))
    other7 = _cp(_note(KEY, REWRITTEN[:7]))
    assert compare(c7, c7, None) == "agree"
    assert compare(c7, other7, None) == "fork"
    assert compare(c3, c7, None) == "need_proof"
    assert compare(c7, c3, merkle.consistency_proof(HISTORY[:7], 3)) == "agree"
    assert compare(c3, other7, merkle.consistency_proof(REWRITTEN[:7], 3)) == "fork"


def test_keeper_answers() -> None:
    answer = consistency_answer(HISTORY, {"old_size": 3, "new_size": 7})
    assert parse_proof(answer) == merkle.consistency_proof(HISTORY[:7], 3)
    for bad in ({"old_size": 0, "new_size": 3}, {"old_size": 5, "new_size": 3},
                {"old_size": 3, "new_size": 99}, {"old_size": True, "new_size": 3}, {}):
        with pytest.raises(ValueError):
            consistency_answer(HISTORY, bad)
    assert parse_proof({"proof": ["!!"]}) is None
    assert parse_proof({"proof": [b64e(b"x" * 31)]}) is None
    assert parse_proof({"proof": ["AA=="] * 65}) is None


def test_the_keeper_keeps_only_valid_cosignatures() -> None:
    from covey.ledger.checkpoint import cosign, verify_cosignature

    note = _note(KEY, HISTORY[:5])
    member = Ed25519PrivateKey.generate()
    public = member.public_key().public_bytes_raw()
    line = cosign(_cp(note).body, witness_name(MESH, "node-b"), member, 1_700_000_000)
    signed = accept_cosignature(note, line, MESH, "node-b", public)
    assert signed is not None and verify_cosignature(
        signed, witness_name(MESH, "node-b"), public) == 1_700_000_000
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert accept_cosignature(note, line, MESH, "node-b", other) is None  # not its key
    assert accept_cosignature(note, line, MESH, "node-c", public) is None  # not its name
    elsewhere = _note(KEY, HISTORY[:6])
    assert accept_cosignature(elsewhere, line, MESH, "node-b", public) is None
    assert accept_cosignature(note, line + line, MESH, "node-b", public) is None
    assert accept_cosignature(note, 5, MESH, "node-b", public) is None


# --- the witness loop ------------------------------------------------------------------------

KEEPER_FP, OTHER_FP = "a" * 64, "c" * 64


def _record(node_id: str, fp: str, key: Ed25519PrivateKey, **fields: str) -> NodeRecord:
    now = time.time()
    return NodeRecord(protocol=1, mesh_id=MESH, node_id=node_id,
                      public_key=b64e(key.public_key().public_bytes_raw()), seq=1,
                      issued_at=now, expires_at=now + 30, tls_fingerprint=fp,
                      addresses=["10.0.0.1:7070"], **fields)


@dataclass
class Identity:
    node_id: str
    key: Ed25519PrivateKey


class Keeper:
    """The keeper as its peers see it: a record, and answers from `history`."""

    def __init__(self, history: list[bytes], size: int) -> None:
        self.history = history
        self.size = size
        self.cosignatures: list[str] = []

    def record(self) -> NodeRecord:
        return _record("keeper", KEEPER_FP, KEY,
                       ledger_checkpoint=_note(KEY, self.history[:self.size]))

    async def handle(self, path: str, headers: Mapping[str, str], body: bytes
                     ) -> tuple[int, list[bytes]]:
        data = json.loads(body)
        if path.endswith("/consistency"):
            try:
                return 200, [json.dumps(consistency_answer(self.history, data)).encode()]
            except ValueError:
                return 409, [b'{"error": {"message": "no", "code": "bad_sizes"}}']
        self.cosignatures.append(data["cosignature"])
        return 200, [b'{"status": "cosigned"}']


def _witness(tmp_path: Path, keeper: Keeper, peers: list[NodeRecord]) -> Witness:
    transport = MemoryTransport(lambda *_: {}, {KEEPER_FP: keeper.handle})
    return Witness(MESH, Identity("node-b", Ed25519PrivateKey.generate()), transport,
                   keeper.record, lambda: [keeper.record(), *peers], tmp_path)


async def test_an_honest_keeper_is_witnessed_and_cosigned(tmp_path: Path) -> None:
    keeper = Keeper(HISTORY, 3)
    witness = _witness(tmp_path, keeper, [])
    await witness.step()
    keeper.size = 7
    await witness.step()
    await witness.step()  # nothing new: nothing done
    assert witness.problem is None and witness.cosigned == 2 and len(keeper.cosignatures) == 2
    assert _cp(witness.published()).size == 7
    # Kept across a restart.
    again = _witness(tmp_path, keeper, [])
    again.load(keeper.record())
    assert again.last is not None and again.last.checkpoint.size == 7


async def test_a_rewritten_history_is_caught(tmp_path: Path) -> None:
    keeper = Keeper(HISTORY, 3)
    witness = _witness(tmp_path, keeper, [])
    await witness.step()
    keeper.history, keeper.size = REWRITTEN, 7
    await witness.step()
    assert witness.problem is not None and "rewrote" in witness.problem
    assert _cp(witness.published()).size == 3  # the bad one is not taken, nor co-signed
    assert len(keeper.cosignatures) == 1


async def test_a_split_view_is_caught_when_views_meet(tmp_path: Path) -> None:
    """The keeper shows this member one history and another member a second one of the
    same size, then of a larger size: both show up as a split view."""
    keeper = Keeper(HISTORY, 5)
    other = Ed25519PrivateKey.generate()
    peers = [_record("node-c", OTHER_FP, other,
                     ledger_witnessed=_note(KEY, REWRITTEN[:5]))]
    witness = _witness(tmp_path, keeper, peers)
    await witness.step()
    assert witness.problem is not None and "split view" in witness.problem

    keeper2 = Keeper(HISTORY, 5)
    peers2 = [_record("node-c", OTHER_FP, other, ledger_witnessed=_note(KEY, REWRITTEN[:8]))]
    witness2 = _witness(tmp_path / "w2", keeper2, peers2)
    await witness2.step()  # the keeper's proof from 5 to 8 over its history fails theirs
    assert witness2.problem is not None and "split view" in witness2.problem

    honest = [_record("node-c", OTHER_FP, other, ledger_witnessed=_note(KEY, HISTORY[:8]))]
    witness3 = _witness(tmp_path / "w3", Keeper(HISTORY, 5), honest)
    await witness3.step()
    assert witness3.problem is None


async def test_a_checkpoint_the_keeper_did_not_sign_is_refused(tmp_path: Path) -> None:
    keeper = Keeper(HISTORY, 3)
    mallory = Ed25519PrivateKey.generate()

    def forged() -> NodeRecord:
        return _record("keeper", KEEPER_FP, KEY, ledger_checkpoint=_note(mallory, HISTORY[:3]))

    keeper.record = forged  # type: ignore[method-assign]
    witness = _witness(tmp_path, keeper, [])
    await witness.step()
    assert witness.last is None and witness.problem is not None
    assert not _kept(tmp_path)


def _kept(data_dir: Path) -> bool:
    return os.path.exists(data_dir / "checkpoints" / "witnessed.note")


async def test_a_cosignature_the_keeper_refused_is_sent_again(tmp_path: Path) -> None:
    """A member that just joined: the keeper does not know its record yet, and refuses."""
    keeper = Keeper(HISTORY, 4)
    handle, refusals = keeper.handle, [1]

    async def refusing(path: str, headers: Mapping[str, str], body: bytes
                       ) -> tuple[int, list[bytes]]:
        if path.endswith("/cosign") and refusals:
            refusals.pop()
            return 400, [b'{"error": {"message": "from a live member", "code": "malformed"}}']
        return await handle(path, headers, body)

    keeper.handle = refusing  # type: ignore[method-assign]
    witness = _witness(tmp_path, keeper, [])
    await witness.step()
    assert witness.cosigned == 0 and witness.unsent and _cp(witness.published()).size == 4
    await witness.step()
    assert witness.cosigned == 1 and not witness.unsent and len(keeper.cosignatures) == 1


def test_the_empty_tree_is_extended_by_any() -> None:
    empty = _cp(sign_note(checkpoint_body(ORIGIN, 0, merkle.root([])), ORIGIN, KEY))
    assert judge(empty, _cp(_note(KEY, HISTORY[:4])), None) == "first"
    assert compare(empty, _cp(_note(KEY, HISTORY[:4])), None) == "agree"


async def test_checkpoints_go_to_an_http_sink(tmp_path: Path) -> None:
    """--checkpoint-sink-url: each signed checkpoint is POSTed as its note text; a sink that
    fails or is down is reported (False), never raised."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from covey.ledger.service import send_checkpoint

    got: list[tuple[str, str]] = []

    async def take(request: web.Request) -> web.Response:
        got.append((request.content_type, await request.text()))
        return web.Response(status=201 if request.path == "/ok" else 500)

    app = web.Application()
    app.router.add_post("/{name}", take)
    note = _note(KEY, HISTORY[:4])
    async with TestServer(app) as server:
        url = str(server.make_url("/ok"))
        assert await send_checkpoint(url, note)
        assert not await send_checkpoint(str(server.make_url("/broken")), note)
    assert got[0] == ("text/plain", note)
    assert not await send_checkpoint(url, note, timeout_s=2)  # the server is gone


async def test_a_new_keeper_starts_afresh_and_the_old_view_is_kept_for_the_old_one(
        tmp_path: Path) -> None:
    """The mesh policy moved the keeper: the new one's smaller, other history is its first
    checkpoint, not a rewrite; cosignatures go to the new keeper. Back to the first keeper
    (a restart of the witness), its kept view is set aside only if another keeper signed it."""
    first = Keeper(HISTORY, 7)
    second_key = Ed25519PrivateKey.generate()
    second_history = _leaves(4, b"second")
    second_cosignatures: list[str] = []

    def second_record() -> NodeRecord:
        return _record("keeper-2", OTHER_FP, second_key,
                       ledger_checkpoint=_note(second_key, second_history))

    async def second_handle(path: str, headers: Mapping[str, str], body: bytes
                            ) -> tuple[int, list[bytes]]:
        second_cosignatures.append(json.loads(body)["cosignature"])
        return 200, [b'{"status": "cosigned"}']

    current = [first.record]
    transport = MemoryTransport(lambda *_: {}, {KEEPER_FP: first.handle,
                                               OTHER_FP: second_handle})
    witness = Witness(MESH, Identity("node-b", Ed25519PrivateKey.generate()), transport,
                      lambda: current[0](), lambda: [], tmp_path)
    await witness.step()
    assert _cp(witness.published()).size == 7 and len(first.cosignatures) == 1
    current[0] = second_record
    await witness.step()
    assert witness.problem is None, witness.problem
    assert _cp(witness.published()).size == 4 and len(second_cosignatures) == 1
    assert witness.keeper_id == "keeper-2"
    # A restart: the kept view is the second keeper's, and it verifies against its key only.
    again = Witness(MESH, Identity("node-b", Ed25519PrivateKey.generate()), transport,
                    lambda: current[0](), lambda: [], tmp_path)
    again.load(second_record())
    assert again.last is not None and again.last.checkpoint.size == 4
    again.load(first.record())
    assert again.last is None
