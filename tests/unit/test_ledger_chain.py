"""The hash-chained ledger: idempotent receipts, balances, restarts, and tampering done in the
SQLite file behind the ledger's back, each named at exactly the right entry.

Property-style loops over seeded random histories (hypothesis is not a dependency)."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.ledger.chain import (
    GENESIS,
    Balance,
    Entry,
    Ledger,
    check_chain,
    entry_hash,
    leaf_data,
)
from covey.ledger.receipts import (
    Observed,
    ReceiptRejected,
    SignedReceipt,
    consumer_countersign,
    new_receipt,
    new_request_id,
    provider_sign,
)
from covey.mesh.identity import node_id_for
from covey.mesh.sealed import b64e, public_bytes

MESH = "mtestmesh0000000"
T0 = 1_800_000_000.0
KEYS = [Ed25519PrivateKey.generate() for _ in range(3)]
A, B, C = (node_id_for(public_bytes(k)) for k in KEYS)


def _pub(i: int) -> str:
    return b64e(public_bytes(KEYS[i]))


def _signed(provider: int, consumer: int, completion: int = 1000, prompt: int = 0, *,
            countersign: bool = True, request_id: str | None = None) -> SignedReceipt:
    receipt = new_receipt(
        mesh_id=MESH, request_id=request_id or new_request_id(), model_id="m",
        model_sha256=None, consumer=node_id_for(public_bytes(KEYS[consumer])),
        provider=node_id_for(public_bytes(KEYS[provider])), prompt_tokens=prompt,
        completion_tokens=completion, parameters_b=1.0, started_at=T0, ended_at=T0 + 1)
    signed = provider_sign(receipt, KEYS[provider])
    if not countersign:
        return signed
    seen = Observed.from_usage(receipt.request_id, "m", prompt, completion)
    return consumer_countersign(signed, KEYS[consumer], seen, _pub(provider))


def _add(ledger: Ledger, signed: SignedReceipt, provider: int, consumer: int,
         now: float = T0) -> str:
    return ledger.add_receipt(signed, provider_key=_pub(provider), consumer_key=_pub(consumer),
                              now=now).status


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path) -> Iterator[Ledger]:
    with Ledger(path) as led:
        yield led


def _fill(ledger: Ledger, n: int = 8) -> None:
    """n entries: earn/spend pairs, and a grant for an odd count."""
    for i in range(n // 2):
        assert _add(ledger, _signed(i % 3, (i + 1) % 3, 1000 * (i + 1)), i % 3,
                    (i + 1) % 3, T0 + i) == "confirmed"
    if n % 2:
        ledger.adjust(C, 5.0, "grant", now=T0 + n, note="welcome")
    assert ledger.head()[0] == n


# -- receipts into balances --------------------------------------------------------------

def test_confirmed_receipt_earns_and_spends(ledger: Ledger) -> None:
    added = ledger.add_receipt(_signed(0, 1, 2000), provider_key=_pub(0),
                               consumer_key=_pub(1), now=T0)
    assert added.status == "confirmed"
    earn, spend = added.entries
    assert (earn.seq, earn.kind, earn.node_id, earn.credits) == (1, "earn", A, 2.0)
    assert (spend.seq, spend.kind, spend.node_id, spend.credits) == (2, "spend", B, 2.0)
    assert earn.prev_hash == GENESIS and spend.prev_hash == earn.hash
    assert ledger.balance(A) == Balance(given=2.0) and ledger.balance(A).balance == 2.0
    assert ledger.balance(B) == Balance(used=2.0) and ledger.balance(B).balance == -2.0
    assert ledger.balance(C) == Balance()
    assert ledger.head() == (2, spend.hash)
    assert ledger.verify().ok


def test_replayed_receipt_is_idempotent(ledger: Ledger) -> None:
    signed = _signed(0, 1)
    first = ledger.add_receipt(signed, provider_key=_pub(0), consumer_key=_pub(1), now=T0)
    for now in (T0 + 1, T0 + 2):  # retries and duplicate gossip
        again = ledger.add_receipt(SignedReceipt.from_wire(signed.to_wire()),
                                   provider_key=_pub(0), consumer_key=_pub(1), now=now)
        assert again.status == "duplicate" and again.entries == first.entries
    # The provider-only version arriving late changes nothing either.
    alone = signed.model_copy(update={"consumer_sig": None})
    assert ledger.add_receipt(alone, provider_key=_pub(0), now=T0 + 3).status == "duplicate"
    assert ledger.unconfirmed() == []
    assert len(ledger.entries()) == 2 and ledger.balance(A).given == 1.0


def test_replay_with_other_content_is_a_conflict(ledger: Ledger) -> None:
    rid = new_request_id()
    _add(ledger, _signed(0, 1, 1000, request_id=rid), 0, 1)
    for provider, consumer, tokens in ((0, 1, 5000), (2, 1, 1000), (0, 2, 1000)):
        with pytest.raises(ReceiptRejected) as exc:
            _add(ledger, _signed(provider, consumer, tokens, request_id=rid), provider,
                 consumer)
        assert exc.value.reason == "conflict"
    assert len(ledger.entries()) == 2 and ledger.balance(A).given == 1.0


def test_forged_receipts_never_enter(ledger: Ledger) -> None:
    signed = _signed(0, 1)
    w = json.loads(signed.to_wire())
    w["receipt"]["completion_tokens"] = 9000
    w["receipt"]["credits"] = 9.0
    for bad, pk, ck in ((SignedReceipt.model_validate(w), 0, 1), (signed, 2, 1),
                        (signed, 0, 2)):
        with pytest.raises(ReceiptRejected):
            _add(ledger, bad, pk, ck)
    assert ledger.entries() == [] and ledger.balances() == {} and ledger.unconfirmed() == []


def test_unconfirmed_never_counts_then_confirms_once(ledger: Ledger) -> None:
    signed = _signed(0, 1, countersign=False)
    for _ in range(2):
        added = ledger.add_receipt(signed, provider_key=_pub(0), now=T0)
        assert added.status == "unconfirmed" and added.entries == ()
    # A countersigned receipt checked without the consumer's key is not confirmed either.
    both = _signed(0, 1, request_id=signed.receipt.request_id)
    assert both.receipt == signed.receipt
    assert ledger.add_receipt(both, provider_key=_pub(0), now=T0).status == "unconfirmed"
    assert ledger.entries() == [] and ledger.balances() == {}
    assert [u.receipt for u in ledger.unconfirmed()] == [signed.receipt]
    assert _add(ledger, both, 0, 1) == "confirmed"
    assert _add(ledger, both, 0, 1) == "duplicate"
    assert ledger.unconfirmed() == []
    assert ledger.balance(A).given == 1.0 and ledger.balance(B).used == 1.0
    # A different provider-only claim under the same id is refused, never held.
    with pytest.raises(ReceiptRejected) as exc:
        ledger.add_receipt(_signed(0, 1, 7, countersign=False, request_id=both.receipt.request_id),
                           provider_key=_pub(0), now=T0)
    assert exc.value.reason == "conflict"


def test_two_provider_only_claims_conflict(ledger: Ledger) -> None:
    first = _signed(0, 1, 100, countersign=False)
    ledger.add_receipt(first, provider_key=_pub(0), now=T0)
    with pytest.raises(ReceiptRejected) as exc:
        ledger.add_receipt(_signed(0, 1, 900, countersign=False,
                                   request_id=first.receipt.request_id),
                           provider_key=_pub(0), now=T0)
    assert exc.value.reason == "conflict"
    assert [u.receipt for u in ledger.unconfirmed()] == [first.receipt]


def test_adjustments(ledger: Ledger) -> None:
    _add(ledger, _signed(0, 1, 3000), 0, 1)
    grant = ledger.adjust(C, 10.0, "grant", now=T0, note="by the authority")
    assert grant.reason == "grant" and grant.request_id is None
    rid = new_request_id()
    refund = ledger.adjust(B, 3.0, "refund", now=T0, request_id=rid)
    assert ledger.adjust(B, 3.0, "refund", now=T0 + 9, request_id=rid) == refund  # idempotent
    with pytest.raises(ReceiptRejected):
        ledger.adjust(B, 4.0, "refund", now=T0, request_id=rid)
    ledger.adjust(A, -1.5, "verification_penalty", now=T0)
    assert ledger.balance(A) == Balance(given=3.0, adjusted=-1.5)
    assert ledger.balance(B).balance == 0.0
    assert ledger.balance(C).balance == 10.0
    for bad in (dict(credits=float("nan")), dict(credits=float("inf")), dict(credits=1e30),
                dict(reason="gift"), dict(node_id=""), dict(note="n" * 2000)):
        args: dict[str, object] = dict(node_id=A, credits=1.0, reason="grant", now=T0)
        args.update(bad)
        with pytest.raises(ValueError):
            ledger.adjust(**args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ledger.adjust(A, 1.0, "grant", now=float("nan"))
    assert len(ledger.entries()) == 5 and ledger.verify().ok


def test_entries_since(ledger: Ledger) -> None:
    _fill(ledger, 9)
    assert [e.seq for e in ledger.entries()] == list(range(1, 10))
    assert [e.seq for e in ledger.entries(since_seq=6)] == [7, 8, 9]
    assert [e.seq for e in ledger.entries(since_seq=2, limit=3)] == [3, 4, 5]
    assert ledger.entries(since_seq=9) == []


def test_reopen_keeps_everything(path: Path) -> None:
    with Ledger(path) as led:
        _fill(led, 7)
        held = _signed(1, 2, countersign=False)
        led.add_receipt(held, provider_key=_pub(1), now=T0)
        entries, balances, head = led.entries(), led.balances(), led.head()
    with Ledger(path) as led:
        assert led.entries() == entries and led.balances() == balances and led.head() == head
        assert [u.receipt for u in led.unconfirmed()] == [held.receipt]
        assert led.verify().ok
        _add(led, _signed(0, 2), 0, 2)  # appends continue the same chain
        assert led.entries()[7].prev_hash == head[1]
        assert led.verify().ok


def test_wal_mode(ledger: Ledger, path: Path) -> None:
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_failed_append_leaves_nothing(ledger: Ledger, path: Path) -> None:
    _fill(ledger, 4)
    before = (ledger.entries(), ledger.balances(), ledger.head())
    # A row squatting on the seq the second entry of the pair needs: its insert fails, so
    # the first (earn, its balance, the head) must roll back with it.
    db = sqlite3.connect(path)
    db.execute("INSERT INTO entries VALUES (6, 'adjust', NULL, 'x', 1.0, '{}', 0.0, '', '')")
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):
        _add(ledger, _signed(0, 1), 0, 1)
    db.execute("DELETE FROM entries WHERE seq=6")
    db.commit()
    db.close()
    assert (ledger.entries(), ledger.balances(), ledger.head()) == before
    assert ledger.verify().ok


def test_rebuild_balances_and_cache_check(ledger: Ledger, path: Path) -> None:
    _fill(ledger, 9)
    good = ledger.balances()
    db = sqlite3.connect(path)
    db.execute("UPDATE balances SET given = given + 100, balance = balance + 100 "
               "WHERE node_id=?", (A,))
    db.commit()
    db.close()
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq is None and A in result.reason
    ledger.rebuild_balances()
    assert ledger.balances() == good and ledger.verify().ok


def test_leaf_data_is_the_hashed_bytes(ledger: Ledger) -> None:
    _fill(ledger, 3)
    for entry in ledger.entries():
        data = leaf_data(entry)
        assert data.startswith(b"covey-ledger-entry-v1\x00")
        assert entry_hash(entry) == entry.hash
        assert leaf_data(replace(entry, hash="")) == data  # its own hash is not in it
        assert leaf_data(replace(entry, credits=entry.credits + 1)) != data


# -- tampering behind the ledger's back ----------------------------------------------------

def _tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    db = sqlite3.connect(path)
    for sql, params in statements:
        db.execute(sql, params)
    db.commit()
    db.close()


def _row(path: Path, seq: int) -> tuple[object, ...]:
    db = sqlite3.connect(path)
    row: tuple[object, ...] = db.execute("SELECT * FROM entries WHERE seq=?", (seq,)).fetchone()
    db.close()
    return row


def _shift_up(path: Path, start: int, n: int) -> None:
    """Renumber entries start..n to start+1..n+1, highest first (seq is the primary key)."""
    _tamper(path, *((("UPDATE entries SET seq=? WHERE seq=?", (s + 1, s)))
                    for s in range(n, start - 1, -1)))


@pytest.mark.parametrize(("column", "value"), [
    ("credits", 999.0), ("node_id", "thief00000000000"), ("kind", "gift"),
    ("created_at", 0.0), ("request_id", "00" * 16), ("body", "{}"), ("prev_hash", "f" * 64),
    ("hash", "0" * 64), ("credits", "a lot")])
@pytest.mark.parametrize("seq", [1, 4, 9])
def test_altered_entry_named(ledger: Ledger, path: Path, seq: int, column: str,
                             value: object) -> None:
    _fill(ledger, 9)
    _tamper(path, (f"UPDATE entries SET {column}=? WHERE seq=?", (value, seq)))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, seq), result.reason
    assert str(seq) in result.reason


def test_kind_changed_named(ledger: Ledger, path: Path) -> None:
    # A spend turned into an adjust: the consumer no longer pays (nor is its balance cached
    # differently yet), but the entry's hash names it.
    _fill(ledger, 9)
    _tamper(path, ("UPDATE entries SET kind='adjust' WHERE seq=4", ()))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 4), result.reason


@pytest.mark.parametrize("seq", [1, 2, 5, 8])
def test_deleted_entry_named(ledger: Ledger, path: Path, seq: int) -> None:
    _fill(ledger, 9)
    _tamper(path, ("DELETE FROM entries WHERE seq=?", (seq,)))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, seq)
    assert result.reason.startswith(f"entry {seq} missing")


def test_deleted_last_entry_named(ledger: Ledger, path: Path) -> None:
    _fill(ledger, 9)
    _tamper(path, ("DELETE FROM entries WHERE seq=9", ()))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 9)
    assert result.reason.startswith("entry 9 missing")


def test_deleted_and_renumbered_named(ledger: Ledger, path: Path) -> None:
    _fill(ledger, 9)
    _tamper(path, ("DELETE FROM entries WHERE seq=4", ()),
            *(("UPDATE entries SET seq=? WHERE seq=?", (s - 1, s)) for s in range(5, 10)),
            ("UPDATE head SET size=8", ()))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 4), result.reason


@pytest.mark.parametrize(("a", "b"), [(1, 2), (3, 7), (2, 9), (8, 9)])
def test_reordered_entries_named(ledger: Ledger, path: Path, a: int, b: int) -> None:
    _fill(ledger, 9)
    _tamper(path, ("UPDATE entries SET seq=-1 WHERE seq=?", (a,)),
            ("UPDATE entries SET seq=? WHERE seq=?", (a, b)),
            ("UPDATE entries SET seq=? WHERE seq=-1", (b,)))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, a), result.reason


def _forged_entry(path: Path, seq: int, prev_hash: str, node: str = A) -> Entry:
    """A well-formed entry an attacker who knows the format computes: a grant to itself."""
    body = json.dumps({"note": "", "reason": "grant"}, separators=(",", ":"), sort_keys=True)
    draft = Entry(seq, "adjust", None, node, 1e6, body, T0, prev_hash, "")
    return replace(draft, hash=entry_hash(draft))


def _insert(path: Path, e: Entry) -> None:
    _tamper(path, ("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (e.seq, e.kind, e.request_id, e.node_id, e.credits, e.body, e.created_at,
                    e.prev_hash, e.hash)))


@pytest.mark.parametrize("seq", [1, 4, 9])
def test_inserted_entry_named(ledger: Ledger, path: Path, seq: int) -> None:
    # Slipped in mid-chain with a correct link and hash; the later entries renumbered.
    _fill(ledger, 9)
    prev = GENESIS if seq == 1 else str(_row(path, seq - 1)[8])
    _shift_up(path, seq, 9)
    _insert(path, _forged_entry(path, seq, prev))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, seq), result.reason
    assert result.reason.startswith(f"entry {seq} inserted")


@pytest.mark.parametrize("seq", [1, 5])
def test_naive_inserted_entry_named(ledger: Ledger, path: Path, seq: int) -> None:
    _fill(ledger, 9)
    _shift_up(path, seq, 9)
    _insert(path, replace(_forged_entry(path, seq, "ab" * 32), hash="cd" * 32))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, seq), result.reason


def test_appended_entry_named(ledger: Ledger, path: Path) -> None:
    _fill(ledger, 9)
    _insert(path, _forged_entry(path, 10, ledger.head()[1]))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 10), result.reason
    assert "inserted" in result.reason


def test_inserted_receipt_with_forged_signature_named(ledger: Ledger, path: Path) -> None:
    # A fake earn, perfectly chained and hashed, copied from a real one with the node and
    # credits changed: its receipt no longer backs it.
    _fill(ledger, 9)
    real = ledger.entries()[0]
    draft = replace(real, seq=10, request_id=new_request_id(), node_id=C, credits=500.0,
                    prev_hash=ledger.head()[1])
    _insert(path, replace(draft, hash=entry_hash(draft)))
    _tamper(path, ("UPDATE head SET size=10, hash=?", (entry_hash(draft),)))
    result = ledger.verify()
    assert (result.ok, result.first_bad_seq) == (False, 10), result.reason
    assert "receipt" in result.reason


def test_rehashed_receipt_entry_named_by_its_receipt(ledger: Ledger, path: Path) -> None:
    _fill(ledger, 9)
    e = replace(ledger.entries()[4], credits=1e6)
    _tamper(path, ("UPDATE entries SET credits=?, hash=? WHERE seq=5",
                   (e.credits, entry_hash(e))))
    result = ledger.verify()
    # Its hash holds, but its receipt no longer backs its credits.
    assert (result.ok, result.first_bad_seq) == (False, 5), result.reason


def test_rehashed_adjustment_named_at_the_next_entry(ledger: Ledger, path: Path) -> None:
    for i in range(4):
        ledger.adjust(C, 1.0 + i, "grant", now=T0 + i)
    original = ledger.entries()
    e = replace(original[1], credits=1e6)
    _tamper(path, ("UPDATE entries SET credits=?, hash=? WHERE seq=2",
                   (e.credits, entry_hash(e))))
    result = ledger.verify()
    # Entry 2 is self-consistent now; entry 3's link to it is what broke (documented).
    assert (result.ok, result.first_bad_seq) == (False, 3), result.reason
    last = replace(original[3], credits=1e6)
    _tamper(path, ("UPDATE entries SET credits=?, hash=? WHERE seq=4",
                   (last.credits, entry_hash(last))),
            ("UPDATE entries SET credits=?, hash=? WHERE seq=2",
             (original[1].credits, original[1].hash)))
    result = ledger.verify()
    # The last entry has no next one: the recorded head names it.
    assert (result.ok, result.first_bad_seq) == (False, 4), result.reason
    assert "head" in result.reason


def test_random_tampering_always_caught() -> None:
    # Pure check_chain over seeded random histories: any single field of any row changed is
    # named at that row.
    rng = random.Random(5)
    for _ in range(40):
        n = rng.randrange(1, 30)
        rows, prev = [], GENESIS
        for seq in range(1, n + 1):
            draft = Entry(seq, "adjust", None, f"n{rng.randrange(5)}", rng.uniform(-9, 9),
                          '{"note":"","reason":"grant"}', T0 + seq, prev, "")
            entry = replace(draft, hash=entry_hash(draft))
            rows.append(entry)
            prev = entry.hash
        as_rows = [tuple(e.__dict__.values()) for e in rows]
        assert check_chain(as_rows, (n, prev)).ok
        victim = rng.randrange(n)
        field = rng.randrange(1, 9)
        row = list(as_rows[victim])
        row[field] = {1: "earn", 2: "r", 3: "x", 4: 1e9, 5: "{}", 6: 0.0, 7: "1" * 64,
                      8: "2" * 64}.get(field, None)
        as_rows[victim] = tuple(row)
        result = check_chain(as_rows, (n, prev))
        assert (result.ok, result.first_bad_seq) == (False, victim + 1), result.reason


def test_balances_never_wait_for_a_write_in_progress(ledger: Ledger, path: Path) -> None:
    """The node's event loop reads balances on every peer request and gossip round; a receipt
    being stored in a worker thread holds the ledger's lock through its commit and fsync."""
    import threading

    _fill(ledger, 4)
    committed = ledger.balances()
    answers: list[dict[str, object]] = []
    with ledger._lock:  # another thread, mid-transaction
        reader = threading.Thread(target=lambda: answers.append(dict(ledger.balances())))
        reader.start()
        reader.join(timeout=10)
        waited = reader.is_alive()
    reader.join()
    assert not waited and answers == [committed]
    assert ledger.balance(A) == committed[A]


