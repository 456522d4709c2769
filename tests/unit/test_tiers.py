"""router/tiers.py: which tier a model is in, its targets, and a member only tightening."""

from __future__ import annotations

import pytest

from covey.router.tiers import (
    CAPACITY,
    DAILY,
    EXPERIMENTAL,
    PolicyError,
    Targets,
    TierPolicy,
    parse_rule,
)

POLICY = TierPolicy(rules=(("qwen*-72b*", CAPACITY), ("smollm2-*", DAILY),
                           ("smollm2-135m-instruct-q4_1", CAPACITY)))


@pytest.mark.parametrize(("model", "tier"), [
    ("smollm2-135m-instruct-q4_1", CAPACITY),  # an exact id beats a pattern
    ("smollm2-360m-instruct-q8_0", DAILY),
    ("qwen2.5-72b-instruct-q4_k_m", CAPACITY),
    ("gemma-3-270m-q4_k_m", EXPERIMENTAL),  # unmapped
])
def test_tier_lookup(model: str, tier: str) -> None:
    assert POLICY.tier(model) == tier


@pytest.mark.parametrize("text", ["", "=daily-driver", "gemma", "gemma=fast",
                                  "x" * 300 + "=capacity"])
def test_bad_rules_are_named(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_rule(text)


def test_rules_parse() -> None:
    assert parse_rule(" gemma-* = daily-driver ") == ("gemma-*", DAILY)


@pytest.mark.parametrize("targets", [Targets(0, 8.0), Targets(3.0, -1), Targets(float("nan"), 1)])
def test_bad_targets_are_refused(targets: Targets) -> None:
    with pytest.raises(PolicyError):
        TierPolicy(targets={DAILY: targets})


def test_a_member_may_only_tighten() -> None:
    mesh = TierPolicy(rules=(("gemma-*", DAILY), ("big-*", CAPACITY)))
    mine = TierPolicy(rules=(("gemma-*", EXPERIMENTAL), ("big-*", DAILY)),
                      targets={DAILY: Targets(10.0, 20.0), CAPACITY: Targets(5.0, 0.1)})
    both = mesh.tightened(mine)
    assert both.tier("gemma-3") == DAILY  # loosening to experimental is ignored
    assert both.tier("big-1") == DAILY  # moving to a stricter tier is honoured
    assert both.targets_for("gemma-3") == Targets(3.0, 20.0)  # stricter of each
    assert both.targets[CAPACITY] == Targets(5.0, 0.8)
    assert both.targets_for("other") == Targets(None, None)
