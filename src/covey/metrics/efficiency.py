"""Mesh efficiency: through-mesh decode tokens/s ÷ the native baseline, like with like.

The baseline is the median decode rate of deterministic chats of `baseline_tokens` tokens
(128 by default, see metrics/baseline.py). A short answer decodes slower per token than a
long one (the first tokens after the prompt are the slowest), so mixing short chat answers
into the comparison made an idle node read ~75 %. The rule:

    a sample is comparable when it measured decode alone (a streamed answer on this node's
    clock, or llama.cpp's own timings of a whole answer; not a whole answer timed on this
    node's clock, which has prompt processing inside it) over half to twice the baseline's
    tokens; efficiency is the median comparable rate ÷ the baseline, with its sample count.

The upper bound matters too: every token attends to all before it, so a 2,000-token answer
decodes slower per token than a 128-token one on the same idle engine.

Through the mesh cannot be much faster than native: a ratio above `SUSPECT_ABOVE` over a few
comparable samples says the baseline is wrong (taken while the machine was busy, say), not
that the mesh is fast. Such a ratio is flagged, never shown as a triumph, and the baseline
keeper measures again when the engine is idle.

Pure: the caller hands in the window's samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from covey.metrics.samples import Speed, median

COMPARABLE_SHARE = 0.5  # of the baseline's tokens a sample must cover to be compared with it
COMPARABLE_MAX = 2.0  # times the baseline's tokens a sample may cover and still be compared
SUSPECT_ABOVE = 1.25  # through-mesh ÷ native above this: the baseline is too low
SUSPECT_SAMPLES = 3  # comparable samples needed before calling a baseline too low


@dataclass(frozen=True)
class Efficiency:
    ratio: float | None  # None when there is no baseline or no comparable sample
    samples: int  # comparable samples behind `ratio`

    @property
    def baseline_suspect(self) -> bool:
        """The native baseline reads too low to be believed (see the module docstring)."""
        return (self.ratio is not None and self.ratio > SUSPECT_ABOVE
                and self.samples >= SUSPECT_SAMPLES)


def min_tokens(baseline_tokens: int) -> int:
    """Completion tokens a sample needs to be compared with a baseline of that length."""
    return max(2, math.ceil(COMPARABLE_SHARE * baseline_tokens))


def max_tokens(baseline_tokens: int) -> int:
    return max(min_tokens(baseline_tokens), math.floor(COMPARABLE_MAX * baseline_tokens))


def comparable(speed: Speed, baseline_tokens: int) -> bool:
    return (speed.source != "clock"
            and min_tokens(baseline_tokens) <= speed.tokens <= max_tokens(baseline_tokens))


def efficiency(speeds: Iterable[Speed], native_tokens_per_s: float | None,
               baseline_tokens: int) -> Efficiency:
    rates = [s.tokens_per_s for s in speeds if comparable(s, baseline_tokens)]
    if not rates or not native_tokens_per_s:
        return Efficiency(None, len(rates))
    return Efficiency(median(rates) / native_tokens_per_s, len(rates))
