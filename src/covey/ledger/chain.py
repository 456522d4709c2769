"""The credit ledger: an append-only, hash-chained log of entries in SQLite (WAL).

Entries, numbered 1..n with no gaps:
- `earn`: credits to the provider of a countersigned receipt;
- `spend`: the same credits from its consumer (both written in one transaction);
- `adjust`: signed credits for a node with a reason (refund, verification_penalty, grant).

An entry's hash is SHA-256 over `leaf_data(entry)`: a domain tag and the canonical JSON (sorted
keys, no whitespace) of seq, kind, request id, node id, credits, body, created_at and the
previous entry's hash (64 zeros for the first). The same bytes are the entry's Merkle leaf
(merkle.py hashes them as RFC 6962 leaves). The body of earn and spend is the countersigned
receipt with both signers' public keys, so anyone can re-check every signature offline; the
body of an adjust names its reason and a note.

Exactly one earn and one spend per request id: a receipt seen again is a no-op returning the
entries it made; the same request id with a different receipt is refused (`conflict`). A
receipt only the provider signed waits in `unconfirmed`, counts in no balance, and is
counted once when its countersigned version arrives.

Balances (given = earned, used = spent, adjusted, balance = given - used + adjusted) are
derived from the entries and cached in a table updated in the same transaction as each
append; `rebuild_balances` derives them afresh. The chain's head (size, hash) is kept in its
own row, so entries removed from or added after the end are noticed too.

What `verify` detects in a file edited behind the ledger's back, and the entry it names:
- a field changed (hash not recomputed): that entry ("entry N altered");
- an entry deleted: the gap ("entry N missing"), also at the end (against the head);
- two entries' seq swapped: the first of them ("entry N does not chain to entry N-1");
- an entry inserted: that entry, by its hash, its receipt's signatures, or because the next
  entry chains past it ("entry N inserted"); one appended after the end: against the head.
A rewrite that recomputes every hash after it, the head included, is not caught here: that is
what signed checkpoints and their witnesses are for (checkpoint.py). A rewritten entry whose
own hash was recomputed is named at the next entry, whose link to it no longer holds.

Not thread-safe by itself: every public method takes the instance's lock, so calls from
worker threads (asyncio.to_thread) are serialised.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from covey.ledger.credits import MAX_CREDITS
from covey.ledger.entries import (
    GENESIS,
    Balance,
    Entry,
    Kind,
    Reason,
    VerifyResult,
    apply,
    check_chain,
    entry_from_row,
    entry_hash,
    leaf_data,
)
from covey.ledger.receipts import ReceiptRejected, SignedReceipt, verify
from covey.mesh.sealed import b64d, b64e, canonical

# Re-exported: the ledger's callers (merkle.py, the CLI) need only this module.
__all__ = ["GENESIS", "Added", "Balance", "Entry", "Kind", "Ledger", "Reason", "VerifyResult",
           "apply", "check_chain", "entry_hash", "leaf_data"]

MAX_NOTE = 1024  # characters of an adjust's note
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, request_id TEXT, node_id TEXT NOT NULL,
    credits REAL NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
-- One terminal entry per (request, kind, node), and earn and spend once per request
-- whoever the nodes (a replay naming other nodes is still a replay).
CREATE UNIQUE INDEX IF NOT EXISTS entries_terminal ON entries (request_id, kind, node_id);
CREATE UNIQUE INDEX IF NOT EXISTS entries_receipt ON entries (request_id, kind)
    WHERE kind IN ('earn', 'spend');
CREATE TABLE IF NOT EXISTS unconfirmed (
    request_id TEXT PRIMARY KEY, receipt TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS balances (
    node_id TEXT PRIMARY KEY, given REAL NOT NULL, used REAL NOT NULL,
    adjusted REAL NOT NULL, balance REAL NOT NULL);
CREATE TABLE IF NOT EXISTS head (
    id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, hash TEXT NOT NULL);
"""
_COLUMNS = "seq, kind, request_id, node_id, credits, body, created_at, prev_hash, hash"


@dataclass(frozen=True)
class Added:
    """`confirmed`: counted now (entries: earn, spend); `unconfirmed`: held, not counted;
    `duplicate`: already counted, nothing changed (entries: the ones it made)."""

    status: Literal["confirmed", "unconfirmed", "duplicate"]
    entries: tuple[Entry, ...] = ()

