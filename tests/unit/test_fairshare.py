"""router/fairshare.py: the order waiting requests enter a contended engine, and the proof
that age bounds every wait."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import replace

import pytest

from covey.router.fairshare import (
    Policy,
    Waiter,
    classify,
    headroom,
    held_back,
    pick,
    pick_allowed,
    priority,
    promote,
    rank,
    release_at,
    wait_bound,
)

POLICY = Policy(age_step_s=10.0, share_credits=100.0)


@pytest.mark.parametrize(("consumer", "standing", "klass"), [
    (None, None, "own"),
    (None, -50.0, "own"),  # this node's own clients, whatever a ledger says
    ("peer", 5.0, "member"),
    ("peer", 0.0, "rest"),
    ("peer", -3.0, "rest"),
    ("peer", None, "rest"),
    ("", None, "rest"),  # a peer request without a verified caller
    ("peer", math.nan, "rest"),
    ("peer", math.inf, "rest"),
])
def test_classify(consumer: str | None, standing: float | None, klass: str) -> None:
    assert classify(consumer, standing) == klass


@pytest.mark.parametrize(("balance", "expected"), [
    (100.0, 1.25),  # one share banked: halfway to the head of the member class
    (200.0, 1.125),
    (1e-9, 1.5),  # barely in credit: still half a class ahead of the rest
    (1e12, 1.0),
])
def test_member_rank_is_slurms_factor(balance: float, expected: float) -> None:
    assert rank(Waiter("member", balance, 0.0), POLICY) == pytest.approx(expected)


def test_fresh_waiters_go_own_then_members_by_balance_then_the_rest() -> None:
    waiters = [Waiter("rest", None, 0.0, 0, "x"), Waiter("member", 10.0, 0.0, 1, "modest"),
               Waiter("rest", -5.0, 0.0, 2, "y"), Waiter("member", 500.0, 0.0, 3, "rich"),
               Waiter("own", None, 0.0, 4)]
    order = []
    while waiters:
        order.append(waiters.pop(pick(waiters, 0.0, POLICY)).seq)
    assert order == [4, 3, 1, 0, 2]  # equals (the two "rest") first come, first served


def test_unknown_standing_everywhere_is_first_come_first_served() -> None:
    waiters = [Waiter("rest", None, t, i, f"peer{i}")
               for i, t in enumerate([3.0, 1.0, 2.0, 1.0])]
    assert [w.seq for w in sorted(waiters, key=lambda w: priority(w, 9.0, POLICY))] == [
        1, 3, 2, 0]


@pytest.mark.parametrize(("old", "waited", "fresh", "old_first"), [
    (("rest", None), 9.9, ("member", 1e12), False),
    (("rest", None), 10.1, ("member", 1e12), True),  # one step of age: one class up
    (("rest", None), 7.4, ("member", 100.0), False),  # rank 2 vs 1.25: ¾ of a step
    (("rest", None), 7.6, ("member", 100.0), True),
    (("rest", None), 19.9, ("own", None), False),
    (("rest", None), 20.1, ("own", None), True),  # MAX_RANK steps: ahead of any newcomer
    (("member", 100.0), 12.4, ("own", None), False),
    (("member", 100.0), 12.6, ("own", None), True),
])
def test_age_raises_priority(old: tuple[str, float | None], waited: float,
                             fresh: tuple[str, float | None], old_first: bool) -> None:
    waiters = [Waiter(old[0], old[1], 0.0, 0, "old"),  # type: ignore[arg-type]
               Waiter(fresh[0], fresh[1], waited, 1, None if fresh[0] == "own" else "new")]  # type: ignore[arg-type]
    assert (pick(waiters, waited, POLICY) == 0) is old_first


def test_pick_needs_a_waiter() -> None:
    with pytest.raises(ValueError, match="at least one"):
        pick([], 0.0)


@pytest.mark.parametrize("field", ["age_step_s", "share_credits", "headroom_window_s"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_policy_refuses_bad_knobs(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Policy(**{field: value})


def test_a_line_is_first_come_first_served_and_only_its_head_ages() -> None:
    backlog = [Waiter("rest", None, float(t), t, "flood") for t in range(5)]
    member = Waiter("member", 1e12, 100.0, 9, "rich")  # rank 1
    # The flood's head has waited 100 s (10 steps): it goes first, then its next request
    # starts ageing only now and waits its turn behind the member.
    assert pick([*backlog, member], 100.0, POLICY) == 0
    rest = backlog[1:]
    i = promote(rest, backlog[0], 100.0)
    assert i == 0
    rest[0] = Waiter("rest", None, 1.0, 1, "flood", head_since=100.0)
    assert pick([*rest, member], 100.0, POLICY) == len(rest)
    assert promote(rest, rest[2], 100.0) is None  # not a head: the line's head stays


def _simulate(rng: random.Random, slots: int, max_queue: int, longest: float,
              flood: str, horizon: float, policy: Policy = POLICY
              ) -> list[tuple[Waiter, float]]:
    """A saturated engine: the queue is topped up to `max_queue` after every release, with
    one victim line (`rest`, no standing, a backlog of 3) arriving first and everything after
    it from `flood` (the class that would starve it if age did not count), from a handful of
    consumers. Returns (waiter as it entered, entered at)."""
    seq = 0
    now = 0.0
    queue: list[Waiter] = []
    running: list[float] = []  # finish times
    served: list[tuple[Waiter, float]] = []

    def arrive(klass: str, consumer: str | None) -> None:
        nonlocal seq
        queue.append(Waiter(klass, rng.uniform(1, 1000) if klass == "member" else None,  # type: ignore[arg-type]
                            now, seq, consumer))
        seq += 1

    for _ in range(slots):  # the engine starts full
        heapq.heappush(running, rng.uniform(0.1, longest))
    for _ in range(3):
        arrive("rest", "victim")
    while now < horizon:
        while len(queue) < max_queue:
            klass = rng.choice(["own", "member"]) if flood == "mixed" else flood
            arrive(klass, None if klass == "own" else f"m{rng.randrange(4)}")
        now = heapq.heappop(running)  # a slot frees
        w = queue.pop(pick(queue, now, policy))
        i = promote(queue, w, now)
        if i is not None:
            queue[i] = replace(queue[i], head_since=now)
        served.append((w, now))
        heapq.heappush(running, now + rng.uniform(0.1, longest))
    return served


@pytest.mark.parametrize("flood", ["own", "member", "mixed"])
@pytest.mark.parametrize(("slots", "max_queue"), [(1, 4), (1, 8), (4, 16), (3, 50)])
@pytest.mark.parametrize("seed", range(3))
def test_every_wait_is_bounded(flood: str, slots: int, max_queue: int, seed: int) -> None:
    longest = 4.0
    served = _simulate(random.Random(seed), slots, max_queue, longest, flood, horizon=900.0)
    lines = 6  # the victim, this node's own clients, four members
    head_bound = wait_bound(POLICY, slots, lines, longest)
    victims = [(w, t) for w, t in served if w.consumer == "victim"]
    assert len(victims) == 3, "the victim's line was never served"
    for w, t in served:
        assert t - w.aging_from <= head_bound, (w, t)
    for k, (w, t) in enumerate(victims, start=1):  # the k-th of a line: k head waits
        assert t - w.arrived <= k * head_bound, (w, t)


def test_without_age_the_flood_starves_the_victim() -> None:
    """The contrast that shows the bound comes from age, not from the simulation."""
    served = _simulate(random.Random(0), 4, 16, 4.0, "own", horizon=900.0,
                       policy=Policy(age_step_s=1e9))
    assert not any(w.consumer == "victim" for w, _ in served)


def test_a_bad_headroom_share_is_refused() -> None:
    for value in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match="headroom_share"):
            Policy(headroom_share=value)


@pytest.mark.parametrize(("slots", "share", "expected"), [
    (1, 0.5, 0), (2, 0.5, 1), (3, 0.5, 2), (4, 0.5, 2), (8, 0.5, 4), (4, 0.75, 3),
    (4, 0.99, 3), (4, 0.0, 0)])
def test_headroom_is_a_share_of_the_slots_rounded_up_leaving_the_rest_one(
        slots: int, share: float, expected: int) -> None:
    assert headroom(Policy(headroom_share=share), slots) == expected


def test_only_the_rest_are_held_back_and_only_while_a_contributor_is_about() -> None:
    p = Policy(age_step_s=10.0, headroom_share=0.5, headroom_window_s=30.0)
    rest = Waiter("rest", None, 100.0, 1, "free")
    seen = 95.0  # a contributor's last request; 4 slots, a headroom of 2
    assert not held_back(rest, 1, 4, seen, 100.0, p)  # it leaves two free
    assert held_back(rest, 2, 4, seen, 100.0, p)  # it would leave one
    assert not held_back(Waiter("member", 5.0, 100.0, 2, "m"), 3, 4, seen, 100.0, p)
    assert not held_back(Waiter("own", None, 100.0, 3), 3, 4, seen, 100.0, p)
    assert not held_back(rest, 3, 4, None, 100.0, p)  # no contributor yet
    assert not held_back(rest, 3, 4, 69.0, 100.0, p)  # the last one is 31 s ago
    assert held_back(rest, 3, 4, seen, 109.9, p)
    assert not held_back(rest, 3, 4, seen, 110.0, p)  # it has headed its line age_step_s
    assert release_at(rest, seen, p) == 110.0 and release_at(rest, 75.0, p) == 105.0
    assert not held_back(rest, 0, 1, seen, 100.0, p)  # a one-slot engine keeps no headroom


def test_pick_allowed_skips_whole_lines() -> None:
    waiters = [Waiter("rest", None, 0.0, 0, "free"), Waiter("rest", None, 1.0, 1, "free"),
               Waiter("member", 5.0, 2.0, 2, "m")]
    def not_rest(w: Waiter) -> bool:
        return w.klass != "rest"
    assert pick_allowed(waiters, 3.0, POLICY, not_rest) == 2
    assert pick_allowed(waiters[:2], 3.0, POLICY, not_rest) is None
    assert pick_allowed(waiters, 3.0, POLICY, lambda w: True) == pick(waiters, 3.0, POLICY)
