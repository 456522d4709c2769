"""Receipts and credits: signing, countersigning, every forgery refused, hostile input bounded.

Property-style loops over seeded random receipts (hypothesis is not a dependency)."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from covey.ledger.credits import (
    MAX_CREDITS,
    MAX_TOKENS,
    MAX_WEIGHT,
    credits,
    parameters_from_size_label,
    weight_for,
)
from covey.ledger.receipts import (
    MAX_WIRE_BYTES,
    Observed,
    Receipt,
    ReceiptRejected,
    SignedReceipt,
    check_counts,
    consumer_countersign,
    new_receipt,
    new_request_id,
    provider_sign,
    verify,
)
from covey.mesh.identity import node_id_for
from covey.mesh.sealed import b64d, b64e, public_bytes

MESH = "mtestmesh0000000"
T0 = 1_800_000_000.0


def _node(key: Ed25519PrivateKey) -> str:
    return node_id_for(public_bytes(key))


def _pub(key: Ed25519PrivateKey) -> str:
    return b64e(public_bytes(key))


PROVIDER, CONSUMER, OTHER = (Ed25519PrivateKey.generate() for _ in range(3))


def _receipt(prompt: int = 12, completion: int = 100, *, request_id: str | None = None,
             parameters_b: float | None = 0.27, **fields: object) -> Receipt:
    values: dict[str, object] = dict(
        mesh_id=MESH, request_id=request_id or new_request_id(), model_id="gemma-3-270m",
        model_sha256="ab" * 32, consumer=_node(CONSUMER), provider=_node(PROVIDER),
        prompt_tokens=prompt, completion_tokens=completion, parameters_b=parameters_b,
        started_at=T0, ended_at=T0 + 1.5)
    values.update(fields)
    return new_receipt(**values)  # type: ignore[arg-type]


def _confirmed(receipt: Receipt) -> SignedReceipt:
    signed = provider_sign(receipt, PROVIDER)
    seen = Observed.from_usage(receipt.request_id, receipt.model_id, receipt.prompt_tokens,
                               receipt.completion_tokens)
    return consumer_countersign(signed, CONSUMER, seen, _pub(PROVIDER))


# -- credits ---------------------------------------------------------------------------

@pytest.mark.parametrize(("label", "billions"), [
    ("270M", 0.27), ("1.7B", 1.7), ("8x7B", 56.0), ("135m", 0.135), ("1T", 1000.0),
    ("7b", 7.0), (" 3B ", 3.0), ("", None), ("big", None), ("7", None), ("-1B", None),
    ("1e9B", None), (None, None), ("0B", None)])
def test_size_labels(label: str | None, billions: float | None) -> None:
    got = parameters_from_size_label(label)
    assert got == billions if billions is None else math.isclose(got or 0, billions)


def test_credit_unit() -> None:
    # The documented unit: 1,000 completion tokens of a 1B model is one credit.
    assert credits(0, 1000, 1.0) == 1.0
    assert credits(4000, 0, 1.0) == 1.0  # a prompt token is a quarter
    assert credits(0, 1000, 7.0) == 7.0
    assert credits(0, 1000, 0.01) == 0.1  # weights floor at 0.1
    assert credits(0, 1000, None) == 1.0  # unknown size weighs 1
    assert credits(0, 1000, 1e9) == 1000 * MAX_WEIGHT / 1000
    assert credits(MAX_TOKENS, MAX_TOKENS, MAX_WEIGHT) == MAX_CREDITS
    assert weight_for(float("nan")) == 1.0
    with pytest.raises(ValueError):
        credits(-1, 0, 1.0)
    with pytest.raises(ValueError):
        credits(0, MAX_TOKENS + 1, 1.0)


def test_credits_are_stable_under_reweighting() -> None:
    # A receipt stores the weight; recomputing from it must give the same figure.
    rng = random.Random(7)
    for _ in range(500):
        p, c = rng.randrange(0, 10**6), rng.randrange(0, 10**6)
        w = weight_for(rng.uniform(0, 3000))
        assert weight_for(w) == w
        assert credits(p, c, w) == credits(p, c, weight_for(w))


# -- signing and verifying ---------------------------------------------------------------

def test_sign_countersign_verify() -> None:
    receipt = _receipt()
    signed = provider_sign(receipt, PROVIDER)
    assert verify(signed, _pub(PROVIDER)) == "unconfirmed"
    assert verify(signed, _pub(PROVIDER), _pub(CONSUMER)) == "unconfirmed"  # no countersig
    both = _confirmed(receipt)
    assert verify(both, _pub(PROVIDER), _pub(CONSUMER)) == "confirmed"
    assert verify(both, public_bytes(PROVIDER), public_bytes(CONSUMER)) == "confirmed"
    # Without the consumer's key the countersignature cannot be checked: not confirmed.
    assert verify(both, _pub(PROVIDER)) == "unconfirmed"
    # The wire form survives a round trip, signatures included.
    again = SignedReceipt.from_wire(both.to_wire())
    assert again == both
    assert verify(again, _pub(PROVIDER), _pub(CONSUMER)) == "confirmed"


def test_request_ids_are_128_random_bits() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_only_the_named_nodes_can_sign() -> None:
    receipt = _receipt()
    with pytest.raises(ReceiptRejected) as exc:
        provider_sign(receipt, OTHER)
    assert exc.value.reason == "not_provider"
    signed = provider_sign(receipt, PROVIDER)
    seen = Observed.from_usage(receipt.request_id, receipt.model_id, 12, 100)
    with pytest.raises(ReceiptRejected) as exc:
        consumer_countersign(signed, OTHER, seen, _pub(PROVIDER))
    assert exc.value.reason == "not_consumer"


def test_forged_receipts_refused() -> None:
    both = _confirmed(_receipt())
    wire = json.loads(both.to_wire())

    def reload(mutate: dict[str, object]) -> SignedReceipt:
        w = json.loads(json.dumps(wire))
        w["receipt"].update(mutate)
        return SignedReceipt.model_validate(w)

    # Tokens raised after signing (credits recomputed so the receipt itself is consistent).
    inflated = reload({"completion_tokens": 1000, "credits": credits(12, 1000, 0.27)})
    with pytest.raises(ReceiptRejected) as exc:
        verify(inflated, _pub(PROVIDER), _pub(CONSUMER))
    assert exc.value.reason == "bad_signature"
    # The wrong provider key: refused as not the named node's, before any signature check.
    with pytest.raises(ReceiptRejected) as exc:
        verify(both, _pub(OTHER), _pub(CONSUMER))
    assert exc.value.reason == "wrong_key"
    with pytest.raises(ReceiptRejected) as exc:
        verify(both, _pub(PROVIDER), _pub(OTHER))
    assert exc.value.reason == "wrong_key"
    # A signature by another key, or flipped bits.
    sig = bytearray(b64d(both.provider_sig))
    sig[0] ^= 1
    with pytest.raises(ReceiptRejected) as exc:
        verify(both.model_copy(update={"provider_sig": b64e(bytes(sig))}), _pub(PROVIDER))
    assert exc.value.reason == "bad_signature"
    forged_consumer = both.model_copy(update={"consumer_sig": b64e(OTHER.sign(b"x"))})
    with pytest.raises(ReceiptRejected) as exc:
        verify(forged_consumer, _pub(PROVIDER), _pub(CONSUMER))
    assert exc.value.reason == "bad_consumer_signature"
    # The provider's signature moved onto a different receipt.
    other = provider_sign(_receipt(), PROVIDER)
    with pytest.raises(ReceiptRejected):
        verify(other.model_copy(update={"provider_sig": both.provider_sig}), _pub(PROVIDER))
    # The provider's signature used as the consumer's (domain separation).
    with pytest.raises(ReceiptRejected):
        verify(both.model_copy(update={"consumer_sig": both.provider_sig}), _pub(PROVIDER),
               _pub(CONSUMER))
    # Garbage keys and signatures are refusals, not crashes.
    for bad_key in ("", "!!", b64e(b"short"), "A" * 64):
        with pytest.raises(ReceiptRejected):
            verify(both, bad_key)
    with pytest.raises(ReceiptRejected):
        verify(both.model_copy(update={"provider_sig": "***"}), _pub(PROVIDER))


def test_another_mesh_breaks_the_signature() -> None:
    both = _confirmed(_receipt())
    w = json.loads(both.to_wire())
    w["receipt"]["mesh_id"] = "mothermesh000000"
    with pytest.raises(ReceiptRejected):
        verify(SignedReceipt.model_validate(w), _pub(PROVIDER), _pub(CONSUMER))


def test_random_bit_flips_never_verify() -> None:
    rng = random.Random(3)
    both = _confirmed(_receipt())
    wire = both.to_wire()
    for _ in range(300):
        raw = bytearray(wire)
        i = rng.randrange(len(raw))
        raw[i] = rng.randrange(32, 127)
        if bytes(raw) == wire:
            continue
        try:
            parsed = SignedReceipt.from_wire(bytes(raw))
        except ReceiptRejected as exc:
            assert exc.reason == "malformed"
            continue
        if parsed == both:  # a flip in a spelling that parses to the same receipt
            continue
        # Refused, or (a flip in the "consumer_sig" key drops the countersignature, which
        # anyone can strip) downgraded: never confirmed.
        with contextlib.suppress(ReceiptRejected):
            assert verify(parsed, _pub(PROVIDER), _pub(CONSUMER)) == "unconfirmed"


# -- countersign count checks -------------------------------------------------------------

@pytest.mark.parametrize(("claim", "seen", "ok"), [
    # With usage relayed: exact on both counts.
    ((12, 100), Observed.from_usage("r", "m", 12, 100), True),
    ((12, 101), Observed.from_usage("r", "m", 12, 100), False),
    ((13, 100), Observed.from_usage("r", "m", 12, 100), False),
    ((12, 99), Observed.from_usage("r", "m", 12, 100), False),
    # Counted: ±max(1, 2 %) on completion; the prompt under the consumer's ceiling.
    ((12, 101), Observed.counted("r", "m", 100, 50), True),
    ((12, 102), Observed.counted("r", "m", 100, 50), True),
    ((12, 103), Observed.counted("r", "m", 100, 50), False),
    ((12, 1), Observed.counted("r", "m", 0, 50), True),
    ((12, 2), Observed.counted("r", "m", 0, 50), False),
    ((12, 980), Observed.counted("r", "m", 1000, 50), True),
    ((12, 979), Observed.counted("r", "m", 1000, 50), False),
    ((50, 100), Observed.counted("r", "m", 100, 50), True),
    ((51, 100), Observed.counted("r", "m", 100, 50), False),
])
def test_count_tolerance(claim: tuple[int, int], seen: Observed, ok: bool) -> None:
    receipt = _receipt(*claim)
    if ok:
        check_counts(receipt, seen)
    else:
        with pytest.raises(ReceiptRejected) as exc:
            check_counts(receipt, seen)
        assert exc.value.reason == "count_mismatch"


def test_countersign_refuses_inflated_counts_and_other_requests() -> None:
    receipt = _receipt(12, 150)
    signed = provider_sign(receipt, PROVIDER)
    with pytest.raises(ReceiptRejected, match="150") as exc:
        consumer_countersign(signed, CONSUMER, Observed.from_usage(
            receipt.request_id, receipt.model_id, 12, 100), _pub(PROVIDER))
    assert exc.value.reason == "count_mismatch"
    for request_id, model_id in ((new_request_id(), receipt.model_id),
                                 (receipt.request_id, "other-model")):
        with pytest.raises(ReceiptRejected) as exc:
            consumer_countersign(signed, CONSUMER, Observed.from_usage(
                request_id, model_id, 12, 150), _pub(PROVIDER))
        assert exc.value.reason == "mismatch"
    # Never countersign what the provider did not sign.
    forged = signed.model_copy(update={"provider_sig": b64e(OTHER.sign(b"x"))})
    with pytest.raises(ReceiptRejected) as exc:
        consumer_countersign(forged, CONSUMER, Observed.from_usage(
            receipt.request_id, receipt.model_id, 12, 150), _pub(PROVIDER))
    assert exc.value.reason == "bad_signature"


# -- hostile input ----------------------------------------------------------------------

@pytest.mark.parametrize("field", [
    {"request_id": "g" * 32}, {"request_id": "AB" * 16}, {"request_id": "ab" * 17},
    {"model_id": ""}, {"model_id": "m" * 257}, {"model_sha256": "xy" * 32},
    {"consumer": ""}, {"provider": "p" * 257}, {"prompt_tokens": -1},
    {"completion_tokens": MAX_TOKENS + 1}, {"credits": float("nan")},
    {"credits": float("inf")}, {"credits": -1.0}, {"credits": 1.0},  # not what counts give
    {"weight": 0.0}, {"weight": MAX_WEIGHT * 2}, {"started_at": float("nan")},
    {"ended_at": T0 - 1}, {"started_at": -5.0}, {"ended_at": 1e300},
    {"consumer": "same", "provider": "same"}, {"protocol": 0}])
def test_invalid_receipts_refused(field: dict[str, object]) -> None:
    body = _receipt().model_dump(mode="json")
    body.update(field)
    with pytest.raises(ValidationError):
        Receipt.model_validate(body)


def test_wire_bounds() -> None:
    with pytest.raises(ReceiptRejected) as exc:
        SignedReceipt.from_wire(b" " * (MAX_WIRE_BYTES + 1))
    assert exc.value.reason == "oversize"
    for raw in (b"", b"[]", b"{", b'{"receipt": 1}', b"[" * 3000 + b"]" * 3000,
                b'{"receipt": {}, "provider_sig": "x"}', "\udcff".encode(errors="surrogatepass")):
        with pytest.raises(ReceiptRejected) as exc:
            SignedReceipt.from_wire(raw)
        assert exc.value.reason == "malformed"
    # NaN and Infinity are valid to Python's json module; the model must still refuse them.
    both = json.loads(_confirmed(_receipt()).to_wire())
    both["receipt"]["started_at"] = float("nan")
    with pytest.raises(ReceiptRejected):
        SignedReceipt.from_wire(json.dumps(both).encode())
    # Unknown fields are ignored (and do not ride along under the signature).
    both = json.loads(_confirmed(_receipt()).to_wire())
    both["receipt"]["extra"] = "x"
    both["future"] = 1
    parsed = SignedReceipt.from_wire(json.dumps(both).encode())
    assert b"extra" not in parsed.to_wire()
    assert verify(parsed, _pub(PROVIDER), _pub(CONSUMER)) == "confirmed"


def test_attached_backend_has_no_sha_and_unit_weight() -> None:
    receipt = _receipt(0, 2000, parameters_b=None, model_sha256=None)
    assert receipt.model_sha256 is None and receipt.weight == 1.0 and receipt.credits == 2.0
    assert verify(_confirmed(receipt), _pub(PROVIDER), _pub(CONSUMER)) == "confirmed"


def test_seeded_random_receipts_round_trip() -> None:
    rng = random.Random(11)
    for _ in range(100):
        start = rng.uniform(0, 4e9)
        receipt = _receipt(rng.randrange(0, MAX_TOKENS + 1), rng.randrange(0, MAX_TOKENS + 1),
                           parameters_b=rng.choice([None, rng.uniform(0, 5000)]),
                           started_at=start, ended_at=start + rng.uniform(0, 3600))
        both = SignedReceipt.from_wire(_confirmed(receipt).to_wire())
        assert both.receipt == receipt
        assert verify(both, _pub(PROVIDER), _pub(CONSUMER)) == "confirmed"


def test_a_signature_spelt_another_way_is_refused() -> None:
    """Base64 has other spellings of the same bytes: "/" and "+" read as "_" and "-", and a
    64-byte signature's last character carries 4 padding bits. Only the canonical spelling
    verifies; otherwise anyone could mint a receipt that differs from the signed one and still
    reads as confirmed (CI found the "_" to "/" case with a random flip)."""
    both = _confirmed(_receipt())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for field in ("provider_sig", "consumer_sig"):
        sig = getattr(both, field)
        last = alphabet.index(sig[-1])
        twins = [sig[:-1] + c for c in alphabet
                 if c != sig[-1] and alphabet.index(c) >> 4 == last >> 4]  # same 2 data bits
        twins += [sig.replace(a, b, 1) for a, b in (("_", "/"), ("-", "+")) if a in sig]
        assert twins and all(_b64decode_lax(t) == b64d(sig) for t in twins)
        for twin in twins:
            with pytest.raises(ReceiptRejected):
                verify(both.model_copy(update={field: twin}), _pub(PROVIDER), _pub(CONSUMER))


def _b64decode_lax(text: str) -> bytes:
    """Any base64 spelling, the way a lax decoder reads it."""
    return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))


def test_a_signature_checked_or_made_here_is_not_verified_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One mesh request's receipt is checked at countersigning and again by each node's
    ledger: each node verifies only the other's signature, once. A tampered receipt is still
    verified for real, and a failed check is never remembered."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from covey.ledger import receipts

    real = ed25519.Ed25519PublicKey.from_public_bytes
    checks: list[bytes] = []

    def counting(data: bytes) -> ed25519.Ed25519PublicKey:
        checks.append(data)
        return real(data)

    monkeypatch.setattr(receipts.Ed25519PublicKey, "from_public_bytes", counting)
    monkeypatch.setattr(receipts, "_PASSED", receipts.OrderedDict())
    receipt = _receipt()
    # The provider: its own signature needs no check of its own.
    signed = provider_sign(receipt, PROVIDER)
    assert verify(signed, _pub(PROVIDER)) == "unconfirmed" and checks == []
    # The consumer (its own process in a mesh: it knows nothing the provider checked).
    receipts._PASSED.clear()
    seen = Observed.from_usage(receipt.request_id, receipt.model_id, receipt.prompt_tokens,
                               receipt.completion_tokens)
    both = consumer_countersign(SignedReceipt.from_wire(signed.to_wire()), CONSUMER, seen,
                                _pub(PROVIDER))
    assert checks == [public_bytes(PROVIDER)]  # the provider's, once
    assert verify(both, _pub(PROVIDER), _pub(CONSUMER)) == "confirmed"  # as its ledger does
    assert checks == [public_bytes(PROVIDER)]
    # Back at the provider: the consumer's signature is checked, once.
    receipts._PASSED.clear()
    receipts._passed(public_bytes(PROVIDER), signed.provider_sig,
                     receipts.PROVIDER_DOMAIN + b"\x00" + receipt.signing_bytes())
    back = SignedReceipt.from_wire(both.to_wire())
    checks.clear()
    for _ in range(2):
        assert verify(back, _pub(PROVIDER), _pub(CONSUMER)) == "confirmed"
    assert checks == [public_bytes(CONSUMER)]
    # Tampered after both checks passed: the message differs, so it is verified and refused.
    w = json.loads(both.to_wire())
    w["receipt"].update(completion_tokens=1000, credits=credits(12, 1000, 0.27))
    with pytest.raises(ReceiptRejected) as exc:
        verify(SignedReceipt.model_validate(w), _pub(PROVIDER), _pub(CONSUMER))
    assert exc.value.reason == "bad_signature"
    # A failure is not remembered: the same forgery is checked (and refused) every time.
    forged = back.model_copy(update={"consumer_sig": b64e(OTHER.sign(b"x"))})
    checks.clear()
    for _ in range(2):
        with pytest.raises(ReceiptRejected):
            verify(forged, _pub(PROVIDER), _pub(CONSUMER))
    assert checks == [public_bytes(CONSUMER)] * 2
    # Bounded: the oldest are forgotten first.
    for i in range(receipts._PASSED_MAX + 5):
        receipts._passed(b"k" * 32, str(i), b"m")
    assert len(receipts._PASSED) == receipts._PASSED_MAX
    assert (b"k" * 32, "0", b"m") not in receipts._PASSED
