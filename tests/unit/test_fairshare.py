"""router/fairshare.py: the order waiting requests enter a contended engine, and the proof
that age bounds every wait."""

from __future__ import annotations

import bisect
import heapq
import math
import random

import pytest

from covey.router.fairshare import (
    MAX_RANK,
    Policy,
    Waiter,
    classify,
    pick,
    priority,
    rank,
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
    (100.0, 1.5),  # one share banked: halfway to the head of the member class
    (200.0, 1.25),
    (1e-9, 2.0),
    (1e12, 1.0),
])
def test_member_rank_is_slurms_factor(balance: float, expected: float) -> None:
    assert rank(Waiter("member", balance, 0.0), POLICY) == pytest.approx(expected)


def test_fresh_waiters_go_own_then_members_by_balance_then_the_rest() -> None:
    waiters = [Waiter("rest", None, 0.0, 0), Waiter("member", 10.0, 0.0, 1),
               Waiter("rest", -5.0, 0.0, 2), Waiter("member", 500.0, 0.0, 3),
               Waiter("own", None, 0.0, 4)]
    order = []
    while waiters:
        order.append(waiters.pop(pick(waiters, 0.0, POLICY)).seq)
    assert order == [4, 3, 1, 0, 2]  # equals (the two "rest") first come, first served


def test_unknown_standing_everywhere_is_first_come_first_served() -> None:
    waiters = [Waiter("rest", None, t, i) for i, t in enumerate([3.0, 1.0, 2.0, 1.0])]
    assert [w.seq for w in sorted(waiters, key=lambda w: priority(w, 9.0, POLICY))] == [
        1, 3, 2, 0]


@pytest.mark.parametrize(("old", "waited", "fresh", "old_first"), [
    (("rest", None), 9.9, ("member", 1e12), False),
    (("rest", None), 10.1, ("member", 1e12), True),  # one step of age: one class up
    (("rest", None), 4.9, ("member", 100.0), False),  # rank 2 vs 1.5: half a step
    (("rest", None), 5.1, ("member", 100.0), True),
    (("rest", None), 19.9, ("own", None), False),
    (("rest", None), 20.1, ("own", None), True),  # MAX_RANK steps: ahead of any newcomer
    (("member", 100.0), 14.9, ("own", None), False),
    (("member", 100.0), 15.1, ("own", None), True),
])
def test_age_raises_priority(old: tuple[str, float | None], waited: float,
                             fresh: tuple[str, float | None], old_first: bool) -> None:
    waiters = [Waiter(old[0], old[1], 0.0, 0),  # type: ignore[arg-type]
               Waiter(fresh[0], fresh[1], waited, 1)]  # type: ignore[arg-type]
    assert (pick(waiters, waited, POLICY) == 0) is old_first


def test_pick_needs_a_waiter() -> None:
    with pytest.raises(ValueError, match="at least one"):
        pick([], 0.0)


@pytest.mark.parametrize("field", ["age_step_s", "share_credits"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_policy_refuses_bad_knobs(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Policy(**{field: value})


def _simulate(rng: random.Random, slots: int, max_queue: int, longest: float,
              flood: str, horizon: float, policy: Policy = POLICY
              ) -> list[tuple[Waiter, float]]:
    """A saturated engine: the queue is topped up to `max_queue` after every release, with
    one victim (`rest`, no standing) arriving early and everything after it from `flood`
    (the class that would starve it if age did not count). Returns (waiter, entered at)."""
    seq = 0
    now = 0.0
    queue: list[Waiter] = []
    running: list[float] = []  # finish times
    served: list[tuple[Waiter, float]] = []

    def arrive(klass: str) -> None:
        nonlocal seq
        queue.append(Waiter(klass, rng.uniform(1, 1000) if klass == "member" else None,  # type: ignore[arg-type]
                            now, seq))
        seq += 1

    for _ in range(slots):  # the engine starts full
        heapq.heappush(running, rng.uniform(0.1, longest))
    arrive("rest")
    while now < horizon:
        while len(queue) < max_queue:
            arrive(rng.choice([flood, "own", "member"]) if flood == "mixed" else flood)
        now = heapq.heappop(running)  # a slot frees
        w = queue.pop(pick(queue, now, policy))
        served.append((w, now))
        heapq.heappush(running, now + rng.uniform(0.1, longest))
    return served


@pytest.mark.parametrize("flood", ["own", "member", "mixed"])
@pytest.mark.parametrize(("slots", "max_queue"), [(1, 1), (1, 8), (4, 16), (3, 50)])
@pytest.mark.parametrize("seed", range(3))
def test_every_wait_is_bounded(flood: str, slots: int, max_queue: int, seed: int) -> None:
    longest = 4.0
    served = _simulate(random.Random(seed), slots, max_queue, longest, flood, horizon=600.0)
    bound = wait_bound(POLICY, slots, max_queue, longest)
    entered = {w.seq: t for w, t in served}
    assert 0 in entered, "the victim was never served"
    for w, t in served:
        assert t - w.arrived <= bound, (w, t)
    # The proof's key step: no one arriving MAX_RANK age steps after a waiter goes first.
    window = MAX_RANK * POLICY.age_step_s
    by_arrival = sorted(served, key=lambda s: s[0].arrived)
    arrivals = [w.arrived for w, _ in by_arrival]
    first_entry_after = [math.inf] * (len(by_arrival) + 1)  # suffix minimum of entry times
    for i in range(len(by_arrival) - 1, -1, -1):
        first_entry_after[i] = min(first_entry_after[i + 1], by_arrival[i][1])
    for w, t in served:
        later = bisect.bisect_right(arrivals, w.arrived + window)
        assert first_entry_after[later] >= t, w


def test_without_age_the_flood_starves_the_victim() -> None:
    """The contrast that shows the bound comes from age, not from the simulation."""
    served = _simulate(random.Random(0), 4, 16, 4.0, "own", horizon=600.0,
                       policy=Policy(age_step_s=1e9))
    assert 0 not in {w.seq for w, _ in served}
