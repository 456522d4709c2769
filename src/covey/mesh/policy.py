"""The mesh's policy: the creator's tier rules and targets, and the member it designates to
keep the credit ledger, signed with the authority key and carried in every record, so every
member sorts models into the same tiers and sends its receipts to the same keeper.

The creator seals its own settings' policy with a sequence number above any it used before
(kept in `<data_dir>/policy_seq`, so a restart with a changed config wins over the old one).
Members verify it against the authority's public key, keep the newest, and pass it on in
their own records. A member's effective policy is the mesh's tightened by what its own
settings ask (`TierPolicy.tightened`): a stricter tier for a model, a stricter target, never
a looser one. A member that has not heard the mesh's policy yet uses its own.

A target a member leaves at its default does not count as tightening: otherwise a creator
could never loosen a target for its mesh (every member's defaults would win back).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from covey.mesh.membership import Authority
from covey.mesh.records import next_seq
from covey.mesh.sealed import SealError, b64e, check, seal, unseal
from covey.router.tiers import (
    DEFAULT_TARGETS,
    MAX_PATTERN,
    MAX_RULES,
    MAX_TOKENS_PER_S,
    MAX_TTFT_S,
    TIERS,
    PolicyError,
    Targets,
    TierPolicy,
    parse_rule,
)

log = logging.getLogger(__name__)

POLICY_DOMAIN = b"covey-tier-policy-v1"
SEQ_FILE = "policy_seq"  # the creator's last policy sequence number
# The largest policy (MAX_RULES_TEXT of rules) fits with room; the record field holds it
# base64, and 32 records of it stay under a gossip exchange's 4 MiB.
MAX_ENVELOPE = 40 * 1024
MAX_WIRE = (MAX_ENVELOPE * 4 + 2) // 3  # the envelope, base64url in a record


class PolicyRefused(Exception):
    """A policy envelope not to adopt. `reason`: oversize, malformed, bad_signature,
    wrong_mesh, invalid."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class WireTargets(_Wire):
    ttft_s: float | None = Field(default=None, gt=0, le=MAX_TTFT_S)
    tokens_per_s: float | None = Field(default=None, gt=0, le=MAX_TOKENS_PER_S)


class SignedPolicy(_Wire):
    """The signed body: which mesh, which issue, and the policy (rules as `PATTERN=TIER`)."""

    mesh_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=1, le=2**63 - 1)
    issued_at: float
    rules: list[Annotated[str, Field(max_length=MAX_PATTERN + 32)]] = Field(
        default_factory=list, max_length=MAX_RULES)
    # Per tier; a tier this reader does not know is ignored (protocols evolve).
    targets: dict[Annotated[str, Field(max_length=32)], WireTargets] = Field(
        default_factory=dict, max_length=16)
    # The member the creator designates to keep the mesh ledger (ledger/service.py); empty:
    # the creator keeps it. A node id (mesh/identity.py: 16 base32 characters).
    ledger_keeper: str = Field(default="", pattern=r"^([a-z2-7]{16})?$")

    def policy(self) -> TierPolicy:
        """The policy it carries (PolicyError if a rule or target cannot be used)."""
        return TierPolicy(
            rules=tuple(parse_rule(r) for r in self.rules),
            targets={tier: Targets(t.ttft_s, t.tokens_per_s)
                     for tier, t in self.targets.items() if tier in TIERS})


def seal_policy(authority: Authority, policy: TierPolicy, seq: int, now: float,
                ledger_keeper: str = "") -> bytes:
    """The authority's signed envelope for `policy` (its mesh rules; a member's own rules
    never travel) and the member it designates to keep the mesh ledger ("" for itself)."""
    body = SignedPolicy(
        mesh_id=authority.mesh_id, seq=seq, issued_at=now, ledger_keeper=ledger_keeper,
        rules=[f"{pattern}={tier}" for pattern, tier in policy.rules],
        targets={tier: WireTargets(ttft_s=t.ttft_s, tokens_per_s=t.tokens_per_s)
                 for tier, t in policy.targets.items()})
    envelope = seal(POLICY_DOMAIN, body.model_dump(mode="json"), authority.key)
    if len(envelope) > MAX_ENVELOPE:  # cannot happen within TierPolicy's caps; say so if it does
        raise PolicyError(f"the tier policy is {len(envelope)} bytes signed; at most "
                          f"{MAX_ENVELOPE}")
    return envelope


