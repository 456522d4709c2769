"""Receipts: one per request a node served for another, signed by both ends.

The provider signs when its response ends; the consumer countersigns once it has received the
stream and checked the token counts against what it relayed. A receipt only the provider
signed is `unconfirmed`: kept, never counted (ledger/chain.py). Credits: ledger/credits.py.

Wire form (`SignedReceipt.to_wire`): canonical JSON (below) of
`{"receipt": {...}, "provider_sig": b64url, "consumer_sig": b64url | null}`.

Canonical bytes of a receipt (what is signed): the validated receipt's fields dumped to JSON
with sorted keys, no whitespace, UTF-8 (`json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`, floats in Python's shortest round-trip form). They are rebuilt from the
parsed fields, never taken from the sender's bytes, so two spellings of the same receipt carry
the same signature and a field the reader does not know (ignored) cannot ride along unsigned.

- provider signs `b"covey-receipt-provider-v1\\x00" + canonical(receipt)`
- consumer signs `b"covey-receipt-consumer-v1\\x00" + canonical(receipt) + b"\\x00" +
  provider signature`, binding its countersignature to the provider's claim.

Distinct domain tags mean neither signature can be replayed as the other, nor as a node
record or certificate. `mesh_id` is inside the signed bytes, so a receipt from one mesh cannot
be credited in another where the same keys are members.

Count check at countersigning (`Observed`): when the stream carried a usage event, the
consumer relayed the provider's own counts, so prompt and completion must match exactly.
Without usage the consumer counted content events (about one token each; llama.cpp may hold
back a partial UTF-8 character or a stop-string prefix), so the completion claim may differ
by at most max(1, 2 % of the counted figure), and the prompt claim may not exceed the
consumer's ceiling (e.g. the prompt's UTF-8 bytes plus the chat template's allowance): the
consumer cannot count prompt tokens itself.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from covey.ledger.credits import (
    MAX_CREDITS,
    MAX_TOKENS,
    MAX_WEIGHT,
    MIN_WEIGHT,
    credits,
    weight_for,
)
from covey.mesh.identity import node_id_for
from covey.mesh.sealed import SealError, b64d, b64e, canonical, public_bytes
from covey.types import RequestId

PROTOCOL = 1
PROVIDER_DOMAIN = b"covey-receipt-provider-v1"
CONSUMER_DOMAIN = b"covey-receipt-consumer-v1"
MAX_WIRE_BYTES = 8 * 1024  # a receipt is ~600 bytes; anything far larger is not one
MAX_TIME = 253_402_300_800.0  # year 10000, in Unix seconds: later is a broken clock
COUNT_TOLERANCE_SHARE = 0.02  # without usage: completion may differ by 2 % ...
COUNT_TOLERANCE_MIN = 1  # ... or one token, whichever is larger

Status = Literal["confirmed", "unconfirmed"]

_Id = Field(min_length=1, max_length=256)
_Sig = Field(min_length=1, max_length=128)  # 64 bytes in base64url: 86 characters


class ReceiptRejected(ValueError):
    """A receipt that must not be believed or signed. `reason` is a stable code for logs and
    tests: oversize, malformed, wrong_key (the key is not the named node's), bad_signature,
    bad_consumer_signature, not_provider / not_consumer (signing a receipt naming another
    node), mismatch (request or model not the one the consumer asked for), count_mismatch."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Wire(BaseModel):
    # As mesh/records.py: unknown fields ignored (protocols evolve), no NaN or infinity (a
    # NaN time compares False with everything; a NaN credit would poison every balance).
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class Receipt(_Wire):
    protocol: int = Field(default=PROTOCOL, ge=1, le=2**16)
    mesh_id: str = _Id
    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")  # 128 random bits, lowercase hex
    model_id: str = Field(min_length=1, max_length=256)
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # None: attached
    consumer: str = _Id
    provider: str = _Id
    prompt_tokens: int = Field(ge=0, le=MAX_TOKENS)
    completion_tokens: int = Field(ge=0, le=MAX_TOKENS)
    weight: float = Field(ge=MIN_WEIGHT, le=MAX_WEIGHT)  # credits.weight_for the model
    credits: float = Field(ge=0, le=MAX_CREDITS)
    started_at: float = Field(ge=0, le=MAX_TIME)  # Unix seconds, the provider's clock
    ended_at: float = Field(ge=0, le=MAX_TIME)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        # A node serving itself earns nothing: allowing it would let anyone mint credits.
        if self.consumer == self.provider:
            raise ValueError("consumer and provider are the same node")
        # The figure must be the one the token counts and weight give, so a receipt carries
        # no number its signers did not both derive.
        expected = credits(self.prompt_tokens, self.completion_tokens, self.weight)
        if not math.isclose(self.credits, expected, rel_tol=0, abs_tol=1e-6):
            raise ValueError(f"credits {self.credits} are not the {expected} the counts give")
        return self

    def signing_bytes(self) -> bytes:
        return canonical(self.model_dump(mode="json"))


class SignedReceipt(_Wire):
    receipt: Receipt
    provider_sig: str = _Sig
    consumer_sig: str | None = Field(default=None, min_length=1, max_length=128)

    def to_wire(self) -> bytes:
        return canonical(self.model_dump(mode="json"))

    @classmethod
    def from_wire(cls, raw: bytes) -> SignedReceipt:
        """Parse hostile bytes; signatures are NOT checked (see `verify`)."""
        if len(raw) > MAX_WIRE_BYTES:
            raise ReceiptRejected("oversize", f"receipt of {len(raw)} bytes exceeds "
                                              f"{MAX_WIRE_BYTES}")
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, RecursionError) as exc:  # ValidationError is a ValueError
            detail = (f"{exc.error_count()} invalid fields" if isinstance(exc, ValidationError)
                      else type(exc).__name__)
            raise ReceiptRejected("malformed", f"malformed receipt: {detail}") from exc


