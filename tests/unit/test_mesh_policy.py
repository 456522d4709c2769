"""mesh/policy.py: the creator's tier policy, signed with the authority key, carried in every
record; members verify it, keep the newest, and may only tighten it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh import identity
from covey.mesh.membership import Authority, create_authority, issue_cert
from covey.mesh.peer_api import MAX_BODY as MAX_PEER_BODY
from covey.mesh.policy import (
    MAX_ENVELOPE,
    MAX_WIRE,
    POLICY_DOMAIN,
    MeshPolicy,
    PolicyRefused,
    seal_policy,
    verify_policy,
)
from covey.mesh.records import MAX_ENVELOPE as MAX_RECORD
from covey.mesh.records import NodeRecord
from covey.mesh.sealed import b64d, b64e, seal
from covey.mesh.state import MeshState
from covey.router.tiers import (
    CAPACITY,
    DAILY,
    EXPERIMENTAL,
    MAX_PATTERN,
    MAX_RULES,
    MAX_RULES_TEXT,
    PolicyError,
    Targets,
    TierPolicy,
)

NOW = 1_800_000_000.0
MESH_RULES = (("qwen*-72b*", CAPACITY), ("gemma-*", DAILY))


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return create_authority(tmp_path)


def _member(authority: Authority) -> MeshPolicy:
    return MeshPolicy(TierPolicy(), mesh_id=authority.mesh_id,
                      authority_public_key=authority.public_key)


def _policy(rules: tuple[tuple[str, str], ...] = MESH_RULES, **targets: Targets) -> TierPolicy:
    return TierPolicy(rules=rules, targets=targets or TierPolicy().targets)


def test_round_trip(authority: Authority) -> None:
    policy = _policy(**{DAILY: Targets(2.0, 10.0), CAPACITY: Targets(20.0, 0.5),
                        EXPERIMENTAL: Targets(None, None)})
    signed, back = verify_policy(seal_policy(authority, policy, 7, NOW),
                                 mesh_id=authority.mesh_id,
                                 authority_public_key=authority.public_key)
    assert (signed.seq, signed.issued_at) == (7, NOW)
    assert back == policy


def test_refusals(authority: Authority) -> None:
    kw = {"mesh_id": authority.mesh_id, "authority_public_key": authority.public_key}
    forger = Authority(Ed25519PrivateKey.generate())
    forged = seal_policy(forger, _policy(), 1, NOW)
    with pytest.raises(PolicyRefused) as refused:
        verify_policy(forged, **kw)  # type: ignore[arg-type]
    assert refused.value.reason == "bad_signature"
    # Signed by this mesh's key but naming another mesh: not ours to follow.
    other = seal(POLICY_DOMAIN, {"mesh_id": "mother", "seq": 1, "issued_at": NOW,
                                 "rules": [], "targets": {}}, authority.key)
    with pytest.raises(PolicyRefused) as refused:
        verify_policy(other, **kw)  # type: ignore[arg-type]
    assert refused.value.reason == "wrong_mesh"
    bad_bodies = [
        {"rules": [f"m{i}=capacity" for i in range(MAX_RULES + 1)]},  # too many rules
        {"rules": ["x" * (MAX_PATTERN + 40) + "=capacity"]},  # a rule too long
        {"rules": ["gemma=fast"]},  # no such tier
        {"targets": {DAILY: {"ttft_s": 0, "tokens_per_s": 8}}},  # not positive
        {"targets": {DAILY: {"ttft_s": 3, "tokens_per_s": 1e300}}},  # past the cap
    ]
    for extra in bad_bodies:
        body = {"mesh_id": authority.mesh_id, "seq": 1, "issued_at": NOW, "rules": [],
                "targets": {}, **extra}
        with pytest.raises(PolicyRefused):
            verify_policy(seal(POLICY_DOMAIN, body, authority.key), **kw)  # type: ignore[arg-type]
    with pytest.raises(PolicyRefused) as refused:
        verify_policy(b"{" + b" " * MAX_ENVELOPE + b"}", **kw)  # type: ignore[arg-type]
    assert refused.value.reason == "oversize"
    # A revocation list or any other envelope signed by the same key is not a policy.
    revocation_like = seal(b"covey-revocations-v1", {"mesh_id": authority.mesh_id, "seq": 2,
                                                     "issued_at": NOW}, authority.key)
    with pytest.raises(PolicyRefused):
        verify_policy(revocation_like, **kw)  # type: ignore[arg-type]


def test_the_largest_policy_fits_a_gossip_exchange(tmp_path: Path) -> None:
    """Rules up to MAX_RULES_TEXT characters, the most a policy may hold: the envelope fits
    its cap and the record field, and 32 records carrying it (one gossip exchange) stay
    under the peer body cap."""
    each = MAX_PATTERN - 1 + len("=capacity")
    rules = tuple((f"{i:03d}" + "x" * (MAX_PATTERN - 5) + "*", CAPACITY)
                  for i in range(MAX_RULES_TEXT // each))
    a = MeshState.load_or_create(tmp_path, identity.load_or_create(tmp_path), time.time())
    assert a.authority is not None
    a.policy = MeshPolicy.issue(_policy(rules), a.authority, tmp_path, time.time())
    envelope = b64d(a.policy.wire())
    assert len(envelope) <= MAX_ENVELOPE
    assert len(a.policy.wire()) <= MAX_WIRE
    assert NodeRecord.model_fields["tier_policy"].metadata[0].max_length == MAX_WIRE
    record = a.publish(time.time())
    assert len(record) < MAX_RECORD and 32 * len(record) < MAX_PEER_BODY // 2
    with pytest.raises(PolicyError):  # one rule more is over the total
        _policy((*rules, ("y" * (MAX_PATTERN - 1) + "*", DAILY)))


def test_newest_wins_and_a_bad_one_is_logged_once(
        authority: Authority, caplog: pytest.LogCaptureFixture) -> None:
    member = _member(authority)
    old = seal_policy(authority, _policy((("gemma-*", CAPACITY),)), 1, NOW)
    new = seal_policy(authority, _policy((("gemma-*", DAILY),)), 2, NOW + 1)
    assert member.current().tier("gemma-3") == EXPERIMENTAL  # its own, until it hears one
    assert member.learn(new) and member.current().tier("gemma-3") == DAILY
    assert not member.learn(old), "an older policy never replaces a newer one"
    assert member.current().tier("gemma-3") == DAILY and member.wire() == b64e(new)
    forged = seal_policy(Authority(Ed25519PrivateKey.generate()), _policy(), 9, NOW)
    with caplog.at_level(logging.WARNING, logger="covey.mesh.policy"):
        for _ in range(3):
            assert not member.learn(forged)
        assert not member.learn(forged.replace(b'"sig":"', b'"sig":"A'))
    assert len(caplog.records) == 1 and "bad_signature" in caplog.text
    assert member.current().tier("gemma-3") == DAILY


def test_a_member_only_tightens(authority: Authority) -> None:
    mine = TierPolicy(rules=(("qwen*-72b*", EXPERIMENTAL), ("gemma-*", CAPACITY)),
                      targets={DAILY: Targets(3.0, 12.0), CAPACITY: Targets(15.0, 0.8),
                               EXPERIMENTAL: Targets(None, None)})
    member = MeshPolicy(mine, mesh_id=authority.mesh_id,
                        authority_public_key=authority.public_key)
    assert member.learn(seal_policy(authority, _policy(**{
        DAILY: Targets(5.0, 6.0), CAPACITY: Targets(30.0, 0.5),
        EXPERIMENTAL: Targets(None, None)}), 1, NOW))
    now = member.current()
    assert now.tier("qwen2.5-72b-q4") == CAPACITY  # its loosening is ignored
    assert now.tier("gemma-3") == DAILY  # its move to a looser tier is ignored too
    assert now.tier("llama-3") == EXPERIMENTAL
    # daily-driver: 12 tok/s is the member's own (stricter); its TTFT is the default, so the
    # creator's looser 5 s stands. Capacity: the member left both at their defaults.
    assert now.targets[DAILY] == Targets(5.0, 12.0)
    assert now.targets[CAPACITY] == Targets(30.0, 0.5)
    stricter = MeshPolicy(TierPolicy(rules=(("llama-*", DAILY),), targets={
        DAILY: Targets(1.0, 8.0), CAPACITY: Targets(15.0, 2.0),
        EXPERIMENTAL: Targets(None, None)}), mesh_id=authority.mesh_id,
        authority_public_key=authority.public_key)
    assert stricter.learn(seal_policy(authority, _policy(), 1, NOW))
    assert stricter.current().tier("llama-3") == DAILY
    assert stricter.current().targets[DAILY] == Targets(1.0, 8.0)
    assert stricter.current().targets[CAPACITY] == Targets(15.0, 2.0)


def test_the_creator_issues_a_newer_policy_after_a_restart(tmp_path: Path,
                                                            authority: Authority) -> None:
    first = MeshPolicy.issue(_policy(), authority, tmp_path, NOW)
    changed = MeshPolicy.issue(_policy((("gemma-*", CAPACITY),)), authority, tmp_path, NOW - 60)
    assert first.signed is not None and changed.signed is not None
    assert changed.signed.seq > first.signed.seq, "a clock stepping back does not matter"
    member = _member(authority)
    assert member.learn(b64d(first.wire())) and member.learn(b64d(changed.wire()))
    assert member.current().tier("gemma-3") == CAPACITY
    # The creator keeps its own word, whatever it hears.
    assert not changed.learn(b64d(first.wire()))
    assert changed.current() == _policy((("gemma-*", CAPACITY),))


def _three_nodes(tmp_path: Path, now: float) -> tuple[MeshState, MeshState, MeshState]:
    """The creator A (its policy issued) and members B and C (their own, none heard yet)."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    a = MeshState.load_or_create(tmp_path / "a", identity.load_or_create(tmp_path / "a"), now)
    assert a.authority is not None
    a.policy = MeshPolicy.issue(_policy(), a.authority, a.data_dir, now)
    members = []
    for name in ("b", "c"):
        ident = identity.load_or_create(tmp_path / name)
        state = MeshState.save(tmp_path / name, ident, a.info,
                               issue_cert(a.authority, ident.public_bytes, now, 3600))
        state.policy = MeshPolicy(TierPolicy(), mesh_id=a.info.mesh_id,
                                  authority_public_key=a.info.authority_public_key)
        members.append(state)
    return a, members[0], members[1]


