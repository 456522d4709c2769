"""The admission queue in front of one local engine: at most `slots` requests inside it,
the rest waiting here in the order `fairshare.pick()` gives.

llama.cpp would queue requests past its slots itself, first come, first served; holding them
in Covey instead is what lets the consumer's standing order them. Every request that enters
leaves exactly once (`leave()`), and a waiter that is cancelled (its client went away) is
removed, or passes on the slot it was given in the same instant: no path leaks a slot.
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
    pick,
    promote,
)

Clock = Callable[[], float]


@dataclass(slots=True)
class _Entry:
    waiter: Waiter
    granted: asyncio.Future[None]


class Admission:
    """Counts the requests inside the engine (`running`) and holds the ones waiting.

    Not thread-safe: one event loop owns it, like the rest of the router."""

    def __init__(self, policy: Policy | None = None, clock: Clock = time.monotonic,
                 window_s: float = 3600.0) -> None:
        self.policy = policy or Policy()
        self.clock = clock
        self.running = 0
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
        if self.running < slots and not self._queue:
            self.running += 1
            self.waits[klass].add(0.0, now)
            return
        entry = _Entry(Waiter(klass, standing, now, next(self._seq), consumer),
                       asyncio.get_running_loop().create_future())
        self._queue.append(entry)
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

    def _fill(self, slots: int) -> None:
        while self.running < slots and self._queue:
            now = self.clock()
            entry = self._queue.pop(pick([e.waiter for e in self._queue], now, self.policy))
            self._promote(entry.waiter, now)
            if entry.granted.done():  # cancelled, its task not yet run: it holds nothing
                continue
            self.running += 1
            entry.granted.set_result(None)
            self.waits[entry.waiter.klass].add((now - entry.waiter.arrived) * 1000, now)

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