@dataclass(frozen=True)
class Observed:
    """What the consumer saw of the request it is asked to countersign. Build with
    `from_usage` (the stream carried a usage event) or `counted` (it did not)."""

    request_id: str
    model_id: str
    completion_tokens: int
    usage_reported: bool
    prompt_tokens: int | None = None  # exact, from the usage event
    prompt_tokens_max: int | None = None  # the ceiling, without usage

    @classmethod
    def from_usage(cls, request_id: str, model_id: str, prompt_tokens: int,
                   completion_tokens: int) -> Observed:
        return cls(request_id, model_id, completion_tokens, True, prompt_tokens=prompt_tokens)

    @classmethod
    def counted(cls, request_id: str, model_id: str, completion_tokens: int,
                prompt_tokens_max: int) -> Observed:
        return cls(request_id, model_id, completion_tokens, False,
                   prompt_tokens_max=prompt_tokens_max)


def new_request_id() -> RequestId:
    return RequestId(secrets.token_hex(16))


def new_receipt(*, mesh_id: str, request_id: str, model_id: str, model_sha256: str | None,
                consumer: str, provider: str, prompt_tokens: int, completion_tokens: int,
                parameters_b: float | None, started_at: float, ended_at: float) -> Receipt:
    """A receipt with its weight and credits derived (credits.py). Raises ValidationError on
    any field out of bounds."""
    weight = weight_for(parameters_b)
    return Receipt(mesh_id=mesh_id, request_id=request_id, model_id=model_id,
                   model_sha256=model_sha256, consumer=consumer, provider=provider,
                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   weight=weight, credits=credits(prompt_tokens, completion_tokens, weight),
                   started_at=started_at, ended_at=ended_at)


def provider_sign(receipt: Receipt, key: Ed25519PrivateKey) -> SignedReceipt:
    """The provider's signature, made when its response ended."""
    if node_id_for(public_bytes(key)) != receipt.provider:
        raise ReceiptRejected("not_provider", f"this key is not provider {receipt.provider}'s")
    message = PROVIDER_DOMAIN + b"\x00" + receipt.signing_bytes()
    sig = b64e(key.sign(message))
    _passed(public_bytes(key), sig, message)
    return SignedReceipt(receipt=receipt, provider_sig=sig)


def consumer_countersign(signed: SignedReceipt, key: Ed25519PrivateKey, observed: Observed,
                         provider_public_key: str | bytes) -> SignedReceipt:
    """Countersign a provider-signed receipt after checking it is genuine, names this node as
    consumer, is for the request and model the consumer relayed, and claims counts within the
    tolerance in the module docstring. Raises ReceiptRejected otherwise."""
    verify(signed, provider_public_key)  # never countersign a forgery
    r = signed.receipt
    if node_id_for(public_bytes(key)) != r.consumer:
        raise ReceiptRejected("not_consumer", f"this key is not consumer {r.consumer}'s")
    if r.request_id != observed.request_id or r.model_id != observed.model_id:
        raise ReceiptRejected("mismatch", f"receipt is for request {r.request_id} of "
                                          f"{r.model_id!r}, not the one relayed")
    check_counts(r, observed)
    message = _consumer_bytes(r, signed.provider_sig)
    sig = b64e(key.sign(message))
    _passed(public_bytes(key), sig, message)
    return signed.model_copy(update={"consumer_sig": sig})