def test_records_carry_the_policy_to_members(tmp_path: Path) -> None:
    now = time.time()
    a, b, c = _three_nodes(tmp_path, now)
    b.accept(a.publish(now), now)
    assert b.policy is not None and b.policy.current().tier("gemma-3") == DAILY
    # c never hears the creator: b's record passes the policy on.
    c.accept(b.publish(now), now)
    assert c.policy is not None and c.policy.current().tier("qwen2.5-72b") == CAPACITY


def test_the_policy_designates_the_ledger_keeper(tmp_path: Path) -> None:
    """Nobody designated: the creator keeps the mesh ledger (members find it by its authority
    proof). The creator names member B: every member, B included, and the creator agree,
    even a member that heard the policy only from another member's record."""
    now = time.time()
    a, b, c = _three_nodes(tmp_path, now)
    a_id, b_id = a.identity.node_id, b.identity.node_id
    assert c.keeper_id(now) is None and c.keeper_record(now) is None  # knows nobody yet
    for member in (b, c):
        member.accept(a.publish(now), now)
    assert a.keeper_id(now) == b.keeper_id(now) == c.keeper_id(now) == a_id
    keeper = c.keeper_record(now)
    assert keeper is not None and keeper.node_id == a_id and a.keeper_record(now) is None

    a.policy = MeshPolicy.issue(_policy(), a.authority, a.data_dir, now + 1,
                                ledger_keeper=b_id)
    b.accept(a.publish(now + 1), now + 1)
    c.accept(b.publish(now + 1), now + 1)  # c hears the new policy from b only
    assert a.keeper_id(now + 1) == b.keeper_id(now + 1) == c.keeper_id(now + 1) == b_id
    keeper = c.keeper_record(now + 1)
    assert keeper is not None and keeper.node_id == b_id
    assert b.keeper_record(now + 1) is None  # B keeps it: no record to send to
    a.accept(b.publish(now + 1), now + 1)
    keeper = a.keeper_record(now + 1)
    assert keeper is not None and keeper.node_id == b_id


def test_a_keeper_that_is_not_a_node_id_is_refused(authority: Authority) -> None:
    envelope = seal_policy(authority, _policy(), 1, NOW, ledger_keeper="b" * 16)
    signed, _ = verify_policy(envelope, mesh_id=authority.mesh_id,
                              authority_public_key=authority.public_key)
    assert signed.ledger_keeper == "b" * 16
    bad = seal(POLICY_DOMAIN, {"mesh_id": authority.mesh_id, "seq": 2, "issued_at": NOW,
                               "ledger_keeper": "../../etc"}, authority.key)
    with pytest.raises(PolicyRefused) as refused:
        verify_policy(bad, mesh_id=authority.mesh_id, authority_public_key=authority.public_key)
    assert refused.value.reason == "malformed"
