"""Ledger entries, pure: their format, their hash (the Merkle leaf), their effect on a
balance, and the chain check that names the first bad entry. Storage: chain.py, whose
docstring says what each check catches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import ValidationError

from covey.ledger.receipts import ReceiptRejected, SignedReceipt, verify
from covey.mesh.sealed import canonical

Kind = Literal["earn", "spend", "adjust"]
Reason = Literal["refund", "verification_penalty", "grant"]
GENESIS = "0" * 64
ENTRY_DOMAIN = b"covey-ledger-entry-v1\x00"


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: Kind
    request_id: str | None
    node_id: str
    credits: float  # earn and spend: the receipt's (positive) credits; adjust: signed
    body: str  # earn/spend: receipt and keys (canonical JSON); adjust: reason and note
    created_at: float
    prev_hash: str
    hash: str

    @property
    def reason(self) -> str | None:
        if self.kind != "adjust":
            return None
        value = json.loads(self.body).get("reason")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Balance:
    given: float = 0.0
    used: float = 0.0
    adjusted: float = 0.0

    @property
    def balance(self) -> float:
        return self.given - self.used + self.adjusted


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    first_bad_seq: int | None  # None when ok, or when only the balance cache is wrong
    reason: str
    checked: int = 0  # entries that passed before the first bad one (all, when ok)


def leaf_data(entry: Entry) -> bytes:
    """The canonical bytes of an entry (everything but its own hash): hashed for the chain,
    and the entry's Merkle leaf."""
    return ENTRY_DOMAIN + canonical({
        "seq": entry.seq, "kind": entry.kind, "request_id": entry.request_id,
        "node_id": entry.node_id, "credits": entry.credits, "body": entry.body,
        "created_at": entry.created_at, "prev_hash": entry.prev_hash})


def entry_hash(entry: Entry) -> str:
    return hashlib.sha256(leaf_data(entry)).hexdigest()


def apply(balances: dict[str, Balance], entry: Entry) -> None:
    """Fold one entry into `balances`: the only place an entry's effect on a balance is said,
    used both by appends and by `rebuild_balances`, so the two agree bit for bit."""
    b = balances.get(entry.node_id, Balance())
    if entry.kind == "earn":
        b = Balance(b.given + entry.credits, b.used, b.adjusted)
    elif entry.kind == "spend":
        b = Balance(b.given, b.used + entry.credits, b.adjusted)
    else:
        b = Balance(b.given, b.used, b.adjusted + entry.credits)
    balances[entry.node_id] = b


def check_chain(rows: Iterable[tuple[Any, ...]], head: tuple[int, str]) -> VerifyResult:
    """Pure: walk stored rows in seq order and name the first bad entry (see the module
    docstring). `head` is the recorded (size, hash)."""
    expected, last, before_last = 1, GENESIS, GENESIS
    for row in rows:
        seq = row[0]
        if not isinstance(seq, int) or seq < expected:
            return _bad(expected, f"entry {expected} malformed (seq {seq!r})")
        if seq > expected:
            return _bad(expected, f"entry {expected} missing")
        try:
            entry = entry_from_row(row)
        except (TypeError, ValueError) as exc:  # a value of the wrong type or kind
            return _bad(seq, f"entry {seq} malformed ({exc})")
        if entry.prev_hash != last:
            if seq > 1 and entry.prev_hash == before_last:
                # This entry links to the one two back: the one between was slipped in.
                return _bad(seq - 1, f"entry {seq - 1} inserted (entry {seq} chains past it)")
            return _bad(seq, f"entry {seq} does not chain to entry {seq - 1}")
        if entry_hash(entry) != entry.hash:
            return _bad(seq, f"entry {seq} altered (its hash does not match its fields)")
        problem = _check_body(entry)
        if problem is not None:
            return _bad(seq, f"entry {seq} {problem}")
        before_last, last, expected = last, entry.hash, expected + 1
    size, head_hash = head
    n = expected - 1
    if n < size:
        return _bad(n + 1, f"entry {n + 1} missing (the head records {size} entries)", n)
    if n > size:
        return _bad(size + 1, f"entry {size + 1} inserted after the recorded head "
                              f"of {size} entries", size)
    if last != head_hash:
        return _bad(n, f"entry {n} does not match the recorded head hash", n - 1)
    return VerifyResult(True, None, f"{n} entries verified", n)


def entry_from_row(row: tuple[Any, ...]) -> Entry:
    """An Entry from a stored row, refusing values of the wrong type (a hand-edited file)."""
    seq, kind, request_id, node_id, credits, body, created_at, prev_hash, hash_ = row
    if kind not in get_args(Kind):
        raise ValueError(f"unknown kind {kind!r}")
    for name, value, types in (("seq", seq, int), ("node_id", node_id, str),
                               ("credits", credits, float), ("body", body, str),
                               ("created_at", created_at, float), ("prev_hash", prev_hash, str),
                               ("hash", hash_, str)):
        if not isinstance(value, types):
            raise TypeError(f"{name} is {type(value).__name__}")
    if request_id is not None and not isinstance(request_id, str):
        raise TypeError(f"request_id is {type(request_id).__name__}")
    return Entry(seq, kind, request_id, node_id, credits, body, created_at, prev_hash, hash_)


def _check_body(entry: Entry) -> str | None:
    """Why an entry's body does not back it, or None. Earn and spend must carry a receipt
    both named nodes signed, for this request, node and amount."""
    try:
        body = json.loads(entry.body)
        if entry.kind == "adjust":
            return None if body.get("reason") in get_args(Reason) else "has no valid reason"
        signed = SignedReceipt.model_validate(body["receipt"])
        status = verify(signed, body["provider_key"], body["consumer_key"])
    except ReceiptRejected as exc:
        return f"carries a receipt that does not verify ({exc.reason})"
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
        return "carries a malformed receipt"
    r = signed.receipt
    node = r.provider if entry.kind == "earn" else r.consumer
    if (status != "confirmed" or entry.request_id != r.request_id or entry.node_id != node
            or entry.credits != r.credits):
        return "does not match its receipt"
    return None


def _bad(seq: int, reason: str, checked: int | None = None) -> VerifyResult:
    return VerifyResult(False, seq, reason, seq - 1 if checked is None else checked)
