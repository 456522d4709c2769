"""Peer transport security: TLS pinned to a node's key, plus requests signed by the caller.

- Every node serves its mesh listener over TLS with a self-signed certificate made from its
  own Ed25519 node key. Callers pin the certificate's SHA-256 fingerprint, which the node
  publishes in its signed record, so no CA is involved and a man in the middle cannot pass.
- Python's ssl module cannot accept arbitrary client certificates on the server side, so the
  caller proves who it is by signing each request: method, path, body hash, timestamp, nonce
  and mesh id, with its node key. The server checks membership, freshness and replays.
A source address, loopback, or a forwarded header is never a credential.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import NameOID

from covey.mesh.identity import node_id_for
from covey.mesh.sealed import SealError, b64d, b64e, check, public_bytes

REQUEST_DOMAIN = b"covey-request-v1"
H_NODE, H_KEY, H_TIME, H_NONCE, H_SIG = (
    "x-covey-node", "x-covey-key", "x-covey-time", "x-covey-nonce", "x-covey-sig")
H_CERT = "x-covey-cert"  # the caller's member certificate, like a TLS client certificate
MAX_CERT_HEADER = 4096
WINDOW_S = 30.0  # a signed request older or newer than this is refused
MAX_NONCES = 100_000


class PeerRefused(Exception):
    """A peer request that must not be served. `reason`: unsigned, malformed, wrong_key,
    not_member, stale, replay, bad_signature."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _message(mesh_id: str, method: str, path: str, body: bytes, timestamp: str,
             nonce: str) -> bytes:
    return "\n".join([mesh_id, method.upper(), path, hashlib.sha256(body).hexdigest(),
                      timestamp, nonce]).encode()


def sign_request(key: Ed25519PrivateKey, *, mesh_id: str, method: str, path: str, body: bytes,
                 now: float, nonce: str | None = None) -> dict[str, str]:
    """Headers that authenticate one request from this node."""
    raw = public_bytes(key)
    nonce = nonce or secrets.token_urlsafe(16)
    timestamp = f"{now:.3f}"
    sig = key.sign(REQUEST_DOMAIN + b"\x00" + _message(mesh_id, method, path, body, timestamp,
                                                        nonce))
    return {H_NODE: node_id_for(raw), H_KEY: b64e(raw), H_TIME: timestamp, H_NONCE: nonce,
            H_SIG: b64e(sig)}


@dataclass
class RequestVerifier:
    """Checks signed peer requests. `is_member(node_id, public_key, now)` is the membership
    view (certificates minus revocations). Remembers nonces for the freshness window."""

    mesh_id: str
    is_member: Callable[[str, bytes, float], bool]
    window_s: float = WINDOW_S
    _nonces: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               now: float) -> str:
        """The calling node's id, or PeerRefused."""
        try:
            node_id, key_text = headers[H_NODE], headers[H_KEY]
            timestamp, nonce, sig_text = headers[H_TIME], headers[H_NONCE], headers[H_SIG]
        except KeyError as exc:
            raise PeerRefused("unsigned", f"missing {exc.args[0]} header") from exc
        if max(len(node_id), len(key_text), len(timestamp), len(nonce), len(sig_text)) > 128:
            raise PeerRefused("malformed", "oversized authentication header")
        try:
            key, sig, sent_at = b64d(key_text), b64d(sig_text), float(timestamp)
        except (SealError, ValueError) as exc:
            raise PeerRefused("malformed", "unreadable authentication header") from exc
        if node_id_for(key) != node_id:
            raise PeerRefused("wrong_key", "the key does not belong to the claimed node")
        if not self.is_member(node_id, key, now):
            raise PeerRefused("not_member", f"node {node_id} is not a member of this mesh "
                                            "(or was revoked)")
        if abs(now - sent_at) > self.window_s:
            raise PeerRefused("stale", f"request time is {now - sent_at:+.0f}s off; check the "
                                       "clocks of both machines")
        try:
            check(REQUEST_DOMAIN, _message(self.mesh_id, method, path, body, timestamp, nonce),
                  sig, key)
        except SealError as exc:
            raise PeerRefused("bad_signature", "request signature does not verify") from exc
        self._remember(f"{node_id}:{nonce}", now)
        return node_id

    def _remember(self, nonce: str, now: float) -> None:
        # Checked after the signature, so nobody can fill the cache with unsigned junk.
        while self._nonces and (next(iter(self._nonces.values())) < now - 2 * self.window_s
                                or len(self._nonces) >= MAX_NONCES):
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise PeerRefused("replay", "this request was already received")
        self._nonces[nonce] = now


# --- TLS identity -------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsIdentity:
    cert_path: Path
    key_path: Path
    fingerprint: str  # hex SHA-256 of the DER certificate; published in the signed record


def tls_identity(key: Ed25519PrivateKey, directory: Path) -> TlsIdentity:
    """A self-signed certificate for the node key: made once and reused across restarts, and
    made anew when the one on disk is for another key (node.key was deleted to give a copied
    data dir its own identity) or cannot be read, so the TLS key always is the node key."""
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert = _load_cert(cert_path)
    if cert is None or not key_path.exists() or _raw_public(cert) != public_bytes(key):
        cert = _make_cert(key, cert_path, key_path)
    return TlsIdentity(cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex())


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    # Missing or damaged: a new one is made from the node key, which is what it must hold.
    except (OSError, ValueError):
        return None


def _raw_public(cert: x509.Certificate) -> bytes | None:
    public = cert.public_key()
    if not isinstance(public, Ed25519PublicKey):
        return None
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _make_cert(key: Ed25519PrivateKey, cert_path: Path, key_path: Path) -> x509.Certificate:
    node_id = node_id_for(public_bytes(key))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=36500))
            .sign(key, algorithm=None))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert
