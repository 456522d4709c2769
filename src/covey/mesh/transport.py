"""Peer transport security: TLS pinned to a node's key, plus requests signed by the caller.

- Every node serves its mesh listener over TLS with a self-signed certificate made from its
  own Ed25519 node key. Callers pin the certificate's SHA-256 fingerprint, which the node
  publishes in its signed record, so no CA is involved and a man in the middle cannot pass.
- Python's ssl module cannot accept arbitrary client certificates on the server side, so the
  caller proves who it is by signing a request (the first on each connection, see below):
  mesh id, audience (the node it is meant for), method, path, body hash, timestamp and nonce,
  with its node key. The server checks membership and freshness from the headers alone,
  before it reads the body; then the signature and replays. The audience stops a member
  from replaying a request it received to a third node.
- A kept TLS connection on which one request from a node verified is that node's from then
  on: TLS keeps the connection's bytes to the one client that sent the verified request,
  which only the signing node can have made (it sends requests for this audience only over
  TLS pinned to this node's key). Its later requests there are not verified again, and the
  answer says so (`x-covey-bound`), so the caller sends the next ones unsigned, naming only
  itself (`x-covey-node`). Membership is still checked on every request.
A source address, loopback, or a forwarded header is never a credential.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import secrets
import ssl
import weakref
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

REQUEST_DOMAIN = b"covey-request-v2"  # v2: the audience is signed too
H_NODE, H_KEY, H_TIME, H_NONCE, H_SIG = (
    "x-covey-node", "x-covey-key", "x-covey-time", "x-covey-nonce", "x-covey-sig")
H_CERT = "x-covey-cert"  # the caller's member certificate, like a TLS client certificate
# In an answer: "1", this connection is the caller's (see above); "0", the caller itself was
# refused (an unsigned call is then signed and sent once more).
H_BOUND = "x-covey-bound"
MAX_CERT_HEADER = 4096
WINDOW_S = 30.0  # a signed request older or newer than this is refused
MAX_NONCES = 100_000


class PeerRefused(Exception):
    """A peer request that must not be served. `reason`: unsigned, malformed, wrong_key,
    not_member, stale, replay, bad_signature, busy (the replay cache is full: 503)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def status(self) -> int:
        return 503 if self.reason == "busy" else 403


def _message(mesh_id: str, audience: str, method: str, path: str, body: bytes,
             timestamp: str, nonce: str) -> bytes:
    return "\n".join([mesh_id, audience, method.upper(), path,
                      hashlib.sha256(body).hexdigest(), timestamp, nonce]).encode()


def sign_request(key: Ed25519PrivateKey, *, mesh_id: str, audience: str, method: str,
                 path: str, body: bytes, now: float, nonce: str | None = None
                 ) -> dict[str, str]:
    """Headers that authenticate one request from this node to node `audience`."""
    raw = public_bytes(key)
    nonce = nonce or secrets.token_urlsafe(16)
    timestamp = f"{now:.3f}"
    sig = key.sign(REQUEST_DOMAIN + b"\x00" + _message(mesh_id, audience, method, path, body,
                                                        timestamp, nonce))
    return {H_NODE: node_id_for(raw), H_KEY: b64e(raw), H_TIME: timestamp, H_NONCE: nonce,
            H_SIG: b64e(sig)}


@dataclass(frozen=True)
class Claim:
    """What a request's headers claim, checked for membership and freshness (not yet for the
    signature: that needs the body)."""

    node_id: str
    key: bytes
    sig: bytes
    timestamp: str
    sent_at: float
    nonce: str


