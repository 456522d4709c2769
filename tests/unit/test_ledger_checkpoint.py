"""C2SP signed notes, checkpoints and cosignatures: interop with published notes, round trips,
tampering, and hostile text that must be refused without an exception."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.ledger import checkpoint as cp
from covey.ledger import merkle

# --- Interop: notes signed by other implementations -------------------------------------

# golang.org/x/mod/sumdb/note note_test.go (TestSign, TestOpen): a published test key, and
# the exact note Go's Sign produces with it (Ed25519 is deterministic, so ours must match).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_PETER_SIG = ("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
                "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
GO_ENOCH_SIG = ("— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01o"
                "OTGwnWLox33WWd1RvMc+QQ=\n")

# c2sp.org/signed-note §Verifier keys, its worked example.
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = ("This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6T"
             "fXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")

# A checkpoint published by the transparency.dev staging CT log arche2025h1 (public data):
# an RFC 6962 tree-head signature (type 0x05) and an Ed25519 note signature from the log,
# then cosignature/v1 lines from four public witnesses. The log's and remora.n621.de's
# verifier keys are published; the other witnesses' lines must simply be ignored.
REAL_CHECKPOINT = """arche2025h1.staging.ct.transparency.dev
1432088532
U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=

— arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=
— arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=
— transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==
— witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==
— remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==
— witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==
"""  # noqa: E501
LOG_VKEY = ("arche2025h1.staging.ct.transparency.dev+ba2f06c0+"
            "AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f")
WITNESS_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"


def _vkey(vkey: str) -> tuple[str, int, bytes]:
    parsed = cp.parse_verifier_key(vkey)
    assert parsed is not None, vkey
    return parsed


def test_go_note_signing_is_byte_identical() -> None:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])  # PRIVATE+KEY+name+id+key
    assert raw[0] == cp.SIG_ED25519
    key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    public = key.public_key().public_bytes_raw()
    assert cp.verifier_key("PeterNeumann", public) == GO_PETER_VKEY
    assert cp.sign_note(GO_TEXT, "PeterNeumann", key) == GO_TEXT + "\n" + GO_PETER_SIG


def test_go_note_with_two_signers_verifies_for_each() -> None:
    note = GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG
    for vkey in (GO_PETER_VKEY, GO_ENOCH_VKEY):
        name, _, public = _vkey(vkey)
        assert cp.verify_note(note, name, public)
    # Go's "invalid signature" case: four characters spliced into Peter's signature.
    spliced = GO_TEXT + "\n" + GO_PETER_SIG[:60] + "ABCD" + GO_PETER_SIG[60:]
    assert not cp.verify_note(spliced, *_vkey(GO_PETER_VKEY)[::2])


def test_c2sp_signed_note_example_verifies() -> None:
    name, sig_type, public = _vkey(C2SP_VKEY)
    assert sig_type == cp.SIG_ED25519
    assert cp.verify_note(C2SP_NOTE, name, public)
    assert not cp.verify_note(C2SP_NOTE.replace("example message", "example massage"), name,
                              public)


def test_real_log_checkpoint_and_witness_cosignature_verify() -> None:
    checkpoint = cp.parse_checkpoint(REAL_CHECKPOINT)
    assert checkpoint is not None
    assert (checkpoint.origin, checkpoint.size) == ("arche2025h1.staging.ct.transparency.dev",
                                                   1432088532)
    assert len(checkpoint.signatures) == 6
    assert REAL_CHECKPOINT.startswith(checkpoint.body + "\n—")

    log_name, log_type, log_key = _vkey(LOG_VKEY)
    witness_name, witness_type, witness_key = _vkey(WITNESS_VKEY)
    assert (log_type, witness_type) == (cp.SIG_ED25519, cp.SIG_COSIGNATURE_V1)
    assert cp.verify_note(REAL_CHECKPOINT, log_name, log_key)
    assert cp.verify_checkpoint(REAL_CHECKPOINT, log_name, log_key) == checkpoint
    assert cp.verify_cosignature(REAL_CHECKPOINT, witness_name, witness_key) == 1779573024
    # Each key verifies only under its own signature type.
    assert not cp.verify_note(REAL_CHECKPOINT, witness_name, witness_key)
    assert cp.verify_cosignature(REAL_CHECKPOINT, log_name, log_key) is None

    moved = REAL_CHECKPOINT.replace("1432088532", "1432088533")
    assert not cp.verify_note(moved, log_name, log_key)
    assert cp.verify_cosignature(moved, witness_name, witness_key) is None


# --- Round trips and tampering ------------------------------------------------------------

ORIGIN = "covey.example/mesh-ledger"
ROOT = merkle.root([merkle.leaf_hash(b"entry %d" % i) for i in range(5)])
ROOT_B64 = base64.b64encode(ROOT).decode()
URLSAFE_B64 = base64.urlsafe_b64encode(bytes([0xFF]) * 32).decode()  # '_' and '-', not '/' '+'


@pytest.fixture
def keeper() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def test_checkpoint_body_layout() -> None:
    body = cp.checkpoint_body(ORIGIN, 5, ROOT, ["ext one"])
    assert body == f"{ORIGIN}\n5\n{ROOT_B64}\next one\n"
    assert cp.checkpoint_body(ORIGIN, 0, merkle.EMPTY_ROOT) == (
        f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")


def test_signed_checkpoint_round_trip(keeper: Ed25519PrivateKey) -> None:
    note = cp.sign_note(cp.checkpoint_body(ORIGIN, 5, ROOT, ["a", "b"]), ORIGIN, keeper)
    parsed = cp.parse_checkpoint(note)
    assert parsed is not None
    assert (parsed.origin, parsed.size, parsed.root, parsed.extensions) == (
        ORIGIN, 5, ROOT, ("a", "b"))
    assert [s.name for s in parsed.signatures] == [ORIGIN]
    assert parsed.signatures[0].key_id == cp.key_id(ORIGIN, cp.SIG_ED25519, _public(keeper))
    assert cp.verify_note(note, ORIGIN, _public(keeper))
    assert cp.verify_note(note.encode(), ORIGIN, _public(keeper))
    assert cp.verify_checkpoint(note, ORIGIN, _public(keeper)) == parsed
    assert cp.parse_verifier_key(cp.verifier_key(ORIGIN, _public(keeper))) == (
        ORIGIN, cp.SIG_ED25519, _public(keeper))


def test_tampered_checkpoints_are_rejected(keeper: Ed25519PrivateKey) -> None:
    body = cp.checkpoint_body(ORIGIN, 5, ROOT)
    note = cp.sign_note(body, ORIGIN, keeper)
    other_root = base64.b64encode(merkle.leaf_hash(b"x")).decode()
    signature_b64 = note.rsplit(" ", 1)[1].strip()
    raw = bytearray(base64.b64decode(signature_b64))
    raw[10] ^= 1
    tampered = [
        note.replace(ORIGIN + "\n", "covey.example/other\n", 1),
        note.replace("\n5\n", "\n6\n", 1),
        note.replace(ROOT_B64, other_root),
        note.replace(signature_b64, base64.b64encode(bytes(raw)).decode()),
        note.replace("\n\n", "\next\n\n"),
    ]
    for text in tampered:
        assert not cp.verify_note(text, ORIGIN, _public(keeper)), text
    assert not cp.verify_note(note, ORIGIN, _public(Ed25519PrivateKey.generate()))
    assert not cp.verify_note(note, "covey.example/other", _public(keeper))


def test_unknown_signers_are_ignored_but_a_bad_known_line_fails(
        keeper: Ed25519PrivateKey) -> None:
    body = cp.checkpoint_body(ORIGIN, 5, ROOT)
    note = cp.sign_note(body, ORIGIN, keeper)
    stranger = cp.sign_note(body, "someone.else", Ed25519PrivateKey.generate())
    with_stranger = note + stranger.split("\n\n", 1)[1]
    assert cp.verify_note(with_stranger, ORIGIN, _public(keeper))
    # Same name, different key (so a different key ID): not this key's line, ignored.
    impostor = cp.sign_note(body, ORIGIN, Ed25519PrivateKey.generate())
    assert cp.verify_note(note + impostor.split("\n\n", 1)[1], ORIGIN, _public(keeper))
    # Same name and key ID but a bad signature: the whole note is refused.
    forged_line = f"— {ORIGIN} " + base64.b64encode(
        cp.key_id(ORIGIN, cp.SIG_ED25519, _public(keeper)) + bytes(64)).decode() + "\n"
    assert not cp.verify_note(note + forged_line, ORIGIN, _public(keeper))
    # Only other signers: not verified.
    assert not cp.verify_note(stranger, ORIGIN, _public(keeper))


def test_cosignature_round_trip_and_tampering(keeper: Ed25519PrivateKey) -> None:
    witness = Ed25519PrivateKey.generate()
    body = cp.checkpoint_body(ORIGIN, 5, ROOT, ["ext"])
    note = cp.sign_note(body, ORIGIN, keeper)
    line = cp.cosign(body, "witness.example/w1", witness, 1_700_000_000)
    cosigned = note + line
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == cp.key_id("witness.example/w1", cp.SIG_COSIGNATURE_V1, _public(witness))
    assert int.from_bytes(raw[4:12], "big") == 1_700_000_000 and len(raw) == 4 + 8 + 64
    # The signed message is exactly the spec's: two header lines, then the whole body.
    witness.public_key().verify(raw[12:], b"cosignature/v1\ntime 1700000000\n" + body.encode())

    assert cp.verify_cosignature(cosigned, "witness.example/w1", _public(witness)) == 1_700_000_000
    assert cp.verify_note(cosigned, ORIGIN, _public(keeper))  # the witness line is ignored
    assert cp.verify_cosignature(note, "witness.example/w1", _public(witness)) is None
    assert cp.verify_cosignature(cosigned, "witness.example/w1", _public(keeper)) is None
    assert cp.verify_cosignature(cosigned.replace("\next\n", "\nexu\n"), "witness.example/w1",
                                 _public(witness)) is None
    # A changed timestamp breaks the signature over "time <t>".
    moved = base64.b64encode(raw[:4] + (1_700_000_001).to_bytes(8, "big") + raw[12:]).decode()
    assert cp.verify_cosignature(note + f"— witness.example/w1 {moved}\n", "witness.example/w1",
                                 _public(witness)) is None
    # A plain Ed25519 note signature from the witness key is not a cosignature.
    plain = cp.sign_note(body, "witness.example/w1", witness).split("\n\n", 1)[1]
    assert cp.verify_cosignature(note + plain, "witness.example/w1", _public(witness)) is None


@pytest.mark.parametrize("call", [
    lambda k: cp.checkpoint_body("", 1, ROOT),
    lambda k: cp.checkpoint_body("a\nb", 1, ROOT),
    lambda k: cp.checkpoint_body(ORIGIN, -1, ROOT),
    lambda k: cp.checkpoint_body(ORIGIN, 2**64, ROOT),
    lambda k: cp.checkpoint_body(ORIGIN, 1, ROOT[:31]),
    lambda k: cp.checkpoint_body(ORIGIN, 1, ROOT, [""]),
    lambda k: cp.sign_note("no final newline", ORIGIN, k),
    lambda k: cp.sign_note("a\n", "has space", k),
    lambda k: cp.sign_note("a\n", "has+plus", k),
    lambda k: cp.sign_note("a\n", "", k),
    lambda k: cp.cosign("not\na checkpoint\n", "w", k, 1),
    lambda k: cp.cosign(cp.checkpoint_body(ORIGIN, 1, ROOT), "w", k, 2**63),
    lambda k: cp.cosign(cp.checkpoint_body(ORIGIN, 1, ROOT), "w", k, -1),
])
def test_builders_refuse_bad_arguments(call: Any, keeper: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError):
        call(keeper)


# --- Hostile text ------------------------------------------------------------------------

def _hostile_notes(good: str) -> list[Any]:
    body, sigs = good.split("\n\n", 1)
    body += "\n"  # the note text keeps its final newline
    return [
        "", "\n", "\n\n", good.rstrip("\n"), body, body + "\n", good + "trailing\n",
        good + "\n", good.replace("— ", "- "), good.replace("— ", "—"), good.replace("— ", "— \t"),
        good.replace(" ", "  ", 1), "\x01" + good, good.replace("\n", "\r\n"),
        good.replace("\n\n", "\n\n\n"),
        body.replace("\n5\n", "\n05\n") + "\n" + sigs,
        body.replace("\n5\n", "\n+5\n") + "\n" + sigs,
        body.replace("\n5\n", "\n٥\n") + "\n" + sigs,  # a non-ASCII digit
        body.replace("\n5\n", "\n18446744073709551616\n") + "\n" + sigs,
        body.replace("=\n", "\n") + "\n" + sigs,  # unpadded root
        body.replace("=\n", "=\n\n") + "\n" + sigs,  # an empty extension line
        body.replace("\n5\n", "\n") + "\n" + sigs,  # only two lines
        good[:-3] + "!=\n", good[:-3] + "\n", good[:-6] + "AAA==\n",
        good.rsplit(" ", 1)[0] + " AAAA\n",  # too short for key ID + signature
        good + sigs * cp.MAX_SIGNATURES,
        good + "— x " + "A" * cp.MAX_NOTE_BYTES + "\n",
        good.encode() + b"\xff", good.encode("utf-16"), "\ud800" + good,
        None, 12, ["a"],
    ]


def test_malformed_notes_are_rejected_without_exceptions(keeper: Ed25519PrivateKey) -> None:
    good = cp.sign_note(cp.checkpoint_body(ORIGIN, 5, ROOT), ORIGIN, keeper)
    public = _public(keeper)
    assert cp.verify_note(good, ORIGIN, public)
    for text in _hostile_notes(good):
        assert text != good
        assert cp.verify_note(text, ORIGIN, public) is False, repr(text)[:80]
        assert cp.verify_checkpoint(text, ORIGIN, public) is None, repr(text)[:80]
        assert cp.verify_cosignature(text, ORIGIN, public) is None, repr(text)[:80]
    for bad_key in (b"", public[:31], public + b"\0", "x" * 32, None):
        assert cp.verify_note(good, ORIGIN, bad_key) is False  # type: ignore[arg-type]
        assert cp.verify_cosignature(good, ORIGIN, bad_key) is None  # type: ignore[arg-type]
    for bad_name in ("", "a b", "a+b", None):
        assert cp.verify_note(good, bad_name, public) is False  # type: ignore[arg-type]


def test_signature_lines_must_name_valid_keys() -> None:
    body = cp.checkpoint_body(ORIGIN, 1, ROOT)
    sig = base64.b64encode(bytes(68)).decode()
    for name in ("a+b", "a\u00a0b", "a\u2003b", ""):
        assert cp.split_note(f"{body}\n— {name} {sig}\n") is None
    assert cp.split_note(f"{body}\n— ok {sig}\n") is not None


@pytest.mark.parametrize("vkey", [
    "", "name", "name+530d903a", GO_PETER_VKEY.replace("c74f20a3", "c74f20a4"),
    GO_PETER_VKEY.replace("PeterNeumann", "PeterNeuman"), GO_PETER_VKEY + "A",
    "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
    "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", None,
])
def test_bad_verifier_keys_are_refused(vkey: Any) -> None:
    assert cp.parse_verifier_key(vkey) is None


def test_verifier_key_id_is_read_in_either_case() -> None:
    assert cp.parse_verifier_key(C2SP_VKEY.replace("530d903a", "530D903A")) == _vkey(C2SP_VKEY)


@pytest.mark.parametrize("body", [
    f"{ORIGIN}\n05\n{ROOT_B64}\n",
    f"{ORIGIN}\n+5\n{ROOT_B64}\n",
    f"{ORIGIN}\n٥\n{ROOT_B64}\n",
    f"{ORIGIN}\n 5\n{ROOT_B64}\n",
    f"{ORIGIN}\n18446744073709551616\n{ROOT_B64}\n",
    f"{ORIGIN}\n5\n{ROOT_B64.rstrip('=')}\n",
    f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n",
    f"{ORIGIN}\n5\n{URLSAFE_B64}\n",
    f"{ORIGIN}\n5\n",
    f"\n5\n{ROOT_B64}\n",
    f"{ORIGIN}\n5\n{ROOT_B64}\n\next\n",
    "just some text\n",
])
def test_signed_notes_that_are_not_checkpoints(body: str, keeper: Ed25519PrivateKey) -> None:
    """The signature is fine, the body is not a checkpoint: parsing is exact."""
    note = cp.sign_note(body, ORIGIN, keeper)
    assert cp.parse_checkpoint(note) is None
    assert cp.verify_checkpoint(note, ORIGIN, _public(keeper)) is None
    if "\n\n" not in body:
        assert cp.verify_note(note, ORIGIN, _public(keeper))


def test_largest_tree_size_parses(keeper: Ed25519PrivateKey) -> None:
    body = cp.checkpoint_body(ORIGIN, cp.MAX_TREE_SIZE, ROOT)
    parsed = cp.verify_checkpoint(cp.sign_note(body, ORIGIN, keeper), ORIGIN, _public(keeper))
    assert parsed is not None and parsed.size == 2**64 - 1 and parsed.body == body


def test_random_corruptions_never_raise(keeper: Ed25519PrivateKey) -> None:
    rng = random.Random(2014)
    body = cp.checkpoint_body(ORIGIN, 5, ROOT, ["ext"])
    good = cp.sign_note(body, ORIGIN, keeper) + cp.cosign(body, "w", keeper, 1)
    alphabet = "\n \u2014+=/A0\x00\x7f\u00a0\ud800é5—"
    for _ in range(2000):
        chars = list(good)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                del chars[at]
            elif op == 1:
                chars.insert(at, rng.choice(alphabet))
            else:
                chars[at] = rng.choice(alphabet)
        text = "".join(chars)
        ok = cp.verify_note(text, ORIGIN, _public(keeper))
        assert isinstance(ok, bool)
        parsed = cp.parse_checkpoint(text)
        if ok and parsed is not None:
            # Whatever else changed, a verified note still says exactly what was signed.
            assert parsed.body == body
        cosigned = cp.verify_cosignature(text, "w", _public(keeper))
        assert cosigned is None or (cosigned == 1 and parsed is not None and parsed.body == body)
