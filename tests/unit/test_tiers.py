"""router/tiers.py: which tier a model is in, its targets, and a member only tightening."""

from __future__ import annotations

import pytest

from covey.router.tiers import (
    CAPACITY,
    DAILY,
    EXPERIMENTAL,
    Offer,
    PolicyError,
    Targets,
    TierPolicy,
    default_model,
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


DD = TierPolicy(rules=(("chat-*", DAILY), ("big-*", CAPACITY)))


@pytest.mark.parametrize(("offers", "expected"), [
    # The best measured through the mesh wins, whatever peers gossip.
    ([Offer("chat-a", True, 12.0, 90.0), Offer("chat-b", True, 30.0, 5.0)], "chat-b"),
    # A measured model beats one only gossiped, even a faster one.
    ([Offer("chat-a", True, None, 90.0), Offer("chat-b", True, 3.0, None)], "chat-b"),
    # No measurement anywhere: the best gossiped.
    ([Offer("chat-a", True, None, 20.0), Offer("chat-b", True, None, 40.0)], "chat-b"),
    # Nothing measured or gossiped: the first ready daily-driver model.
    ([Offer("other", True), Offer("chat-a", False, 50.0), Offer("chat-b", True),
      Offer("chat-c", True)], "chat-b"),
    # Capacity and experimental models never become the default, however fast.
    ([Offer("big-1", True, 100.0), Offer("other", True, 90.0), Offer("chat-a", True, 1.0)],
     "chat-a"),
    # No ready daily-driver model: None, the caller keeps its old choice.
    ([Offer("big-1", True, 100.0), Offer("chat-a", False, 9.0)], None),
    ([], None),
    # A tie goes to the earlier offer.
    ([Offer("chat-a", True, 10.0), Offer("chat-b", True, 10.0)], "chat-a"),
])
def test_default_model(offers: list[Offer], expected: str | None) -> None:
    assert default_model(offers, DD) == expected


def test_the_default_follows_the_policy() -> None:
    offers = [Offer("chat-a", True, 10.0), Offer("big-1", True, 20.0)]
    member = DD.tightened(TierPolicy(rules=(("big-1", DAILY), ("chat-a", CAPACITY))))
    assert default_model(offers, DD) == "chat-a"
    # The member holds big-1 to daily-driver targets (stricter); moving chat-a to capacity
    # would loosen it and is ignored.
    assert default_model(offers, member) == "big-1"
    assert default_model(offers, TierPolicy()) is None  # nothing is a daily driver


def test_each_rule_list_is_bounded_on_its_own() -> None:
    """A full mesh policy tightened by a member's full one is still a policy."""
    full = tuple((f"m{i}", CAPACITY) for i in range(256))
    both = TierPolicy(rules=full).tightened(TierPolicy(rules=full))
    assert both.tier("m3") == CAPACITY
    with pytest.raises(PolicyError):
        TierPolicy(rules=(*full, ("x", DAILY)))
