"""C2SP signed notes, transparency-log checkpoints and witness cosignatures, Ed25519 only.

Specifications (c2sp.org): signed-note (note text, signature lines, key IDs, vkeys),
tlog-checkpoint (the origin / size / root body) and tlog-cosignature (Ed25519 cosignature/v1,
signature type 0x04). The byte layouts match golang.org/x/mod/sumdb/note and
github.com/transparency-dev/formats, so existing tlog tooling reads what this writes.

Builders raise ValueError on bad arguments (the caller's own data). Parsers and verifiers take
hostile text: anything oversized or malformed yields None / False, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIG_ED25519 = 0x01  # signed-note §Signature types: plain Ed25519 over the note text
SIG_COSIGNATURE_V1 = 0x04  # tlog-cosignature: timestamped Ed25519 cosignature/v1
HASH_SIZE = 32
MAX_TREE_SIZE = (1 << 64) - 1
MAX_TIMESTAMP = (1 << 63) - 1  # tlog-cosignature: the u64 timestamp MUST NOT exceed 2^63 - 1
# signed-note: verifiers SHOULD cap the signature count (or the size) and MUST accept 16;
# 100 is golang.org/x/mod/sumdb/note's cap. 64 KiB holds that many Ed25519 lines.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 64 * 1024

_SIG_PREFIX = "\u2014 "  # em dash, space
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # every ASCII control except newline
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID, and the signature bytes after the ID."""

    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A parsed tlog-checkpoint: the tree head and every signature line (none verified)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()
    signatures: tuple[NoteSignature, ...] = ()

    @property
    def body(self) -> str:
        """The signed note text; parsing is exact, so this is byte-for-byte what was signed."""
        return checkpoint_body(self.origin, self.size, self.root, self.extensions)


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """signed-note §Signatures: SHA-256(name || 0x0A || signature type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes, sig_type: int = SIG_ED25519) -> str:
    """signed-note §Verifier keys: `name+hex(key ID)+base64(type || key)`, for tlog tooling."""
    _check_name(name)
    return (f"{name}+{key_id(name, sig_type, public_key).hex()}+"
            f"{base64.b64encode(bytes([sig_type]) + public_key).decode()}")


def parse_verifier_key(vkey: str) -> tuple[str, int, bytes] | None:
    """signed-note §Verifier keys: (name, signature type, Ed25519 key), or None if malformed.

    Only the Ed25519 types (0x01 and 0x04) are read; the key ID must match the key.
    """
    if not isinstance(vkey, str) or len(vkey) > 1024:
        return None
    name, _, rest = vkey.partition("+")
    kid, _, encoded = rest.partition("+")
    raw = _unb64(encoded)
    if (not _valid_name(name) or raw is None or len(raw) != 33
            or raw[0] not in (SIG_ED25519, SIG_COSIGNATURE_V1)
            or kid.lower() != key_id(name, raw[0], raw[1:]).hex()):
        return None
    return name, raw[0], raw[1:]


def checkpoint_body(origin: str, size: int, root: bytes, extensions: Iterable[str] = ()) -> str:
    """tlog-checkpoint §Note text: origin, decimal size, base64 root, extension lines."""
    exts = tuple(extensions)
    for line in (origin, *exts):
        if not line or "\n" in line or _CONTROL.search(line):
            raise ValueError(f"checkpoint line {line!r} must be non-empty, one line, no controls")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError(f"tree size {size!r} is not a u64")
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise ValueError("root hash must be 32 bytes")
    return "".join(f"{line}\n" for line in (origin, str(size), _b64(root), *exts))


def sign_note(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """signed-note §Format / §Ed25519 signatures: body, blank line, one signature line."""
    _check_body(body)
    public = private_key.public_key().public_bytes_raw()
    signature = private_key.sign(body.encode())
    return f"{body}\n{_line(name, key_id(name, SIG_ED25519, public), signature)}"


def cosign(body: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> str:
    """tlog-cosignature §Ed25519 signed message: a cosignature/v1 signature line over `body`.

    `body` is the checkpoint's note text; append the returned line to the signed note.
    """
    _check_body(body)
    if _parse_body(body) is None:
        raise ValueError("cosign needs a checkpoint body")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not (
            0 <= timestamp <= MAX_TIMESTAMP):
        raise ValueError(f"timestamp {timestamp!r} out of range")
    public = private_key.public_key().public_bytes_raw()
    signature = private_key.sign(_cosigned_message(body, timestamp))
    return _line(name, key_id(name, SIG_COSIGNATURE_V1, public),
                 timestamp.to_bytes(8, "big") + signature)


def split_note(text: str | bytes) -> tuple[str, tuple[NoteSignature, ...]] | None:
    """signed-note §Format: (note text, signature lines), or None when malformed or too big."""
    note = _as_text(text)
    if note is None:
        return None
    split = note.rfind("\n\n")  # the text ends at the *last* blank line
    if split < 0:
        return None
    body, block = note[:split + 1], note[split + 2:]
    if not block.endswith("\n"):
        return None
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        return None
    signatures = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            return None
        name, _, encoded = line[len(_SIG_PREFIX):].partition(" ")
        raw = _unb64(encoded)
        if not _valid_name(name) or raw is None or len(raw) < 5:
            return None
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return body, tuple(signatures)


def parse_checkpoint(text: str | bytes) -> Checkpoint | None:
    """tlog-checkpoint: the signed note's fields, or None when anything is malformed.

    Signatures are parsed, not verified: use verify_note / verify_cosignature.
    """
    note = split_note(text)
    if note is None:
        return None
    fields = _parse_body(note[0])
    if fields is None:
        return None
    origin, size, root, extensions = fields
    return Checkpoint(origin, size, root, extensions, note[1])


def verify_note(text: str | bytes, name: str, public_key: bytes) -> bool:
    """signed-note §Signatures: True when `name`'s Ed25519 key signed the note.

    Lines from other keys are ignored; a note with no line from this key, or with one that
    fails to verify, is refused (the spec's SHOULD, taken as a MUST here).
    """
    note = split_note(text)
    key = _public_key(public_key)
    if note is None or key is None or not _valid_name(name):
        return False
    body, signatures = note
    mine = _matching(signatures, name, key_id(name, SIG_ED25519, public_key))
    message = body.encode()
    return bool(mine) and all(_ed25519_ok(key, s.signature, message) for s in mine)


def verify_cosignature(text: str | bytes, name: str, public_key: bytes) -> int | None:
    """tlog-cosignature: the timestamp of `name`'s valid cosignature/v1 on this checkpoint.

    None when the note is not a well-formed checkpoint, carries no cosignature from this key,
    or any of its cosignatures fails. With several, the latest timestamp is returned.
    """
    checkpoint = parse_checkpoint(text)
    key = _public_key(public_key)
    if checkpoint is None or key is None or not _valid_name(name):
        return None
    mine = _matching(checkpoint.signatures, name,
                     key_id(name, SIG_COSIGNATURE_V1, public_key))
    timestamps = []
    for s in mine:
        if len(s.signature) != 8 + 64:
            return None
        timestamp = int.from_bytes(s.signature[:8], "big")
        if timestamp > MAX_TIMESTAMP or not _ed25519_ok(
                key, s.signature[8:], _cosigned_message(checkpoint.body, timestamp)):
            return None
        timestamps.append(timestamp)
    return max(timestamps, default=None)


def verify_checkpoint(text: str | bytes, name: str, public_key: bytes) -> Checkpoint | None:
    """The parsed checkpoint when `name`'s Ed25519 key signed it, else None."""
    checkpoint = parse_checkpoint(text)
    if checkpoint is None or not verify_note(text, name, public_key):
        return None
    return checkpoint


def _cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def _parse_body(body: str) -> tuple[str, int, bytes, tuple[str, ...]] | None:
    if not body.endswith("\n"):
        return None
    lines = body[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        return None
    origin, size_text, root_text, *extensions = lines
    root = _unb64(root_text)
    if not _SIZE.fullmatch(size_text) or root is None or len(root) != HASH_SIZE:
        return None
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        return None
    return origin, size, root, tuple(extensions)


def _as_text(text: str | bytes) -> str | None:
    """Valid UTF-8 within the size cap, with no ASCII control but newline (signed-note)."""
    try:
        if isinstance(text, bytes):
            if len(text) > MAX_NOTE_BYTES:
                return None
            text = text.decode("utf-8")
        elif not isinstance(text, str) or len(text) > MAX_NOTE_BYTES or len(
                text.encode("utf-8")) > MAX_NOTE_BYTES:
            return None
    except UnicodeError:  # invalid UTF-8 bytes, or a str holding lone surrogates
        return None
    return None if _CONTROL.search(text) else text


def _valid_name(name: str) -> bool:
    """signed-note: key names are non-empty, with no Unicode space and no plus."""
    return (isinstance(name, str) and bool(name) and "+" not in name
            and not any(c.isspace() for c in name) and not _CONTROL.search(name))


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise ValueError(f"key name {name!r} must be non-empty, without spaces or '+'")


def _check_body(body: str) -> None:
    if not isinstance(body, str) or not body.endswith("\n") or _CONTROL.search(body):
        raise ValueError("note text must end in a newline and hold no control characters")


def _line(name: str, kid: bytes, signature: bytes) -> str:
    _check_name(name)
    return f"{_SIG_PREFIX}{name} {_b64(kid + signature)}\n"


def _matching(signatures: Sequence[NoteSignature], name: str, kid: bytes) -> list[NoteSignature]:
    # signed-note: a line is this key's only when both the name and the key ID match.
    return [s for s in signatures if s.name == name and s.key_id == kid]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes | None:
    """Strict standard base64: the alphabet, padding, and the canonical encoding only."""
    if not text or not text.isascii():
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if _b64(raw) == text else None


def _public_key(raw: bytes) -> Ed25519PublicKey | None:
    if not isinstance(raw, bytes) or len(raw) != 32:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:  # bytes that are not a valid key encoding
        return None


def _ed25519_ok(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
