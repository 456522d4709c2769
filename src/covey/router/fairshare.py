"""Fair-share priority: which waiting request enters a contended local engine next (pure).

llama.cpp serves its queue first come, first served, so the ordering lives in Covey's
admission queue (`router/admission.py`) in front of the engine. When a slot frees, `pick()`
chooses the waiter with the lowest `priority()`:

    score = rank − waited / age_step_s        (lower goes first; ties: earlier arrival)

    rank  0                          this node's own clients (its hardware serves them first)
          1 + ½ · 2^(−balance/share)  a member with a positive balance: in (1, 1.5), lower
                                     for a larger balance
          2                          everyone else: zero, negative or unknown standing

The member term is Slurm's fair-share factor F = 2^(−usage/share) turned around: Slurm halves
a user's priority for every share of recent usage; here every `share` credits a member has
banked (given minus used, as the ledger keeps them) halves its distance to the head of the
member class. Any member in credit stays at least half a class ahead of the rest, so a small
balance still buys half an age step of head start; one far in credit ranks a whole class
ahead of the rest and a whole class behind this node's own requests. Among equals (the
default `standing` knows no one) the rule is plain first come, first served, as llama.cpp's
own queue was.

Lines: each consumer's requests wait in their own first-come line (this node's own clients
share one), and only the head of each line competes. Age counts from when a request became
the head of its line, so a consumer with a deep backlog ages one request at a time: it can
neither flood the queue's front with old requests nor starve anyone.

Age: every `age_step_s` seconds at the head of its line lifts a waiter one whole class, so
nobody waits forever. Bound: a head `h` (head since `t_h`) is passed only by heads whose
score is lower, i.e. heads that became heads before `t_h + (rank_h − rank_x)·age_step_s ≤
t_h + MAX_RANK·age_step_s`. After that instant no new head outranks `h`, and each other line
has one head: `h` enters the engine by the `C`-th slot release after it, `C` the number of
lines (at most `max_queue`). With `slots` slots and no answer longer than `T`, a head waits
at most `MAX_RANK·age_step_s + ceil(C / slots)·T` (`wait_bound()`), and the k-th request in
a line at most k times that (tests/unit/test_fairshare.py checks both).

Headroom: the queue preempts no answer, so with a free-rider in every slot a contributor
(this node's own client or a member in credit) who alone would have found a slot free waits
for one to end. So while a contributor arrived less than `headroom_window_s` ago, a request
of class "rest" enters only if it leaves `headroom()` slots free (`held_back()`): a slot
a contributor finds free, not one it waits for. The engine then runs below its slots while
the rest wait; that is the price of contributors served as if the rest were not there. A rest
head is held back at most `age_step_s` (after that it has risen out of the rest class), and
never once the window lapses (`release_at()`), so the bound above still holds: holding back
ends within the overtaking window it already allows for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

# Who is asking: this node's own client, a member in credit, or anyone else.
ConsumerClass = Literal["own", "member", "rest"]
CLASSES: tuple[ConsumerClass, ...] = ("own", "member", "rest")
# node id → balance in credits (given minus used), or None: not known to the ledger.
Standing = Callable[[str], float | None]
MAX_RANK = 2.0


def no_standing(node_id: str) -> float | None:
    """The standing used until the ledger's balances are wired in: nobody is known, so peers
    are served first come, first served (after this node's own clients)."""
    return None


@dataclass(frozen=True)
class Policy:
    """The fair-share knobs."""

    # seconds a waiter must wait to rise one class (own ← member ← rest). Long against a
    # normal wait (a few answers' time), or a backlog's age soon outranks everyone and the
    # order is first come, first served again; the longest wait grows with it (wait_bound).
    age_step_s: float = 60.0
    # credits of balance that halve a member's distance to the head of the member class
    share_credits: float = 100.0
    # the share of an engine's slots the rest leave free while contributors are about (see
    # `held_back`), rounded up; 0 turns the headroom off. The rest always keep one slot.
    headroom_share: float = 0.5
    # seconds after the last contributor's request during which the headroom is kept: long
    # against the gap between one contributor's requests, short enough that slots soon serve
    # the rest again once the contributors go quiet
    headroom_window_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("age_step_s", "share_credits", "headroom_window_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"fair-share {name} must be a positive number, not {value!r}")
        if not (math.isfinite(self.headroom_share) and 0 <= self.headroom_share < 1):
            raise ValueError("fair-share headroom_share must be at least 0 and below 1, not "
                             f"{self.headroom_share!r}")


@dataclass(frozen=True, slots=True)
class Waiter:
    """One request waiting for a slot: its class and standing when it arrived, its arrival
    time (the caller's clock, seconds), an arrival counter (orders a line, breaks ties), the
    consumer whose line it waits in (None: this node's own clients) and since when it heads
    that line (None: since it arrived; see `promote`)."""

    klass: ConsumerClass
    standing: float | None
    arrived: float
    seq: int = 0
    consumer: str | None = None
    head_since: float | None = None

    @property
    def aging_from(self) -> float:
        return self.arrived if self.head_since is None else self.head_since


def classify(consumer: str | None, standing: float | None) -> ConsumerClass:
    """`consumer` None is this node's own client; a peer is a member while in credit. A
    standing that is not a finite number (hostile or broken input) counts as unknown."""
    if consumer is None:
        return "own"
    if standing is not None and math.isfinite(standing) and standing > 0:
        return "member"
    return "rest"


def rank(waiter: Waiter, policy: Policy = Policy()) -> float:
    """The waiter's class as a number in [0, MAX_RANK] (see the module docstring)."""
    if waiter.klass == "own":
        return 0.0
    if waiter.klass == "member" and waiter.standing is not None:
        return 1.0 + 0.5 * math.pow(2.0, -waiter.standing / policy.share_credits)
    return MAX_RANK


def priority(waiter: Waiter, now: float, policy: Policy = Policy()
             ) -> tuple[float, float, int]:
    """Sort key among line heads: lower goes first. Each `age_step_s` at the head of its line
    lowers the score by one class."""
    waited = max(0.0, now - waiter.aging_from)
    return (rank(waiter, policy) - waited / policy.age_step_s, waiter.aging_from, waiter.seq)


def heads(waiters: Sequence[Waiter]) -> list[int]:
    """The index of each line's head (its consumer's earliest waiter)."""
    first: dict[str | None, int] = {}
    for i, w in enumerate(waiters):
        j = first.get(w.consumer)
        if j is None or w.seq < waiters[j].seq:
            first[w.consumer] = i
    return list(first.values())


def pick(waiters: Sequence[Waiter], now: float, policy: Policy = Policy()) -> int:
    """The index of the waiter that enters next: the best line head. Not empty."""
    if not waiters:
        raise ValueError("pick() needs at least one waiter")
    return min(heads(waiters), key=lambda i: priority(waiters[i], now, policy))


def pick_allowed(waiters: Sequence[Waiter], now: float, policy: Policy,
                 allowed: Callable[[Waiter], bool]) -> int | None:
    """As `pick()`, among the line heads `allowed` accepts; None when it accepts none. A line
    whose head may not enter waits whole: its later requests do not jump their own head."""
    ok = [i for i in heads(waiters) if allowed(waiters[i])]
    return min(ok, key=lambda i: priority(waiters[i], now, policy)) if ok else None


def headroom(policy: Policy, slots: int) -> int:
    """Slots the rest leave free while contributors are about: `headroom_share` of them,
    rounded up, leaving the rest at least one (so none on a one-slot engine)."""
    if policy.headroom_share <= 0:
        return 0
    return max(0, min(math.ceil(slots * policy.headroom_share), slots - 1))


def held_back(waiter: Waiter, running: int, slots: int, contributor_seen: float | None,
              now: float, policy: Policy = Policy()) -> bool:
    """Must `waiter` leave a free slot alone? Only a request of class rest that has headed
    its line for less than `age_step_s`, while a contributor arrived (at `contributor_seen`)
    within `headroom_window_s`, when entering would leave fewer than `headroom()` slots
    free with `running` requests in the engine."""
    if waiter.klass != "rest" or contributor_seen is None or now >= release_at(
            waiter, contributor_seen, policy):
        return False
    return running >= slots - headroom(policy, slots)


def release_at(waiter: Waiter, contributor_seen: float, policy: Policy = Policy()) -> float:
    """When `held_back()` stops holding `waiter` back, unless another contributor comes."""
    return min(contributor_seen + policy.headroom_window_s,
               waiter.aging_from + policy.age_step_s)


def promote(waiters: Sequence[Waiter], gone: Waiter, now: float) -> int | None:
    """`gone` left the queue (entered the engine, or was cancelled): if it headed its line,
    the index of the waiter that heads it from `now`, else None. The caller sets that
    waiter's `head_since` to `now`."""
    same = [i for i, w in enumerate(waiters) if w.consumer == gone.consumer]
    if not same:
        return None
    nxt = min(same, key=lambda i: waiters[i].seq)
    return nxt if gone.seq < waiters[nxt].seq else None


def wait_bound(policy: Policy, slots: int, lines: int, longest_answer_s: float) -> float:
    """The longest a line's head can wait (seconds), given at most `lines` consumers waiting
    and no answer longer than `longest_answer_s`: the overtaking window, then one entry per
    other line. The k-th request of a line waits at most k times this."""
    return (MAX_RANK * policy.age_step_s
            + math.ceil(lines / max(1, slots)) * longest_answer_s)
