"""Fair-share priority: which waiting request enters a contended local engine next (pure).

llama.cpp serves its queue first come, first served, so the ordering lives in Covey's
admission queue (`router/admission.py`) in front of the engine. When a slot frees, `pick()`
chooses the waiter with the lowest `priority()`:

    score = rank − waited / age_step_s        (lower goes first; ties: earlier arrival)

    rank  0                      this node's own clients (its own hardware serves them first)
          1 + 2^(−balance/share) a member with a positive balance: in (1, 2), lower for a
                                 larger balance
          2                      everyone else: zero, negative or unknown standing

The member term is Slurm's fair-share factor F = 2^(−usage/share) turned around: Slurm halves
a user's priority for every share of recent usage; here every `share` credits a member has
banked (given minus used, as the ledger keeps them) halves its distance to the head of the
member class. A member at balance 0 sits with the rest; one far in credit almost ties own
requests that just arrived. Among equals (the default `standing` knows no one) the rule is
plain first come, first served, as llama.cpp's own queue was.

Age: every `age_step_s` seconds waited lifts a waiter one whole class, so nobody waits
forever. Bound: a waiter `w` arriving at `t_w` can be passed only by waiters already queued
then, or by one `x` arriving at `t_x` with `(t_x − t_w) / age_step_s < rank_w − rank_x ≤
MAX_RANK`. After `t_w + MAX_RANK · age_step_s` no newcomer outranks `w`, and only the
waiters already queued at that moment (at most `max_queue − 1` besides `w`) can go before
it: `w` enters the engine by the `max_queue`-th slot release after that instant. With
`slots` slots and no answer longer than `T`, that is a wait of at most
`MAX_RANK · age_step_s + ceil(max_queue / slots) · T` (`wait_bound()`;
tests/unit/test_fairshare.py checks it).
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

    # seconds a waiter must wait to rise one class (own ← member ← rest)
    age_step_s: float = 10.0
    # credits of balance that halve a member's distance to the head of the member class
    share_credits: float = 100.0

    def __post_init__(self) -> None:
        for name in ("age_step_s", "share_credits"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"fair-share {name} must be a positive number, not {value!r}")


@dataclass(frozen=True, slots=True)
class Waiter:
    """One request waiting for a slot: its class and standing when it arrived, its arrival
    time (the caller's clock, seconds) and an arrival counter that breaks exact ties."""

    klass: ConsumerClass
    standing: float | None
    arrived: float
    seq: int = 0


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
        return 1.0 + math.pow(2.0, -waiter.standing / policy.share_credits)
    return MAX_RANK


def priority(waiter: Waiter, now: float, policy: Policy = Policy()
             ) -> tuple[float, float, int]:
    """Sort key: lower goes first. Age lowers the score by one class per `age_step_s`."""
    waited = max(0.0, now - waiter.arrived)
    return (rank(waiter, policy) - waited / policy.age_step_s, waiter.arrived, waiter.seq)


def pick(waiters: Sequence[Waiter], now: float, policy: Policy = Policy()) -> int:
    """The index of the waiter that enters next. `waiters` must not be empty."""
    if not waiters:
        raise ValueError("pick() needs at least one waiter")
    return min(range(len(waiters)), key=lambda i: priority(waiters[i], now, policy))


def wait_bound(policy: Policy, slots: int, max_queue: int, longest_answer_s: float) -> float:
    """The longest any waiter can wait (seconds), given that no answer takes longer than
    `longest_answer_s`: the overtaking window plus draining a full queue."""
    return (MAX_RANK * policy.age_step_s
            + math.ceil(max_queue / max(1, slots)) * longest_answer_s)
