"""Signed node records: every forgery, tamper, wrong mesh, stale and replayed record refused.

Property-style loops over many seeded random records (hypothesis is not a dependency)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh.records import (
    DOMAIN,
    MAX_ENVELOPE,
    NodeRecord,
    RecordRejected,
    RecordTable,
    new_record,
    next_seq,
    plausible,
    sign_record,
    verify_record,
)
from covey.mesh.sealed import SealError, b64d, b64e, canonical, seal

MESH = "mtestmesh0000000"
NOW = 1_800_000_000.0


def _anyone(node_id: str, key: bytes) -> bool:
    return True


def _record(key: Ed25519PrivateKey, seq: int = 1, rng: random.Random | None = None,
            **fields: object) -> NodeRecord:
    rng = rng or random.Random(0)
    models = [{"id": f"model-{rng.randrange(1000)}", "size_bytes": rng.randrange(1, 10**10),
               "slots": rng.randrange(1, 8), "queue_depth": rng.randrange(0, 4),
               "state": rng.choice(["ready", "starting", "failed"])}
              for _ in range(rng.randrange(0, 4))]
    base: dict[str, object] = {
        "name": f"node-{rng.randrange(100)}", "addresses": [f"10.0.0.{rng.randrange(255)}:7070"],
        "models": models, "software_version": "0.1.0",
        "metrics": {m["id"]: {"tokens_per_s_p50": rng.random() * 100, "samples": 3}
                    for m in models},
    }
    base.update(fields)
    return new_record(key, mesh_id=MESH, seq=seq, now=NOW, ttl_s=60, **base)


def _verify(envelope: bytes, **kw: object) -> NodeRecord:
    args: dict[str, object] = {"mesh_id": MESH, "is_member": _anyone, "now": NOW + 1}
    args.update(kw)
    return verify_record(envelope, **args)  # type: ignore[arg-type]


def _reason(envelope: bytes, **kw: object) -> str:
    with pytest.raises(RecordRejected) as info:
        _verify(envelope, **kw)
    return info.value.reason


def test_round_trip_over_many_random_records() -> None:
    rng = random.Random(1)
    for i in range(50):
        key = Ed25519PrivateKey.generate()
        record = _record(key, seq=i + 1, rng=rng)
        assert _verify(sign_record(record, key)) == record


def test_every_tampered_byte_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = json.loads(sign_record(_record(key), key))
    body = bytearray(b64d(envelope["body"]))
    rng = random.Random(2)
    for pos in rng.sample(range(len(body)), min(300, len(body))):
        forged = bytearray(body)
        forged[pos] ^= 1 << rng.randrange(8)
        tampered = canonical({"body": b64e(bytes(forged)), "sig": envelope["sig"]})
        assert _reason(tampered) in {"bad_signature", "malformed"}


def test_a_field_rewritten_and_resigned_by_another_key_is_refused() -> None:
    victim, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    record = _record(victim)
    forged = record.model_copy(update={"public_key": b64e(
        forger.public_key().public_bytes_raw())})
    assert _reason(sign_record(forged, forger)) == "wrong_key"


@pytest.mark.parametrize(("kw", "reason"), [
    ({"mesh_id": "mothermesh000000"}, "wrong_mesh"),
    ({"is_member": lambda node_id, key: False}, "not_member"),
    ({"now": NOW + 61}, "expired"),
    ({"now": NOW - 1000}, "future"),
])
def test_verifier_context(kw: dict[str, object], reason: str) -> None:
    key = Ed25519PrivateKey.generate()
    assert _reason(sign_record(_record(key), key), **kw) == reason


def test_too_long_lived_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    record = _record(key).model_copy(update={"expires_at": NOW + 10 * 24 * 3600})
    assert _reason(sign_record(record, key)) == "too_long_lived"


@pytest.mark.parametrize("envelope", [
    b"", b"{", b"[]", b'{"body": "!!!", "sig": ""}', b'{"body": "e30", "sig": "AA"}',
    b"[" * 100_000, b"x" * (MAX_ENVELOPE + 1),
    canonical({"body": b64e(b"[" * 5000 + b"]" * 5000), "sig": "AA"}),
])
def test_garbage_is_refused(envelope: bytes) -> None:
    assert _reason(envelope) in {"malformed", "oversize", "bad_signature"}


def test_unknown_fields_are_ignored_but_signed() -> None:
    key = Ed25519PrivateKey.generate()
    record = _record(key)
    from covey.mesh.sealed import seal

    body = {**record.model_dump(mode="json"), "from_the_future": {"x": 1}}
    assert _verify(seal(b"covey-record-v1", body, key)) == record


def test_table_keeps_the_newest_and_refuses_replays() -> None:
    key = Ed25519PrivateKey.generate()
    table = RecordTable()
    old, new = _record(key, seq=5), _record(key, seq=6)
    old_env, new_env = sign_record(old, key), sign_record(new, key)
    table.apply(_verify(old_env), old_env)
    table.apply(_verify(new_env), new_env)
    for replay in (old_env, new_env):
        with pytest.raises(RecordRejected) as info:
            table.apply(_verify(replay), replay)
        assert info.value.reason == "stale"
    held = table.get(new.node_id)
    assert held is not None and held.envelope == new_env
    assert table.digest() == {new.node_id: 6}
    assert table.expire(NOW + 30) == [] and table.expire(NOW + 61) == [new.node_id]
    assert len(table) == 0


def test_sequence_numbers_grow_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    first = next_seq(path, now=NOW)
    assert next_seq(path, now=NOW) == first + 1
    assert next_seq(path, now=NOW - 3600) == first + 2  # the clock stepped back
    path.unlink()
    assert next_seq(path, now=NOW + 1) > first + 2  # the file was lost; the clock moved on


def test_nan_or_infinite_times_are_refused() -> None:
    """json reads NaN; a NaN expiry would compare False with everything and never expire."""
    key = Ed25519PrivateKey.generate()
    for bad in (float("nan"), float("inf")):
        body = {**_record(key).model_dump(mode="json"), "expires_at": bad}
        raw = json.dumps(body).encode()  # json.dumps writes NaN / Infinity
        sig = key.sign(b"covey-record-v1\x00" + raw)
        assert _reason(canonical({"body": b64e(raw), "sig": b64e(sig)})) == "malformed"


@pytest.mark.parametrize("address", ["evil host:1", "10.0.0.1:99999", "x" * 300, "[::1:7070"])
def test_a_record_with_a_bad_address_is_malformed(address: str) -> None:
    # The signer is honest about its key but lies in a field: refused as a whole.
    key = Ed25519PrivateKey.generate()
    record = _record(key).model_copy(update={"addresses": [address]})
    assert _reason(sign_record(record, key)) == "malformed"


@pytest.mark.parametrize("fields", [
    {"metrics": {"m": {"tokens_per_s_p50": 1e300}}},
    {"metrics": {"m": {"tokens_per_s_p50": -1.0}}},
    {"metrics": {"m": {"ttft_ms_p50": 1e12}}},
    {"metrics": {"m": {"samples": 10**30}}},
    {"metrics": {"k" * 10_000: {}}},
    {"baseline": {"m": 1e300}},
    {"baseline": {"m": 0.0}},
    {"baseline": {"m": -5.0}},
    {"baseline": {"k" * 10_000: 5.0}},
    {"hardware": {"ram_bytes": 2**62}},
    {"hardware": {"gpu_bytes": 10**40}},
    {"models": [{"id": "m", "size_bytes": 2**70}]},
    {"models": [{"id": "m", "context": 10**12}]},
    {"models": [{"id": "k" * 10_000}]},
])
def test_implausible_figures_make_a_record_malformed(fields: dict[str, object]) -> None:
    # Each of these was accepted before the caps: one absurd tokens/s would win every route.
    key = Ed25519PrivateKey.generate()
    body = _record(key).model_dump(mode="json")
    body.update(fields)
    envelope = seal_raw(body, key)
    assert _reason(envelope) == "malformed"


def seal_raw(body: dict[str, object], key: Ed25519PrivateKey) -> bytes:
    """Signed like a record, but without the model's own checks (what a hostile peer sends)."""
    return seal(DOMAIN, body, key)


