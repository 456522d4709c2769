"""Fair-share load run: two contributors and one free-rider saturate one provider's engine.

    python -m covey.bench.fairshare [--json] [--seed N] [--hours H]

Drives the real admission queue (`router/admission.py`, ordering by `router/fairshare.py`)
with a simulated engine on a simulated clock: each answer holds a slot for its token count
× a per-token delay, like tests/fake_backend.py. A fake engine because the figures need an
engine that saturates on demand and answers in a controlled time (a real one on a shared
machine saturates at an arbitrary load and drifts); a simulated clock because queue waits
measured this way are exact and repeatable, so the run takes a second, not hours.

Three runs of the same seeded traffic:
  uncontended  the contributors alone
  fair-share   the contributors and the free-rider, contributors in credit
  no-standing  the same load with nobody's standing known (the default until the ledger is
               wired): equal lines, each head in turn by how long it has headed its line

Clients: each contributor sends Poisson arrivals (open loop, `--contributor-load` of the
engine's capacity between them); the free-rider keeps `--free-rider-users` requests always
outstanding (closed loop, no pause: it alone would saturate the engine).
Printed per run and client: requests served and refused (Busy), queue wait p50/p95/max (s).
The issue's goal: contributors' p50 wait within 1.5× of the uncontended run, the free-rider
still served with its max wait bounded (`fairshare.wait_bound()` per line head, times its
line's length). The queue preempts no running answer; what keeps contributors from waiting
behind the free-rider is the headroom (`--headroom`, `fairshare.held_back()`): while they are
about, the free-rider leaves a share of the slots free. docs/bench.md has the figures across
loads and headrooms.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from covey.errors import Busy
from covey.metrics.samples import percentile
from covey.router.admission import Admission
from covey.router.fairshare import Policy, wait_bound


@dataclass(frozen=True)
class Client:
    name: str
    standing: float | None
    rate_per_s: float | None = None  # open loop: Poisson arrivals
    users: int = 0  # closed loop: this many requests always outstanding


@dataclass
class Tally:
    waits: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # wait + answer
    refused: int = 0

    def summary(self) -> dict[str, Any]:
        return {"served": len(self.waits), "refused": self.refused,
                "wait_s": _spread(self.waits), "latency_s": _spread(self.latencies)}


def _spread(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    return {"p50": _r(percentile(v, 50)) if v else None,
            "p95": _r(percentile(v, 95)) if v else None, "max": _r(v[-1]) if v else None}


def _r(x: float) -> float:
    return round(x, 3)


class _Sim:
    """A discrete-event run: an event heap on a simulated clock, the admission queue's
    tasks on a real event loop (each event, then one loop turn for the tasks it woke)."""

    def __init__(self, slots: int, max_queue: int, policy: Policy, seed: int,
                 service_s: Callable[[random.Random], float]) -> None:
        self.now = 0.0
        self.slots, self.max_queue = slots, max_queue
        self.seed, self.service_s = seed, service_s
        # One random stream per client (its arrivals and its answers' lengths), so a
        # contributor's traffic is the same request for request in every run, whoever else
        # is there: the runs differ only in what the queue does.
        self.rngs: dict[str, random.Random] = {}
        self.admission = Admission(policy, clock=lambda: self.now,
                                   schedule=lambda t, fn: self.at(t, fn))
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.tallies: dict[str, Tally] = {}
        self.in_flight = 0
        self.longest_answer_s = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    def rng(self, client: Client) -> random.Random:
        if client.name not in self.rngs:
            self.rngs[client.name] = random.Random(f"{self.seed}:{client.name}")
        return self.rngs[client.name]

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn))

    def arrive(self, client: Client) -> None:
        task = asyncio.get_running_loop().create_task(self.request(client))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if client.rate_per_s is not None:
            self.at(self.now + self.rng(client).expovariate(client.rate_per_s),
                    lambda: self.arrive(client))

    async def request(self, client: Client) -> None:
        tally = self.tallies.setdefault(client.name, Tally())
        arrived = self.now
        if self.in_flight >= self.slots + self.max_queue:  # as ServedModel.check()
            tally.refused += 1
            self._next(client, Busy("full"))
            return
        self.in_flight += 1
        await self.admission.enter(self.slots, client.name, client.standing)
        tally.waits.append(self.now - arrived)
        service = self.service_s(self.rng(client))
        tally.latencies.append(self.now - arrived + service)
        self.longest_answer_s = max(self.longest_answer_s, service)
        self.at(self.now + service, lambda: self.done(client))

    def done(self, client: Client) -> None:
        self.in_flight -= 1
        self.admission.leave(self.slots)
        self._next(client, None)

    def _next(self, client: Client, refused: Busy | None) -> None:
        if client.users:  # closed loop: the user asks again (after a pause if refused)
            self.at(self.now + (1.0 if refused else 0.0), lambda: self.arrive(client))

    async def run(self, clients: list[Client], horizon_s: float) -> dict[str, Tally]:
        for c in clients:
            for _ in range(c.users or 1):
                self.at(self.rng(c).uniform(0, 1), lambda c=c: self.arrive(c))  # type: ignore[misc]
        while self.events and self.events[0][0] <= horizon_s:
            t, _, fn = heapq.heappop(self.events)
            self.now = t
            fn()
            # One turn runs every task this event started or woke up to its next await
            # (a woken waiter resumes in the turn after set_result); the second is margin.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return self.tallies


def run(seed: int = 1, hours: float = 1.0, slots: int = 4, max_queue: int = 64,
        contributor_load: float = 0.8, free_rider_users: int = 16,
        policy: Policy | None = None) -> dict[str, Any]:
    """The three runs (see the module docstring) as one JSON-ready dict."""
    policy = policy or Policy()
    tokens, token_s = (32, 160), 0.02  # per answer; seconds per token of the fake engine
    mean_service = (tokens[0] + tokens[1]) / 2 * token_s

    def service(rng: random.Random) -> float:
        return rng.randint(*tokens) * token_s

    rate = contributor_load * slots / mean_service / 2  # each of the two contributors
    contributors = [Client("contributor-a", 300.0, rate_per_s=rate),
                    Client("contributor-b", 120.0, rate_per_s=rate)]
    runs = {
        "uncontended": contributors,
        "fair-share": [*contributors, Client("free-rider", -50.0, users=free_rider_users)],
        "no-standing": [Client(c.name, None, rate_per_s=c.rate_per_s) for c in contributors]
        + [Client("free-rider", None, users=free_rider_users)],
    }
    out: dict[str, Any] = {
        "params": {"seed": seed, "hours": hours, "slots": slots, "max_queue": max_queue,
                   "answer_s": [tokens[0] * token_s, tokens[1] * token_s],
                   "contributor_load": contributor_load,
                   "contributor_rate_per_s": _r(rate),
                   "free_rider_users": free_rider_users,
                   "age_step_s": policy.age_step_s, "share_credits": policy.share_credits,
                   "headroom_share": policy.headroom_share,
                   "headroom_window_s": policy.headroom_window_s},
        "runs": {}}
    longest = 0.0
    for name, clients in runs.items():
        sim = _Sim(slots, max_queue, policy, seed, service)
        tallies = asyncio.run(sim.run(clients, hours * 3600))
        longest = max(longest, sim.longest_answer_s)
        out["runs"][name] = {c: t.summary() for c, t in sorted(tallies.items())}
    # A free-rider request waits behind its own line (at most `free_rider_users` long), each
    # head at most the head bound for three lines.
    head_bound = wait_bound(policy, slots, 3, longest)
    bound = free_rider_users * head_bound
    fair, alone = out["runs"]["fair-share"], out["runs"]["uncontended"]
    ratios = {c: _ratio(fair[c]["wait_s"]["p50"], alone[c]["wait_s"]["p50"])
              for c in alone}
    latency = {c: _ratio(fair[c]["latency_s"]["p50"], alone[c]["latency_s"]["p50"])
               for c in alone}
    out["verdict"] = {
        "contributor_p50_wait_ratio": ratios,
        "contributors_wait_within_1_5x": all(r is not None and r <= 1.5
                                             for r in ratios.values()),
        "contributor_p50_latency_ratio": latency,
        "free_rider_served": fair["free-rider"]["served"],
        "free_rider_max_wait_s": fair["free-rider"]["wait_s"]["max"],
        "head_wait_bound_s": _r(head_bound),
        "free_rider_wait_bound_s": _r(bound),
        "free_rider_within_bound": (fair["free-rider"]["wait_s"]["max"] or 0.0) <= bound,
    }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else None
    return _r(a / b)


def _print(result: dict[str, Any]) -> None:
    p = result["params"]
    print(f"fair-share bench: {p['slots']} slots, answers {p['answer_s'][0]:.2f}-"
          f"{p['answer_s'][1]:.2f} s, contributors {p['contributor_load']:.0%} of capacity, "
          f"free-rider {p['free_rider_users']} users, {p['hours']} h simulated, seed "
          f"{p['seed']}")
    for run_name, clients in result["runs"].items():
        print(f"  {run_name}:")
        for c, s in clients.items():
            w, lat = s["wait_s"], s["latency_s"]
            print(f"    {c:14} served {s['served']:6} refused {s['refused']:5}  wait p50 "
                  f"{w['p50']}s p95 {w['p95']}s max {w['max']}s; latency p50 {lat['p50']}s")
    print(f"  verdict: {json.dumps(result['verdict'])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seed", type=int, default=1, help="traffic seed")
    p.add_argument("--hours", type=float, default=1.0, help="simulated hours per run")
    p.add_argument("--contributor-load", type=float, default=0.8,
                   help="the contributors' load together, as a fraction of the engine's "
                        "capacity")
    p.add_argument("--free-rider-users", type=int, default=16,
                   help="requests the free-rider keeps outstanding")
    p.add_argument("--age-step", type=float, default=Policy().age_step_s,
                   help="seconds of waiting that lift a request one class")
    p.add_argument("--headroom", type=float, default=Policy().headroom_share,
                   help="share of the slots the free-rider leaves free while contributors "
                        "are about (0: none)")
    p.add_argument("--headroom-window", type=float, default=Policy().headroom_window_s,
                   help="seconds after a contributor's request that the headroom is kept")
    args = p.parse_args()
    policy = Policy(age_step_s=args.age_step, headroom_share=args.headroom,
                    headroom_window_s=args.headroom_window)
    result = run(args.seed, args.hours, contributor_load=args.contributor_load,
                 free_rider_users=args.free_rider_users, policy=policy)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)


if __name__ == "__main__":
    main()
