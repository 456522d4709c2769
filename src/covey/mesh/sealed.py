"""Signed envelopes: canonical JSON bodies sealed with Ed25519 under a domain tag.

Envelope on the wire: `{"body": base64url(canonical JSON), "sig": base64url(signature)}`. The
signature covers `domain + b"\\x00" + body bytes` exactly as received, so a verifier checks it
before trusting any field, and a record signed for one purpose (a node record) can never be
replayed as another (a member certificate).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SealError(ValueError):
    """An envelope that cannot be opened: malformed, oversize, or a bad signature."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    """Decode what `b64e` writes, and only that: one spelling per byte string. The last
    character's padding bits must be zero, so a signature or key cannot be re-spelt into a
    different record that still verifies."""
    try:
        # validate=True: characters outside the alphabet are an error, not silently dropped.
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError("malformed", "bad base64") from exc
    if b64e(raw) != text:
        raise SealError("malformed", "base64 not in canonical form")
    return raw


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def seal(domain: bytes, body: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    raw = canonical(body)
    return canonical({"body": b64e(raw), "sig": b64e(key.sign(domain + b"\x00" + raw))})


def unseal(domain: bytes, envelope: bytes, max_bytes: int) -> tuple[bytes, bytes, dict[str, Any]]:
    """(body bytes, signature, decoded body). The signature is NOT checked yet: the caller
    finds the signer's key (inside the body, or known in advance) and calls `check`."""
    if len(envelope) > max_bytes:
        raise SealError("oversize", f"envelope of {len(envelope)} bytes exceeds {max_bytes}")
    try:
        outer = json.loads(envelope)
        body_raw = b64d(outer["body"])
        sig = b64d(outer["sig"])
        body = json.loads(body_raw)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SealError("malformed", f"malformed envelope: {type(exc).__name__}") from exc
    if not isinstance(body, dict):
        raise SealError("malformed", "envelope body is not an object")
    return body_raw, sig, body


def check(domain: bytes, body_raw: bytes, sig: bytes, public_key: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, domain + b"\x00" + body_raw)
    except (InvalidSignature, ValueError) as exc:
        raise SealError("bad_signature", "signature does not verify") from exc
