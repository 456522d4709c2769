"""A member auditing the keeper against its own receipts (issue 15): real ledgers on both
sides, the keeper's inclusion answer, and what the member makes of it."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest

from covey.ledger import merkle
from covey.ledger.audit import MAX_IDS, check, inclusion_answer, receipts_of
from covey.ledger.chain import Ledger
from covey.ledger.checkpoints import leaf_hashes
from tests.unit.test_ledger_chain import _add, _signed


def _pair(tmp_path: Path, n: int = 6) -> tuple[Ledger, Ledger]:
    """The keeper's ledger and a member's (node 0 provides to node 1): the same receipts."""
    keeper, member = Ledger(tmp_path / "keeper.db"), Ledger(tmp_path / "member.db")
    for _ in range(n):
        signed = _signed(0, 1)
        _add(keeper, signed, 0, 1)
        _add(member, signed, 0, 1)
    return keeper, member


def _tree(ledger: Ledger) -> tuple[int, bytes]:
    leaves = leaf_hashes(ledger.entries())
    return len(leaves), merkle.root(leaves)


def test_an_honest_keeper_proves_every_receipt(tmp_path: Path) -> None:
    keeper, member = _pair(tmp_path)
    mine = receipts_of(member.entries())
    size, root = _tree(keeper)
    entries = keeper.entries()
    answer = inclusion_answer(entries, leaf_hashes(entries), size, list(mine))
    assert set(check(mine, json.loads(json.dumps(answer)), size, root).values()) == {
        "included"}
    # A receipt the keeper never got is missing; an answer for another tree proves nothing.
    extra = _signed(0, 1)
    _add(member, extra, 0, 1)
    mine = receipts_of(member.entries())
    found = check(mine, inclusion_answer(entries, leaf_hashes(entries), size, list(mine)),
                  size, root)
    assert found[extra.receipt.request_id] == "missing"
    assert set(check(mine, answer, size, b"\0" * 32).values()) <= {"unproven", "missing"}


def test_an_altered_receipt_is_caught(tmp_path: Path) -> None:
    """The keeper edits a receipt's credits in its SQLite file and signs the new tree: the
    entry is proven in the tree the member witnessed, and it is not what both signed."""
    keeper, member = _pair(tmp_path)
    keeper.close()
    db = sqlite3.connect(tmp_path / "keeper.db")
    body = json.loads(db.execute("SELECT body FROM entries WHERE seq = 3").fetchone()[0])
    body["receipt"]["receipt"]["credits"] *= 10
    db.execute("UPDATE entries SET body = ? WHERE seq = 3", (json.dumps(body),))
    db.commit()
    db.close()
    keeper = Ledger(tmp_path / "keeper.db")
    mine = receipts_of(member.entries())
    entries = keeper.entries()
    size, root = _tree(keeper)  # the keeper's new tree, as if it had been witnessed
    found = check(mine, inclusion_answer(entries, leaf_hashes(entries), size, list(mine)),
                  size, root)
    assert sorted(found.values()).count("altered") == 1
    assert found[entries[2].request_id or ""] == "altered"


def test_hostile_answers_prove_nothing(tmp_path: Path) -> None:
    keeper, member = _pair(tmp_path, 2)
    mine = receipts_of(member.entries())
    size, root = _tree(keeper)
    rid = next(iter(mine))
    for answer in (None, {"entries": 5}, {"entries": {rid: "x"}},
                   {"entries": {rid: [{"index": "0", "leaf_data": "", "proof": []}]}},
                   {"entries": {rid: [{"index": 0, "leaf_data": "!!", "proof": []}]}},
                   {"entries": {rid: [{"index": 0, "leaf_data": base64.b64encode(b"x").decode(),
                                       "proof": ["AA=="] * 65}]}}):
        assert check({rid: mine[rid]}, answer, size, root)[rid] == "unproven"


def test_the_keeper_refuses_bad_requests(tmp_path: Path) -> None:
    keeper, _ = _pair(tmp_path, 2)
    entries = keeper.entries()
    leaves = leaf_hashes(entries)
    for size, ids in ((0, ["a" * 32]), (99, ["a" * 32]), (2, []), (2, ["short"]),
                      (2, ["a" * 32] * (MAX_IDS + 1)), (True, ["a" * 32])):
        with pytest.raises(ValueError):
            inclusion_answer(entries, leaves, size, ids)
