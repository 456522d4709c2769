"""The admission queue in front of one local engine: at most `slots` requests inside it,
the rest waiting here in the order `fairshare.pick()` gives.

llama.cpp would queue requests past its slots itself, first come, first served; holding them
in Covey instead is what lets the consumer's standing order them. Every request that enters
leaves exactly once (`leave()`), and a waiter that is cancelled (its client went away) is
removed, or passes on the slot it was given in the same instant: no path leaks a slot.

Headroom (`fairshare.held_back()`): while contributors are about, the rest leave a slot free
for them. A rest request held back only by that waits with a slot free; a timer re-runs the
queue when the hold lapses, so that slot is not left idle waiting for an arrival or a release.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from covey.metrics.samples import RollingWindow, percentile
from covey.router.fairshare import (
    CLASSES,
    ConsumerClass,
    Policy,
    Waiter,
    classify,
    heads,
    held_back,
    pick_allowed,
    promote,
    release_at,
)

Clock = Callable[[], float]
# Run a callback at a time on the admission's clock: the event loop's timer by default (for
# the default clock, time.monotonic); a simulated clock brings its own.
Schedule = Callable[[float, Callable[[], None]], object]


@dataclass(slots=True)
class _Entry:
    waiter: Waiter
    granted: asyncio.Future[None]


class Admission:
    """Counts the requests inside the engine (`running`) and holds the ones waiting.

    Not thread-safe: one event loop owns it, like the rest of the router."""

    def __init__(self, policy: Policy | None = None, clock: Clock = time.monotonic,
                 window_s: float = 3600.0, schedule: Schedule | None = None) -> None:
        self.policy = policy or Policy()
        self.clock = clock
        self._schedule = schedule or self._call_later
        self.running = 0
        self.contributor_seen: float | None = None  # the last own or member arrival
        self._wake_at: float | None = None  # when the pending re-run fires (None: none)
        self._queue: list[_Entry] = []
        self._seq = itertools.count()
        # Milliseconds waited before entering the engine, per consumer class (0 when a slot
        # was free): what /api/status shows.
        self.waits = {k: RollingWindow(window_s) for k in CLASSES}

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def enter(self, slots: int, consumer: str | None, standing: float | None) -> None:
        """Return once this request holds one of the engine's `slots`; the caller must then
        call `leave()` exactly once. Raises CancelledError (holding nothing) if cancelled."""
        now = self.clock()
        klass = classify(consumer, standing)
        if klass != "rest":
            self.contributor_seen = now
        waiter = Waiter(klass, standing, now, next(self._seq), consumer)
        if self.running < slots and not self._queue and not self._held(waiter, now, slots):
            self.running += 1
            self.waits[klass].add(0.0, now)
            return
        entry = _Entry(waiter, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._fill(slots)  # a slot the headroom kept free may be this request's
        try:
            await entry.granted
        except BaseException:
            # Cancelled (the client left) or the loop is closing.
            if entry.granted.done() and not entry.granted.cancelled():
                # The slot was handed over in the same instant: pass it on.
                self.leave(slots)
            elif entry in self._queue:
                self._queue.remove(entry)
                self._promote(entry.waiter, self.clock())
            raise

    def leave(self, slots: int) -> None:
        """One request left the engine: its slot goes to the waiter `pick()` chooses."""
        self.running -= 1
        self._fill(slots)

    def _held(self, waiter: Waiter, now: float, slots: int) -> bool:
        return held_back(waiter, self.running, slots, self.contributor_seen, now, self.policy)

    def _fill(self, slots: int) -> None:
        while self.running < slots and self._queue:
            now = self.clock()
            waiters = [e.waiter for e in self._queue]
            i = pick_allowed(waiters, now, self.policy,
                             lambda w: not self._held(w, now, slots))  # noqa: B023
            if i is None:  # only rest heads wait, and the headroom holds them back
                self._wake_later(waiters, slots)
                return
            entry = self._queue.pop(i)
            self._promote(entry.waiter, now)
            if entry.granted.done():  # cancelled, its task not yet run: it holds nothing
                continue
            self.running += 1
            entry.granted.set_result(None)
            self.waits[entry.waiter.klass].add((now - entry.waiter.arrived) * 1000, now)

    def _wake_later(self, waiters: list[Waiter], slots: int) -> None:
        assert self.contributor_seen is not None  # nothing is held back before one came
        seen = self.contributor_seen
        due = min(release_at(waiters[i], seen, self.policy) for i in heads(waiters))
        if self._wake_at is not None and self._wake_at <= due:
            return  # the pending re-run comes first and schedules the next itself
        self._wake_at = due
        self._schedule(due, lambda: self._wake(slots))

    def _wake(self, slots: int) -> None:
        self._wake_at = None
        self._fill(slots)

    def _call_later(self, when: float, callback: Callable[[], None]) -> object:
        return asyncio.get_running_loop().call_later(max(0.0, when - self.clock()), callback)

    def _promote(self, gone: Waiter, now: float) -> None:
        i = promote([e.waiter for e in self._queue], gone, now)
        if i is not None:
            self._queue[i].waiter = replace(self._queue[i].waiter, head_since=now)

    def waiting_by_class(self) -> dict[ConsumerClass, int]:
        """How many requests of each class are waiting now."""
        counts: dict[ConsumerClass, int] = dict.fromkeys(CLASSES, 0)
        for entry in self._queue:
            counts[entry.waiter.klass] += 1
        return counts

    def wait_summary(self, now: float) -> dict[str, dict[str, Any]]:
        """Per consumer class: requests admitted in the window, p50 and max queue wait (ms;
        None without a request)."""
        out: dict[str, dict[str, Any]] = {}
        for klass, window in self.waits.items():
            values = sorted(window.values(now))
            out[klass] = {"count": len(values),
                          "p50": percentile(values, 50) if values else None,
                          "max": values[-1] if values else None}
        return out

