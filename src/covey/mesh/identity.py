"""This node's Ed25519 identity, kept in the data dir (mode 0600). Node id = hash of the key."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.types import NodeId

KEY_FILE = "node.key"


@dataclass(frozen=True)
class Identity:
    key: Ed25519PrivateKey
    node_id: NodeId

    @property
    def public_bytes(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@functools.lru_cache(maxsize=1024)
def node_id_for(public_key: bytes) -> NodeId:
    """16 base32 characters of SHA-256 over the raw public key: short, stable, unforgeable.

    Cached: every signed peer request and receipt asks again for the same few keys, and
    Python 3.11's base32 encoder is pure Python (a sixth of a peer request's checks)."""
    digest = hashlib.sha256(public_key).digest()
    return NodeId(base64.b32encode(digest).decode().lower()[:16])


def load_or_create(data_dir: Path) -> Identity:
    path = data_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 key")
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        # Created 0600 from the start: never world-readable, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return Identity(key=key, node_id=node_id_for(raw))