def test_plausible_figures_pass() -> None:
    key = Ed25519PrivateKey.generate()
    record = _record(key, metrics={"m": {"tokens_per_s_p50": 5e5, "ttft_ms_p50": 3.6e6,
                                         "samples": 10}},
                     baseline={"m": 0.5}, hardware={"ram_bytes": 2**40})
    assert _verify(sign_record(record, key)) == record


def test_plausible() -> None:
    assert plausible(None, 10) is None
    assert plausible(5.0, 10) == 5.0
    assert plausible(11.0, 10) is None
    assert plausible(-1.0, 10) is None
    assert plausible(0.0, 10) == 0.0
    assert plausible(0.0, 10, positive=True) is None


@pytest.mark.parametrize("text", [
    "a_8", "a/8",   # "/" is the standard alphabet's "_": same bits, other spelling
    "-w", "+w",     # likewise "+" for "-"
    "AB", "AAA=",   # padding bits set; padding written out
    "A", "a b",     # no byte string has that length; a space
])
def test_b64d_reads_only_what_b64e_writes(text: str) -> None:
    canonical_forms = {"a_8", "-w"}
    if text in canonical_forms:
        assert b64e(b64d(text)) == text
    else:
        with pytest.raises(SealError):
            b64d(text)


def test_a_damaged_sequence_file_is_written_over(tmp_path: Path) -> None:
    """The file is written in place: what was longer than a number written here goes."""
    path = tmp_path / "seq"
    path.write_text("garbage " * 20)
    first = next_seq(path, now=NOW)
    assert first == int(NOW * 1000) and path.read_text() == f"{first:020d}\n"
    path.write_text("1234")  # an older node's file: no padding, no newline
    assert next_seq(path, now=1.0) == 1235  # read, then written over in place
    assert int(path.read_text()) == 1235