def check_counts(receipt: Receipt, observed: Observed) -> None:
    """Pure: raise ReceiptRejected("count_mismatch") when the claim is not what was seen."""
    claim_p, claim_c = receipt.prompt_tokens, receipt.completion_tokens
    if observed.usage_reported:
        if claim_p != observed.prompt_tokens or claim_c != observed.completion_tokens:
            raise ReceiptRejected(
                "count_mismatch", f"claimed {claim_p}+{claim_c} tokens; the usage relayed "
                                  f"said {observed.prompt_tokens}+{observed.completion_tokens}")
        return
    tolerance = max(COUNT_TOLERANCE_MIN,
                    math.ceil(observed.completion_tokens * COUNT_TOLERANCE_SHARE))
    if abs(claim_c - observed.completion_tokens) > tolerance:
        raise ReceiptRejected(
            "count_mismatch", f"claimed {claim_c} completion tokens; {observed.completion_tokens}"
                              f" counted (tolerance {tolerance})")
    ceiling = observed.prompt_tokens_max
    if ceiling is None or claim_p > ceiling:
        raise ReceiptRejected("count_mismatch", f"claimed {claim_p} prompt tokens; at most "
                                                f"{ceiling} possible")


def verify(signed: SignedReceipt, provider_public_key: str | bytes,
           consumer_public_key: str | bytes | None = None) -> Status:
    """`confirmed` when both signatures verify; `unconfirmed` when the provider's does and
    there is no countersignature, or no consumer key to check it with. Raises ReceiptRejected
    for a key that is not the named node's or any signature that does not verify (a bad
    countersignature is a forgery, never a downgrade to unconfirmed). Keys: raw 32 bytes or
    base64url, as node records carry them."""
    r = signed.receipt
    provider_key = _key(provider_public_key)
    if node_id_for(provider_key) != r.provider:
        raise ReceiptRejected("wrong_key", f"key does not belong to provider {r.provider}")
    if not _valid(provider_key, signed.provider_sig,
                  PROVIDER_DOMAIN + b"\x00" + r.signing_bytes()):
        raise ReceiptRejected("bad_signature", "provider signature does not verify")
    if signed.consumer_sig is None or consumer_public_key is None:
        return "unconfirmed"
    consumer_key = _key(consumer_public_key)
    if node_id_for(consumer_key) != r.consumer:
        raise ReceiptRejected("wrong_key", f"key does not belong to consumer {r.consumer}")
    if not _valid(consumer_key, signed.consumer_sig, _consumer_bytes(r, signed.provider_sig)):
        raise ReceiptRejected("bad_consumer_signature", "consumer signature does not verify")
    return "confirmed"


def _consumer_bytes(receipt: Receipt, provider_sig: str) -> bytes:
    return (CONSUMER_DOMAIN + b"\x00" + receipt.signing_bytes() + b"\x00"
            + _decode(provider_sig))


def _key(key: str | bytes) -> bytes:
    raw = _decode(key) if isinstance(key, str) else key
    if len(raw) != 32:
        raise ReceiptRejected("wrong_key", f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return raw


def _decode(text: str) -> bytes:
    try:
        return b64d(text)
    except SealError as exc:
        raise ReceiptRejected("malformed", "bad base64") from exc


# Signatures this process verified, or made itself, lately. One mesh request's receipt is
# checked when it is countersigned and again when each node's ledger stores it: five Ed25519
# verifications (~0.2 ms of CPU each here) of which three checked a signature this node had
# just checked or made. Keyed by the exact key, signature and message (rebuilt from the
# receipt's fields each time), so a hit is the very check that passed before; a failure is
# never remembered.
_PASSED: OrderedDict[tuple[bytes, str, bytes], None] = OrderedDict()
_PASSED_MAX = 256  # receipts settle within seconds; ~1 KiB each
_passed_lock = threading.Lock()  # ledgers store receipts from worker threads


def _passed(public_key: bytes, sig: str, message: bytes) -> None:
    with _passed_lock:
        _PASSED[(public_key, sig, message)] = None
        while len(_PASSED) > _PASSED_MAX:
            _PASSED.popitem(last=False)


def _valid(public_key: bytes, sig: str, message: bytes) -> bool:
    with _passed_lock:
        if (public_key, sig, message) in _PASSED:
            return True
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(_decode(sig), message)
    except (InvalidSignature, ValueError):  # ValueError: bytes that are no curve point
        return False
    _passed(public_key, sig, message)
    return True