class Ledger:
    """The ledger in the SQLite file at `path` (created when missing; with `read_only`, it
    must exist). Close it, or use it as a context manager. Every write is one transaction: it
    happens whole or not at all."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self._lock = threading.Lock()
        # The balances as last committed, on a writer: a node's event loop reads them on
        # every peer request (fair share) and gossip round, and must not wait for the lock
        # while another thread's transaction syncs to disk (slow storage takes tens of ms). Swapped
        # whole after each commit; None on a reader, whose writer is another process.
        self._committed: dict[str, Balance] | None = None
        self._staged: dict[str, Balance] = {}
        if read_only:
            # For readers beside a running node (the CLI): the file must exist, nothing is
            # created or migrated, and any write fails (sqlite3.OperationalError).
            if not path.is_file():
                raise FileNotFoundError(f"no ledger at {path}")
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE) so a write
        # takes the lock before it reads the head it will build on.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed credit survives a power cut, not only a crash of the process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._tx():
            # Statement by statement: executescript would commit the open transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO head VALUES (1, 0, ?)", (GENESIS,))
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._committed = self._stored_balances()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------

    def add_receipt(self, signed: SignedReceipt, *, provider_key: str | bytes,
                    consumer_key: str | bytes | None = None, now: float) -> Added:
        """Record a receipt after checking its signatures (ReceiptRejected for a forgery, or
        `conflict` for another receipt under a request id already held). Keys: the named
        provider's and consumer's public keys, raw or base64url."""
        status = verify(signed, provider_key, consumer_key)
        r = signed.receipt
        with self._lock, self._tx():
            existing = self._receipt_entries(r.request_id)
            if existing:
                _same_or_conflict(existing[0].body, signed)
                return Added("duplicate", tuple(existing))
            if status == "unconfirmed":
                held = self._db.execute("SELECT receipt FROM unconfirmed WHERE request_id=?",
                                        (r.request_id,)).fetchone()
                if held is None:
                    self._db.execute("INSERT INTO unconfirmed VALUES (?, ?, ?)",
                                     (r.request_id, signed.to_wire().decode(), _finite(now)))
                else:
                    _same_or_conflict(held[0], signed)
                return Added("unconfirmed")
            assert consumer_key is not None  # verify() confirms only with it
            body = canonical({"receipt": signed.model_dump(mode="json"),
                              "provider_key": _b64(provider_key),
                              "consumer_key": _b64(consumer_key)}).decode()
            earn = self._append("earn", r.request_id, r.provider, r.credits, body, now)
            spend = self._append("spend", r.request_id, r.consumer, r.credits, body, now)
            # The countersigned version supersedes whatever the provider sent alone.
            self._db.execute("DELETE FROM unconfirmed WHERE request_id=?", (r.request_id,))
            return Added("confirmed", (earn, spend))

    def adjust(self, node_id: str, credits: float, reason: Reason, *, now: float,
               request_id: str | None = None, note: str = "") -> Entry:
        """Append an adjustment. With a request id it is idempotent (the same adjustment
        again returns the first); without one every call appends."""
        if reason not in get_args(Reason):
            raise ValueError(f"adjust reason {reason!r} is not one of {get_args(Reason)}")
        if not (math.isfinite(credits) and abs(credits) <= MAX_CREDITS):
            raise ValueError(f"adjust credits {credits!r} not finite within ±{MAX_CREDITS}")
        if not 1 <= len(node_id) <= 256 or len(note) > MAX_NOTE:
            raise ValueError("node id (1..256) or note (<= 1024 characters) out of bounds")
        body = canonical({"reason": reason, "note": note}).decode()
        with self._lock, self._tx():
            if request_id is not None:
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE request_id=? AND kind='adjust' "
                    "AND node_id=?", (request_id, node_id)).fetchone()
                if row is not None:
                    held = entry_from_row(row)
                    if held.body != body or held.credits != credits:
                        raise ReceiptRejected("conflict", f"request {request_id} already has "
                                                          f"another adjustment for {node_id}")
                    return held
            return self._append("adjust", request_id, node_id, credits, body, now)

    def rebuild_balances(self) -> None:
        """Derive every balance from the entries again and replace the cache."""
        with self._lock, self._tx():
            derived = self._derive()
            self._db.execute("DELETE FROM balances")
            for node_id, b in derived.items():
                self._store_balance(node_id, b)
        if self._committed is not None:  # a node the entries no longer name is gone too
            self._committed = dict(derived)

    # -- reads -------------------------------------------------------------------------

    def entries(self, since_seq: int = 0, limit: int | None = None) -> list[Entry]:
        """Entries with seq > since_seq, oldest first, at most `limit` of them."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE seq>? ORDER BY seq "
                                    "LIMIT ?", (since_seq, -1 if limit is None else limit))
            return [entry_from_row(row) for row in rows]

    def unconfirmed(self) -> list[SignedReceipt]:
        with self._lock:
            rows = self._db.execute("SELECT receipt FROM unconfirmed ORDER BY received_at")
            return [SignedReceipt.from_wire(row[0].encode()) for row in rows]

    def balance(self, node_id: str) -> Balance:
        return self.balances().get(node_id, Balance())

    def balances(self) -> dict[str, Balance]:
        """Every node's balance, as committed; never waits for a write in progress."""
        committed = self._committed
        if committed is not None:
            return dict(sorted(committed.items()))
        with self._lock:
            return self._stored_balances()

    def head(self) -> tuple[int, str]:
        """(number of entries, hash of the last one): the chain's tree size and tip."""
        with self._lock:
            return self._head()

    def verify(self) -> VerifyResult:
        """Recompute the chain from the first entry and name the first bad one; then check
        the balance cache against the entries."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq")
            result = check_chain(rows, self._head())
            if not result.ok:
                return result
            derived = self._derive()
            cached = {row[0]: Balance(*row[1:]) for row in self._db.execute(
                "SELECT node_id, given, used, adjusted FROM balances")}
        for node_id in sorted(derived.keys() | cached.keys()):
            if not _close(derived.get(node_id, Balance()), cached.get(node_id, Balance())):
                return VerifyResult(False, None, f"the balance cache for {node_id} differs "
                                                 "from its entries (rebuild_balances)",
                                    result.checked)
        return result

    # -- internals (the caller holds the lock) -----------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        self._staged = {}
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if self._committed is not None and self._staged:
            self._committed = {**self._committed, **self._staged}

    def _stored_balances(self) -> dict[str, Balance]:
        rows = self._db.execute("SELECT node_id, given, used, adjusted FROM balances "
                                "ORDER BY node_id").fetchall()
        return {row[0]: Balance(*row[1:]) for row in rows}

    def _head(self) -> tuple[int, str]:
        row = self._db.execute("SELECT size, hash FROM head WHERE id=1").fetchone()
        return (row[0], row[1]) if row is not None else (0, GENESIS)

    def _append(self, kind: Kind, request_id: str | None, node_id: str, credits: float,
                body: str, now: float) -> Entry:
        size, tip = self._head()
        draft = Entry(size + 1, kind, request_id, node_id, float(credits), body,
                      _finite(now), tip, "")
        entry = replace(draft, hash=entry_hash(draft))
        self._db.execute(f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (entry.seq, entry.kind, entry.request_id, entry.node_id,
                          entry.credits, entry.body, entry.created_at, entry.prev_hash,
                          entry.hash))
        self._db.execute("UPDATE head SET size=?, hash=? WHERE id=1", (entry.seq, entry.hash))
        row = self._db.execute("SELECT given, used, adjusted FROM balances WHERE node_id=?",
                               (node_id,)).fetchone()
        balances = {node_id: Balance(*row)} if row is not None else {}
        apply(balances, entry)
        self._store_balance(node_id, balances[node_id])
        return entry

    def _store_balance(self, node_id: str, b: Balance) -> None:
        self._db.execute("INSERT OR REPLACE INTO balances VALUES (?, ?, ?, ?, ?)",
                         (node_id, b.given, b.used, b.adjusted, b.balance))
        self._staged[node_id] = b

    def _derive(self) -> dict[str, Balance]:
        balances: dict[str, Balance] = {}
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq"):
            apply(balances, entry_from_row(row))
        return balances

    def _receipt_entries(self, request_id: str) -> list[Entry]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE request_id=? AND kind "
                                "IN ('earn', 'spend') ORDER BY seq", (request_id,))
        return [entry_from_row(row) for row in rows]

def _same_or_conflict(held_json: str, signed: SignedReceipt) -> None:
    try:
        held = json.loads(held_json)
        # An entry's body wraps the signed receipt with the keys; an unconfirmed row is one.
        held_receipt = held["receipt"]["receipt"] if "provider_key" in held else held["receipt"]
        same = canonical(held_receipt) == signed.receipt.signing_bytes()
    # A row edited by hand: whatever it holds, it is not this receipt; verify() names it.
    except (ValueError, KeyError, TypeError):
        same = False
    if not same:
        raise ReceiptRejected("conflict", f"request {signed.receipt.request_id} already has "
                                          "a different receipt")

def _close(a: Balance, b: Balance) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-9)
               for x, y in ((a.given, b.given), (a.used, b.used), (a.adjusted, b.adjusted)))


def _finite(now: float) -> float:
    if not math.isfinite(now):
        raise ValueError(f"time {now!r} is not finite")
    return float(now)


def _b64(key: str | bytes) -> str:
    return b64e(b64d(key) if isinstance(key, str) else key)
