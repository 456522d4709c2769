"""How many provider requests each client, and each provider, may still have (pure).

Sliding windows of spend times, one per client and one per provider; the caller passes
`now` (monotonic seconds). In memory: a restart gives everyone a fresh window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_CLIENTS = 10_000  # hostile clients must not grow this without bound


@dataclass
class Budget:
    per_client: int  # provider requests per client per window
    window_s: float
    provider_caps: dict[str, int | None] = field(default_factory=dict)  # None: no cap
    _clients: dict[str, deque[float]] = field(default_factory=dict)
    _providers: dict[str, deque[float]] = field(default_factory=dict)

    def wait_s(self, client: str, provider: str, now: float) -> float | None:
        """None: `client` may send one more request to `provider` now. Otherwise the seconds
        until the tighter of its two budgets has room again."""
        waits = [w for w in (_wait(self._clients.get(client), self.per_client, self.window_s,
                                   now),
                             _wait(self._providers.get(provider),
                                   self.provider_caps.get(provider), self.window_s, now))
                 if w is not None]
        return max(waits) if waits else None

    def spend(self, client: str, provider: str, now: float) -> None:
        if client not in self._clients and len(self._clients) >= MAX_CLIENTS:
            self._forget_idle(now)
        self._clients.setdefault(client, deque()).append(now)
        self._providers.setdefault(provider, deque()).append(now)

    def refund(self, client: str, provider: str, spent_at: float) -> None:
        """Undo a spend: the provider failed before answering, so it did not count."""
        for log in (self._clients.get(client), self._providers.get(provider)):
            if log is not None and spent_at in log:
                log.remove(spent_at)

    def used(self, provider: str, now: float) -> int:
        log = self._providers.get(provider)
        if log is None:
            return 0
        _expire(log, self.window_s, now)
        return len(log)

    def _forget_idle(self, now: float) -> None:
        for client in list(self._clients):
            _expire(self._clients[client], self.window_s, now)
            if not self._clients[client]:
                del self._clients[client]
        while len(self._clients) >= MAX_CLIENTS:  # all busy: drop the oldest-spending one
            del self._clients[min(self._clients, key=lambda c: self._clients[c][0])]


def _expire(log: deque[float], window_s: float, now: float) -> None:
    while log and log[0] <= now - window_s:
        log.popleft()


def _wait(log: deque[float] | None, cap: int | None, window_s: float,
          now: float) -> float | None:
    if cap is None:
        return None
    if log is not None:
        _expire(log, window_s, now)
    spent = len(log) if log is not None else 0
    if spent < cap:
        return None
    if log is None or cap == 0 or not log:
        return window_s  # a zero cap: never (the caller shows the window as the wait)
    return log[spent - cap] + window_s - now