def test_balances_in_memory_follow_every_commit(ledger: Ledger, path: Path) -> None:
    """What balances() answers from memory is what the table holds after adds, adjustments,
    a rolled-back append and a rebuild; a reader in another process reads the table."""
    reader = Ledger(path, read_only=True)
    try:
        _fill(ledger, 6)
        ledger.adjust(B, -2.5, "grant", now=T0)
        squat = ledger.head()[0] + 2  # the seq the next pair's second entry needs
        db = sqlite3.connect(path)
        db.execute("INSERT INTO entries VALUES (?, 'adjust', NULL, 'x', 1.0, '{}', 0.0, '', '')",
                   (squat,))
        db.commit()
        with pytest.raises(sqlite3.IntegrityError):  # the pair's second insert fails
            _add(ledger, _signed(0, 1), 0, 1)
        db.execute("DELETE FROM entries WHERE seq=?", (squat,))
        db.commit()
        assert ledger.balances() == reader.balances()  # the rolled-back earn is not in it
        db.execute("UPDATE balances SET given = given + 100 WHERE node_id=?", (A,))
        db.commit()
        db.close()
        ledger.rebuild_balances()
        with ledger._lock:
            stored = ledger._stored_balances()
        assert ledger.balances() == stored == reader.balances()
        assert set(stored) == {A, B, C} and ledger.verify().ok
    finally:
        reader.close()