def verify_policy(envelope: bytes, *, mesh_id: str,
                  authority_public_key: bytes) -> tuple[SignedPolicy, TierPolicy]:
    """The signed body and its policy, or PolicyRefused: the signature is checked before any
    field is read."""
    try:
        raw, sig, body = unseal(POLICY_DOMAIN, envelope, MAX_ENVELOPE)
        check(POLICY_DOMAIN, raw, sig, authority_public_key)
        signed = SignedPolicy.model_validate(body)
    except SealError as exc:
        raise PolicyRefused(exc.reason, f"tier policy refused: {exc}") from exc
    except ValidationError as exc:
        raise PolicyRefused("malformed", "tier policy fields invalid") from exc
    if signed.mesh_id != mesh_id:
        raise PolicyRefused("wrong_mesh", f"tier policy is for mesh {signed.mesh_id}")
    try:
        return signed, signed.policy()
    except PolicyError as exc:
        raise PolicyRefused("invalid", f"tier policy refused: {exc}") from exc


def explicit(own: TierPolicy) -> TierPolicy:
    """A member's own policy as a tightening: targets left at their defaults dropped."""
    return TierPolicy(rules=own.rules, local_rules=own.local_rules, targets={
        tier: Targets(None if t.ttft_s == DEFAULT_TARGETS[tier].ttft_s else t.ttft_s,
                      None if t.tokens_per_s == DEFAULT_TARGETS[tier].tokens_per_s
                      else t.tokens_per_s)
        for tier, t in own.targets.items()})


class MeshPolicy:
    """This node's view of the mesh's tier policy. `current()` is what routing and status
    ask; `learn()` takes an envelope from a peer's record; `wire()` is what this node's own
    record carries."""

    def __init__(self, own: TierPolicy, *, mesh_id: str, authority_public_key: bytes) -> None:
        self.own = own
        self.mesh_id = mesh_id
        self.authority_public_key = authority_public_key
        self.signed: SignedPolicy | None = None
        self.envelope: bytes | None = None
        self._wired: tuple[bytes | None, str] = (None, "")  # wire()'s last encoding
        self.issuer = False  # this node holds the authority key and issued the policy
        self._current = own
        self._last_refused: bytes | None = None
        self._logged: set[str] = set()  # refusal reasons already logged

    @classmethod
    def issue(cls, own: TierPolicy, authority: Authority, data_dir: Path,
              now: float, ledger_keeper: str = "") -> MeshPolicy:
        """On the mesh's creator: its own policy, sealed as the mesh's (blocking: writes the
        sequence file)."""
        policy = cls(own, mesh_id=authority.mesh_id,
                     authority_public_key=authority.public_key)
        envelope = seal_policy(authority, own, next_seq(data_dir / SEQ_FILE, now), now,
                               ledger_keeper)
        policy.signed, _ = verify_policy(envelope, mesh_id=authority.mesh_id,
                                         authority_public_key=authority.public_key)
        policy.envelope, policy.issuer = envelope, True
        return policy

    def current(self) -> TierPolicy:
        return self._current

    @property
    def ledger_keeper(self) -> str:
        """The member designated to keep the mesh ledger; "" when the creator keeps it (or
        no policy has been heard yet)."""
        return self.signed.ledger_keeper if self.signed is not None else ""

    def wire(self) -> str:
        """The envelope for this node's record (base64url), or "" while it holds none.
        Asked every gossip round: encoded again only when the envelope changed."""
        envelope = self.envelope
        if self._wired[0] is not envelope:
            self._wired = (envelope, b64e(envelope) if envelope else "")
        return self._wired[1]

    def learn(self, envelope: bytes) -> bool:
        """Adopt `envelope` if it is the authority's, for this mesh, and newer than the one
        held. A bad or foreign one is ignored and logged once per kind of fault. The
        creator keeps its own (it is the authority's current word)."""
        if self.issuer or envelope == self.envelope or envelope == self._last_refused:
            return False  # every peer's record repeats it: checked once, not every round
        try:
            signed, policy = verify_policy(envelope, mesh_id=self.mesh_id,
                                           authority_public_key=self.authority_public_key)
        except PolicyRefused as exc:
            self._last_refused = envelope
            if exc.reason not in self._logged:
                self._logged.add(exc.reason)
                log.warning("mesh: ignored a tier policy (%s): %s", exc.reason, exc)
            return False
        if self.signed is not None and signed.seq <= self.signed.seq:
            return False
        self.signed, self.envelope = signed, envelope
        self._current = policy.tightened(explicit(self.own))
        log.info("mesh: tier policy #%d adopted (%d rules)", signed.seq, len(signed.rules))
        return True
