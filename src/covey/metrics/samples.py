"""Rolling windows of real-traffic measurements (TTFT, decode tokens/s) with percentiles.

Pure: the caller passes `now`, so tests drive time by hand.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from covey.types import Percentiles

# Where a decode-speed sample came from:
#   stream  the node's clock over a streamed answer's first → last token (decode only)
#   engine  llama.cpp's own `timings` in a whole answer's body (decode only; a peer's clamped)
#   clock   a whole answer without timings: completion tokens ÷ request → answer time, so
#           prompt processing is inside it and it reads lower than a decode rate
SpeedSource = Literal["stream", "engine", "clock"]
SPEED_SOURCES: tuple[SpeedSource, ...] = ("stream", "engine", "clock")


@dataclass(frozen=True, slots=True)
class Speed:
    """One decode-speed sample: the rate, over how many completion tokens, and its kind."""

    tokens_per_s: float
    tokens: int
    source: SpeedSource


@dataclass
class RollingWindow:
    """Samples younger than `window_s` seconds, at most `max_samples` of them (oldest dropped).

    The values are also kept sorted as they come and go: routing asks several windows for
    their percentiles on every request, and sorting up to `max_samples` values each time
    cost a busy node milliseconds per request."""

    window_s: float
    max_samples: int = 10_000
    _samples: deque[tuple[float, float]] = field(default_factory=deque)
    _sorted: list[float] = field(default_factory=list)

    def add(self, value: float, now: float) -> None:
        self._samples.append((now, value))
        bisect.insort(self._sorted, value)
        if len(self._samples) > self.max_samples:
            self._drop()
        self._expire(now)

    def summary(self, now: float) -> Percentiles:
        self._expire(now)
        values = self._sorted
        if not values:
            return Percentiles(count=0, p50=None, p95=None)
        return Percentiles(count=len(values), p50=percentile(values, 50),
                           p95=percentile(values, 95))

    def values(self, now: float) -> list[float]:
        self._expire(now)
        return [v for _, v in self._samples]

    def timed(self, now: float) -> list[tuple[float, float]]:
        """(time, value) pairs in the window, oldest first."""
        self._expire(now)
        return list(self._samples)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._drop()

    def _drop(self) -> None:
        """Forget the oldest sample."""
        _, value = self._samples.popleft()
        i = bisect.bisect_left(self._sorted, value)
        if i < len(self._sorted) and self._sorted[i] == value:
            del self._sorted[i]
        else:  # a value that does not order (NaN) sits wherever it was inserted
            self._sorted.remove(value)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def series(samples: list[tuple[float, float]], now: float, bucket_s: float
           ) -> list[tuple[float, float]]:
    """Median per `bucket_s` slice, as (bucket end time, median), oldest first; a slice
    without samples is left out (a gap, never a zero)."""
    buckets: dict[int, list[float]] = {}
    for t, v in samples:
        buckets.setdefault(math.floor((now - t) / bucket_s), []).append(v)
    return [(now - age * bucket_s, median(vs)) for age, vs in sorted(buckets.items(),
                                                                      reverse=True)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class ModelMeter:
    """Real-traffic measurements for one model on this node."""

    window_s: float
    ttft_ms: RollingWindow = field(init=False)
    tokens_per_s: RollingWindow = field(init=False)
    requests_ok: int = 0
    requests_failed: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        self.ttft_ms = RollingWindow(self.window_s)
        self.tokens_per_s = RollingWindow(self.window_s)
        self.latency_ms = RollingWindow(self.window_s)
        # Prompt tokens ÷ TTFT of streamed answers: what the SLA gate predicts TTFT from.
        self.prefill_tokens_per_s = RollingWindow(self.window_s)
        self.speeds = SpeedLog(self.window_s)

    def record(self, ttft_ms: float | None, tokens_per_s: float | None, tokens: int,
               now: float, source: SpeedSource = "stream",
               latency_ms: float | None = None) -> None:
        """One completed request. `tokens_per_s` of kind `source` over `tokens` completion
        tokens; `latency_ms` from the request's arrival to the answer's end."""
        self.requests_ok += 1
        self.completion_tokens += tokens
        if ttft_ms is not None:
            self.ttft_ms.add(ttft_ms, now)
        if tokens_per_s is not None:
            self.tokens_per_s.add(tokens_per_s, now)
            self.speeds.add(Speed(tokens_per_s, tokens, source), now)
        if latency_ms is not None:
            self.latency_ms.add(latency_ms, now)


@dataclass
class SpeedLog:
    """The decode-speed samples of the window with their token counts and kinds, for rules
    that need more than the rate (which samples compare with the baseline, which kind)."""

    window_s: float
    max_samples: int = 10_000
    _samples: deque[tuple[float, Speed]] = field(default_factory=deque)

    def add(self, speed: Speed, now: float) -> None:
        self._samples.append((now, speed))
        if len(self._samples) > self.max_samples:
            self._samples.popleft()
        horizon = now - self.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def samples(self, now: float) -> list[Speed]:
        horizon = now - self.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        return [s for _, s in self._samples]