@dataclass
class RequestVerifier:
    """Checks signed peer requests addressed to `audience` (this node's id).
    `is_member(node_id, public_key, now)` is the membership view (certificates minus
    revocations). Remembers every nonce until its request could no longer be fresh."""

    mesh_id: str
    is_member: Callable[[str, bytes, float], bool]
    audience: str
    window_s: float = WINDOW_S
    max_nonces: int = MAX_NONCES
    _nonces: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # TLS connections (each one's SSLObject, gone with it) → the node and key whose signed
    # request verified on it. A signature check costs ~0.2-0.3 ms, on the path of every
    # relayed prompt's first token and of every gossip call over a kept connection.
    _bound: weakref.WeakKeyDictionary[object, tuple[str, bytes]] = field(
        default_factory=weakref.WeakKeyDictionary)

    def claim(self, headers: Mapping[str, str], now: float,
              connection: object | None = None) -> Claim:
        """Membership and freshness from the headers alone: run before reading the body, so
        a stranger cannot make this node read (or hash) a large one. Raises PeerRefused.

        `connection`: the TLS connection it came on (its SSLObject), None where it is not
        TLS. An unsigned request there is its node's if a verified one made it so."""
        if connection is not None and H_SIG not in headers:
            return self._bound_claim(headers.get(H_NODE, ""), connection, now)
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
        # NaN compares false with everything: it would pass the window check below, and a
        # captured request could be replayed for ever once its nonce left the cache.
        if not math.isfinite(sent_at):
            raise PeerRefused("malformed", "request time is not a finite number")
        if node_id_for(key) != node_id:
            raise PeerRefused("wrong_key", "the key does not belong to the claimed node")
        if not self.is_member(node_id, key, now):
            raise PeerRefused("not_member", f"node {node_id} is not a member of this mesh "
                                            "(or was revoked)")
        if abs(now - sent_at) > self.window_s:
            raise PeerRefused("stale", f"request time is {now - sent_at:+.0f}s off; check the "
                                       "clocks of both machines")
        return Claim(node_id, key, sig, timestamp, sent_at, nonce)

    def check(self, claim: Claim, method: str, path: str, body: bytes, now: float,
              connection: object | None = None) -> str:
        """The signature over the body, then replays. Returns the calling node's id.

        `connection`: as for `claim`. Once a request from a node verifies on it, later
        requests there that claim the same node and key are that node's: TLS protects their
        bytes, as the signature would. A claim of any other node on it is checked in full
        and does not move the binding."""
        if self.holds(connection, claim):
            return claim.node_id  # signed or not: this connection already proved the node
        self.verify_signature(claim, method, path, body)
        return self.commit(claim, now, connection)

    def holds(self, connection: object | None, claim: Claim) -> bool:
        """Whether `connection` already proved the claimed node (no signature is needed)."""
        return connection is not None and self._bound.get(connection) == (claim.node_id,
                                                                           claim.key)

    def verify_signature(self, claim: Claim, method: str, path: str, body: bytes) -> None:
        """The signature over the body, and nothing else: no nonce is remembered, so the same
        request can still be checked (and taken) by `check` or `commit`. Raises PeerRefused."""
        try:
            check(REQUEST_DOMAIN, _message(self.mesh_id, self.audience, method, path, body,
                                           claim.timestamp, claim.nonce), claim.sig, claim.key)
        except SealError as exc:
            raise PeerRefused("bad_signature", "request signature does not verify (or it was "
                                               "meant for another node)") from exc

    def commit(self, claim: Claim, now: float, connection: object | None = None) -> str:
        """Take a signed request whose signature verified: its nonce is remembered (a replay
        is refused from now on) and its connection becomes its node's. Raises PeerRefused
        (replay, busy). Returns the calling node's id."""
        self._remember(f"{claim.node_id}:{claim.nonce}", claim.sent_at + self.window_s, now)
        if connection is not None and connection not in self._bound:
            self._bound[connection] = (claim.node_id, claim.key)
        return claim.node_id

    def vouches(self, connection: object | None, node_id: str) -> bool:
        """Whether `connection` is `node_id`'s: its unsigned requests will be taken as that
        node's (the answer tells the caller so)."""
        bound = self._bound.get(connection) if connection is not None else None
        return bound is not None and bound[0] == node_id

    def _bound_claim(self, node_id: str, connection: object, now: float) -> Claim:
        bound = self._bound.get(connection)
        if bound is None or bound[0] != node_id:
            raise PeerRefused("unsigned", f"missing {H_SIG} header (this connection carried "
                                          "no verified request from that node)")
        key = bound[1]
        if not self.is_member(node_id, key, now):
            raise PeerRefused("not_member", f"node {node_id} is not a member of this mesh "
                                            "(or was revoked)")
        return Claim(node_id, key, b"", "", now, "")  # `check` finds the connection bound

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               now: float) -> str:
        """Both steps at once. The calling node's id, or PeerRefused."""
        return self.check(self.claim(headers, now), method, path, body, now)

    def _remember(self, nonce: str, until: float, now: float) -> None:
        # Checked after the signature, so nobody can fill the cache with unsigned junk.
        # Only nonces whose request could no longer pass the freshness check are dropped:
        # evicting a live one would let its request be replayed.
        while self._nonces and next(iter(self._nonces.values())) < now:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise PeerRefused("replay", "this request was already received")
        if len(self._nonces) >= self.max_nonces:
            raise PeerRefused("busy", "too many peer requests in the last minute; retry "
                                      "shortly")
        # Kept in arrival order; `until` is at most now + 2 windows, so an entry behind a
        # longer-lived one waits at most that long to be dropped.
        self._nonces[nonce] = max(until, now)


# --- TLS identity -------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsIdentity:
    cert_path: Path
    key_path: Path
    fingerprint: str  # hex SHA-256 of the DER certificate; published in the signed record

    def server_context(self) -> ssl.SSLContext:
        """The TLS context a mesh listener serves with (clients pin the fingerprint)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


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
