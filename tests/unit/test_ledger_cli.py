"""`covey ledger ...` end to end through `covey.cli.main`, on a data dir holding a real ledger
of signed receipts: balances, entries, verify (and tampering named), checkpoints signed and
kept, inclusion and consistency proofs checked offline, forged ones refused."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.cli import main
from covey.ledger import merkle
from covey.ledger.chain import Ledger
from covey.ledger.checkpoint import parse_checkpoint, sign_note, verifier_key
from covey.ledger.checkpoints import check_proof
from covey.ledger.receipts import (
    Observed,
    SignedReceipt,
    consumer_countersign,
    new_receipt,
    new_request_id,
    provider_sign,
)
from covey.ledger.service import LEDGER_FILE
from covey.mesh.identity import KEY_FILE, load_or_create, node_id_for
from covey.mesh.sealed import b64e, public_bytes

MESH = "mtestmesh0000000"
ORIGIN = f"covey.mesh/{MESH}/ledger"
T0 = 1_800_000_000.0
OTHER = Ed25519PrivateKey.generate()


def _signed(provider: Ed25519PrivateKey, consumer: Ed25519PrivateKey, completion: int,
            prompt: int = 0) -> SignedReceipt:
    receipt = new_receipt(
        mesh_id=MESH, request_id=new_request_id(), model_id="gemma-3-270m",
        model_sha256=None, consumer=node_id_for(public_bytes(consumer)),
        provider=node_id_for(public_bytes(provider)), prompt_tokens=prompt,
        completion_tokens=completion, parameters_b=1.0, started_at=T0, ended_at=T0 + 1)
    seen = Observed.from_usage(receipt.request_id, "gemma-3-270m", prompt, completion)
    return consumer_countersign(provider_sign(receipt, provider), consumer, seen,
                                b64e(public_bytes(provider)))


def _add(ledger: Ledger, provider: Ed25519PrivateKey, consumer: Ed25519PrivateKey, completion: int,
         prompt: int = 0) -> None:
    added = ledger.add_receipt(_signed(provider, consumer, completion, prompt),
                               provider_key=public_bytes(provider),
                               consumer_key=public_bytes(consumer), now=T0 + 10)
    assert added.status == "confirmed"



@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The mesh creator's data dir: A (this node) served B twice, B served A once, and B got
    a grant: 7 entries."""
    d = tmp_path / "node"
    me = load_or_create(d).key
    (d / "mesh.json").write_text(json.dumps({"mesh_id": MESH, "authority_public_key": "x"}))
    (d / "authority.key").write_text("held by the creator")
    with Ledger(d / LEDGER_FILE) as ledger:
        _add(ledger, me, OTHER, 1000)  # 1.0
        _add(ledger, me, OTHER, 2000, 400)  # 2.1
        _add(ledger, OTHER, me, 500)  # 0.5
        ledger.adjust(node_id_for(public_bytes(OTHER)), 5.0, "grant", now=T0 + 20,
                      note="welcome")
    return d


def _me(d: Path) -> str:
    return load_or_create(d).node_id


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["ledger", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def _checkpoint(capsys: pytest.CaptureFixture[str], d: Path) -> tuple[str, str]:
    code, out = _run(capsys, "checkpoint", "--data-dir", str(d))
    assert code == 0, out
    vkey = re.search(r"^verifier key: (\S+)$", out, re.MULTILINE)
    assert vkey is not None, out
    return out.split("\nverifier key:")[0], vkey.group(1)


def _proof(capsys: pytest.CaptureFixture[str], d: Path, *argv: str) -> Path:
    code, out = _run(capsys, "proof", *argv, "--data-dir", str(d))
    assert code == 0, out
    path = d.parent / "proof.json"
    path.write_text(out)
    return path


# -- balance, show, verify ---------------------------------------------------------------

def test_balance_table_and_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    me, other = _me(data_dir), node_id_for(public_bytes(OTHER))
    code, out = _run(capsys, "balance", "--data-dir", str(data_dir))
    assert code == 0
    assert out.startswith("1 credit = 1,000 completion tokens")
    mine = next(line for line in out.splitlines() if line.startswith(me))
    assert "(this node)" in mine
    assert mine.split()[-4:] == ["3.100000", "0.500000", "0.000000", "2.600000"]
    theirs = next(line for line in out.splitlines() if line.startswith(other))
    assert theirs.split()[-4:] == ["0.500000", "3.100000", "5.000000", "2.400000"]

    code, out = _run(capsys, "balance", other[:6], "--json", "--data-dir", str(data_dir))
    doc = json.loads(out)
    assert code == 0 and list(doc["balances"]) == [other] and doc["unconfirmed"] == 0
    assert doc["balances"][other] == pytest.approx(
        {"given": 0.5, "used": 3.1, "adjusted": 5.0, "balance": 2.4})
    assert _run(capsys, "balance", "zzzz", "--data-dir", str(data_dir))[0] == 1


def test_show_lists_entries_without_content(data_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "show", "--data-dir", str(data_dir))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["seq", "time", "(UTC)", "kind"]
    assert [line.split()[0] for line in lines[1:8]] == [str(i) for i in range(1, 8)]
    assert lines[1].split()[3:5] == ["earn", _me(data_dir)]
    assert lines[1].split()[-1] == "gemma-3-270m" and lines[7].split()[-1] == "grant"
    assert "welcome" not in out and "provider_sig" not in out  # never a body
    assert lines[-1] == "entries 1..7 of 7"

    code, out = _run(capsys, "show", "--since", "2", "--limit", "2", "--json",
                     "--data-dir", str(data_dir))
    doc = json.loads(out)
    assert [e["seq"] for e in doc["entries"]] == [3, 4] and doc["size"] == 7
    assert doc["entries"][0]["model_id"] == "gemma-3-270m"
    assert len(doc["entries"][0]["request_id"]) == 32 and "body" not in doc["entries"][0]
    # Without --since: the latest entries.
    out = _run(capsys, "show", "--limit", "3", "--data-dir", str(data_dir))[1]
    assert out.splitlines()[-1] == "entries 5..7 of 7"


def test_verify_intact_then_tampered(data_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(data_dir / LEDGER_FILE) as ledger:
        head = ledger.head()[1]
    code, out = _run(capsys, "verify", "--data-dir", str(data_dir))
    assert (code, out.strip()) == (0, f"ledger intact: 7 entries, head {head}")
    with sqlite3.connect(data_dir / LEDGER_FILE) as db:  # behind the ledger's back
        db.execute("UPDATE entries SET credits = 9.0 WHERE seq = 3")
    code, out = _run(capsys, "verify", "--data-dir", str(data_dir))
    assert code == 1 and "ledger BROKEN at entry 3: entry 3 altered" in out
    code, out = _run(capsys, "verify", "--json", "--data-dir", str(data_dir))
    assert code == 1 and json.loads(out)["first_bad_seq"] == 3
    # No checkpoint is signed over a broken chain.
    code, out = _run(capsys, "checkpoint", "--data-dir", str(data_dir))
    assert code == 1 and "does not verify" in out
    assert not (data_dir / "checkpoints").exists()


def test_reads_beside_a_running_node_and_never_write(data_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = data_dir / LEDGER_FILE
    with Ledger(path) as node_ledger:  # the node holds it open (WAL) and keeps writing
        _add(node_ledger, OTHER, load_or_create(data_dir).key, 1000)
        before = path.read_bytes()
        for argv in (("balance",), ("show",), ("verify",)):
            assert _run(capsys, *argv, "--data-dir", str(data_dir))[0] == 0
        assert path.read_bytes() == before
        out = _run(capsys, "verify", "--data-dir", str(data_dir))[1]
        assert "ledger intact: 9 entries" in out


def test_missing_ledger_or_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "balance", "--data-dir", str(tmp_path))
    assert code == 2 and "no ledger" in out and not (tmp_path / LEDGER_FILE).exists()
    Ledger(tmp_path / LEDGER_FILE).close()
    code, out = _run(capsys, "checkpoint", "--data-dir", str(tmp_path))
    assert code == 2 and "no node key" in out and not (tmp_path / KEY_FILE).exists()


# -- checkpoints and proofs --------------------------------------------------------------

def test_checkpoint_signed_kept_and_inclusion_proved(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = data_dir.parent / "cp.note"
    code, out = _run(capsys, "checkpoint", "--out", str(out_file), "--data-dir", str(data_dir))
    assert code == 0
    text, vkey = out.split("\nverifier key: ")[0], out.split("verifier key: ")[1].split()[0]
    identity = load_or_create(data_dir)
    assert vkey == verifier_key(ORIGIN, identity.public_bytes)
    checkpoint = parse_checkpoint(text)
    assert checkpoint is not None and (checkpoint.origin, checkpoint.size) == (ORIGIN, 7)
    kept = data_dir / "checkpoints"
    assert (kept / "7.note").read_text() == (kept / "latest.note").read_text() == text
    assert out_file.read_text() == text

    proof = _proof(capsys, data_dir, "3")
    doc = json.loads(proof.read_text())
    assert (doc["leaf_index"], doc["tree_size"], doc["checkpoint"]) == (2, 7, text)
    assert doc["verifier_key"] == vkey
    code, out = _run(capsys, "verify-proof", str(proof), "--key", vkey)
    assert code == 0 and "proof holds: entry 3 is in the tree of 7 entries" in out
    assert f"signed by the key of node {identity.node_id}" in out
    code, out = _run(capsys, "verify-proof", str(proof))
    assert code == 0 and "agrees with itself" in out

    # A checkpoint for an entry it does not hold: refused.
    assert _run(capsys, "proof", "8", "--data-dir", str(data_dir))[0] == 1


def test_forged_proofs_refused(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, vkey = _checkpoint(capsys, data_dir)
    doc = json.loads(_proof(capsys, data_dir, "5").read_text())
    good = json.dumps(doc).encode()
    assert check_proof(good, vkey).ok

    def refused(changed: dict[str, object], key: str | None = vkey) -> None:
        raw = json.dumps({**doc, **changed}).encode()
        result = check_proof(raw, key)
        assert not result.ok, changed
        path = data_dir.parent / "forged.json"
        path.write_bytes(raw)
        argv = ["verify-proof", str(path)] + (["--key", key] if key else [])
        code, out = _run(capsys, *argv)
        assert code == 1 and "proof FAILS" in out

    # Another key with the same name (a keeper impersonated), and a key for another log.
    refused({}, verifier_key(ORIGIN, public_bytes(OTHER)))
    refused({}, verifier_key("covey.mesh/other/ledger", load_or_create(data_dir).public_bytes))
    # The checkpoint altered (size, root), the signature kept.
    altered = doc["checkpoint"].replace("\n7\n", "\n6\n", 1)
    refused({"checkpoint": altered})
    parsed = parse_checkpoint(doc["checkpoint"])
    assert parsed is not None
    fake_root = merkle.leaf_hash(b"not the tree")
    forged = doc["checkpoint"].replace(
        parsed.body.split("\n")[2], base64.b64encode(fake_root).decode())
    refused({"checkpoint": forged})
    # Re-signed by another key but presented with the file's own key: still the wrong key.
    resigned = sign_note(parsed.body, ORIGIN, OTHER)
    refused({"checkpoint": resigned})
    # The proof or the leaf altered.
    refused({"leaf_index": 3})
    refused({"leaf_index": 5})
    refused({"proof": doc["proof"][::-1]})
    refused({"proof": doc["proof"][:-1]})
    other_leaf = json.loads(_proof(capsys, data_dir, "6").read_text())
    refused({"leaf_data": other_leaf["leaf_data"], "leaf_hash": other_leaf["leaf_hash"]})
    refused({"tree_size": 8})
    # Hostile files: refused without an exception.
    for raw in (b"", b"\xff\xfe", b"[]", b'{"type": "inclusion"}', b"{" * 10_000,
                b" " * (2 * 1024 * 1024)):
        assert not check_proof(raw, vkey).ok


def test_consistency_between_checkpoints(data_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    first, vkey = _checkpoint(capsys, data_dir)
    with Ledger(data_dir / LEDGER_FILE) as ledger:
        _add(ledger, OTHER, load_or_create(data_dir).key, 3000)
    second, vkey2 = _checkpoint(capsys, data_dir)
    assert vkey2 == vkey and parse_checkpoint(second).size == 9  # type: ignore[union-attr]
    assert (data_dir / "checkpoints" / "latest.note").read_text() == second

    proof = _proof(capsys, data_dir, "--consistency", "7")
    doc = json.loads(proof.read_text())
    assert (doc["old_size"], doc["tree_size"]) == (7, 9)
    assert (doc["old_checkpoint"], doc["checkpoint"]) == (first, second)
    code, out = _run(capsys, "verify-proof", str(proof), "--key", vkey)
    assert code == 0 and "the tree of 9 entries extends the tree of 7" in out
    # An inclusion proof against the newer checkpoint reaches the new entries.
    code, out = _run(capsys, "verify-proof", str(_proof(capsys, data_dir, "9")), "--key", vkey)
    assert code == 0, out

    assert not check_proof(json.dumps({**doc, "proof": doc["proof"][1:]}).encode(), vkey).ok
    assert not check_proof(json.dumps({**doc, "old_size": 6}).encode(), vkey).ok
    code, out = _run(capsys, "proof", "--consistency", "5", "--data-dir", str(data_dir))
    assert code == 1 and "no checkpoint of size 5" in out


def test_rewritten_history_is_neither_signed_nor_proved(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _checkpoint(capsys, data_dir)
    # Rewrite the whole history consistently (every hash recomputed, the head too): verify
    # cannot see it, the kept checkpoint can.
    path = data_dir / LEDGER_FILE
    with Ledger(path) as ledger:
        entries = ledger.entries()
    fresh = data_dir.parent / "fresh.sqlite3"
    with Ledger(fresh) as ledger:
        me = load_or_create(data_dir).key
        _add(ledger, me, OTHER, 9000)
        _add(ledger, me, OTHER, 9000)
        _add(ledger, OTHER, me, 500)
        ledger.adjust(entries[-1].node_id, 50.0, "grant", now=T0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh.rename(path)
    assert _run(capsys, "verify", "--data-dir", str(data_dir))[0] == 0
    code, out = _run(capsys, "checkpoint", "--data-dir", str(data_dir))
    assert code == 1 and "history was rewritten" in out
    code, out = _run(capsys, "proof", "2", "--data-dir", str(data_dir))
    assert code == 1 and "history was rewritten" in out


def test_origin_of_a_member_and_of_a_lone_node(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from covey.ledger.checkpoints import default_origin

    d = tmp_path / "lone"
    node = load_or_create(d).node_id
    assert default_origin(d, node) == f"covey.local/{node}/ledger"
    (d / "mesh.json").write_text(json.dumps({"mesh_id": MESH}))
    assert default_origin(d, node) == f"covey.mesh/{MESH}/node/{node}/ledger"
    Ledger(d / LEDGER_FILE).close()
    code, out = _run(capsys, "checkpoint", "--origin", "example.org/log", "--data-dir", str(d))
    assert code == 0 and out.startswith("example.org/log\n0\n")
