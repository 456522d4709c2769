"""Model tiers and their service targets (pure).

Every model has a tier: `daily-driver` (chat-viable on one peer), `capacity` (big models,
slower targets) or `experimental` (no targets; anything unmapped). A policy maps model ids
to tiers by exact id or glob pattern (exact ids win, then patterns in the order given) and
holds each tier's targets. The mesh's creator's policy gossips as a signed envelope; a
member's own settings may only tighten it (`tightened`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DAILY, CAPACITY, EXPERIMENTAL = "daily-driver", "capacity", "experimental"
TIERS = (DAILY, CAPACITY, EXPERIMENTAL)
MAX_RULES = 256
MAX_PATTERN = 256
# All of a policy's rules together, in characters: the mesh's policy rides in every gossiped
# record, and a gossip exchange of 32 records must stay well under the peer body cap.
MAX_RULES_TEXT = 24 * 1024


@dataclass(frozen=True)
class Targets:
    """A tier's service targets; None: no target (experimental)."""

    ttft_s: float | None  # time to first token, p50, at most
    tokens_per_s: float | None  # decode speed, p50, at least


DEFAULT_TARGETS: Mapping[str, Targets] = {
    DAILY: Targets(3.0, 8.0), CAPACITY: Targets(15.0, 0.8), EXPERIMENTAL: Targets(None, None)}


class PolicyError(ValueError):
    """A tier rule or target that cannot be used; the message names it."""


def parse_rule(text: str) -> tuple[str, str]:
    """`PATTERN=TIER` (an exact model id or a glob such as `qwen2.5-72b*`)."""
    pattern, sep, tier = text.partition("=")
    pattern, tier = pattern.strip(), tier.strip()
    if not sep or not pattern:
        raise PolicyError(f"tier rule {text!r}: write MODEL_OR_GLOB=TIER")
    if len(pattern) > MAX_PATTERN:
        raise PolicyError(f"tier rule {text[:40]!r}…: the pattern is over {MAX_PATTERN} "
                          "characters")
    if tier not in TIERS:
        raise PolicyError(f"tier rule {text!r}: tier must be one of {', '.join(TIERS)}")
    return pattern, tier


# The most a target may say (the same caps as gossiped measurements): a policy travels the
# mesh, and every number on the wire is bounded.
MAX_TTFT_S = 24 * 3600.0
MAX_TOKENS_PER_S = 1e6


def check_targets(tier: str, targets: Targets) -> None:
    for name, value, cap in (("ttft_s", targets.ttft_s, MAX_TTFT_S),
                             ("tokens_per_s", targets.tokens_per_s, MAX_TOKENS_PER_S)):
        if value is not None and not (math.isfinite(value) and 0 < value <= cap):
            raise PolicyError(f"{tier} {name}={value!r}: must be a positive number, at most "
                              f"{cap:g}")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _lookup(rules: tuple[tuple[str, str], ...], model_id: str) -> str:
    for pattern, tier in rules:
        if not _is_glob(pattern) and pattern == model_id:
            return tier
    for pattern, tier in rules:
        if _is_glob(pattern) and fnmatch.fnmatchcase(model_id, pattern):
            return tier
    return EXPERIMENTAL


@dataclass(frozen=True)
class TierPolicy:
    rules: tuple[tuple[str, str], ...] = ()  # (pattern, tier), in the order given
    targets: Mapping[str, Targets] = field(default_factory=lambda: dict(DEFAULT_TARGETS))
    # A member's own rules over the mesh's: they may only move a model to a stricter tier.
    local_rules: tuple[tuple[str, str], ...] = ()
    # Tiers looked up so far: every request lists the catalog's tiers, and up to 512 globs
    # per model would cost on the hot path. Cleared when full (ids come from peers).
    _seen: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Each list on its own: a member's own rules (bounded by its settings) on top of a
        # full mesh policy must not make the tightened policy impossible to build.
        for rules in (self.rules, self.local_rules):
            if len(rules) > MAX_RULES:
                raise PolicyError(f"at most {MAX_RULES} tier rules")
            if sum(len(p) + len(t) + 1 for p, t in rules) > MAX_RULES_TEXT:
                raise PolicyError(f"the tier rules come to over {MAX_RULES_TEXT} characters")
        for tier, targets in self.targets.items():
            if tier not in TIERS:
                raise PolicyError(f"unknown tier {tier!r}")
            check_targets(tier, targets)

    def tier(self, model_id: str) -> str:
        held = self._seen.get(model_id)
        if held is not None:
            return held
        mesh, mine = _lookup(self.rules, model_id), _lookup(self.local_rules, model_id)
        tier = min(mesh, mine, key=TIERS.index)  # TIERS is strictest first
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[model_id] = tier
        return tier

    def targets_for(self, model_id: str) -> Targets:
        tier = self.tier(model_id)
        return self.targets.get(tier, DEFAULT_TARGETS[tier])

    def tightened(self, local: TierPolicy) -> TierPolicy:
        """This (the mesh's) policy, tightened by a member's own: a model takes the stricter
        of the two tiers, and each target is the stricter of the two (lower TTFT, higher
        speed). A member cannot loosen the mesh's policy."""
        targets = {}
        for tier in TIERS:
            mesh = self.targets.get(tier, DEFAULT_TARGETS[tier])
            mine = local.targets.get(tier, mesh)
            targets[tier] = Targets(_lower(mesh.ttft_s, mine.ttft_s),
                                    _higher(mesh.tokens_per_s, mine.tokens_per_s))
        return TierPolicy(rules=self.rules, targets=targets,
                          local_rules=local.rules + local.local_rules)


def _lower(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _higher(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True)
class Offer:
    """A model the mesh offers, as the default-model choice sees it."""

    id: str
    ready: bool  # some node (this one or a live peer) can serve it now
    measured_tokens_per_s: float | None = None  # through the mesh from this node, p50
    gossiped_tokens_per_s: float | None = None  # the serving nodes' own p50, best of them
    embeddings_only: bool = False  # an embedding model: never the default for a chat


def default_model(offers: Sequence[Offer], policy: TierPolicy) -> str | None:
    """The model a request that names none gets: the best-served daily-driver model.

    Among ready daily-driver models: the highest tokens/s measured through the mesh from
    this node; failing any measurement, the highest gossiped by the serving nodes; failing
    that, the first in `offers`' order. None when no daily-driver model is ready: the caller
    keeps its old choice (this node's default, else the first in the catalog). Ties go to
    the earlier offer. Embedding models are never chosen: they answer no chat."""
    daily = [o for o in offers
             if o.ready and not o.embeddings_only and policy.tier(o.id) == DAILY]
    for measured in (True, False):
        rated = [(rate, -i, o.id) for i, o in enumerate(daily)
                 if (rate := o.measured_tokens_per_s if measured else o.gossiped_tokens_per_s)
                 is not None and math.isfinite(rate)]
        if rated:
            return max(rated)[2]
    return daily[0].id if daily else None
