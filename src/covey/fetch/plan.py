"""Which chunk each source fetches next, and what a failure costs it: pure, no I/O.

The fetcher (`fetch/peers.py`) asks `next_for(source)` whenever one of a source's request
slots is free and reports every outcome back; this class decides. Chunks wait in one shared
queue, so a fast source simply takes more of them (work stealing without stealing). When
the queue is empty, an idle source may take a chunk still in flight at another source (the
end game), so one slow source cannot hold up the last chunk; the first verified copy wins.
A source that sends a chunk whose hash is wrong is dropped at once; one that fails
`max_errors` times (errors, timeouts, refusals) is dropped too. Its chunks go back to the
queue, front first, for the others.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_HOLDERS = 2  # copies of one chunk in flight at once, in the end game


@dataclass
class SourceState:
    errors: int = 0
    dropped: str | None = None  # why, once dropped
    verified_bytes: int = 0
    holding: set[int] = field(default_factory=set)


class Plan:
    def __init__(self, count: int, sources: Iterable[str], *, done: Iterable[int] = (),
                 max_errors: int = 3) -> None:
        self.count = count
        self.max_errors = max_errors
        self.done: set[int] = {i for i in done if 0 <= i < count}
        self.queue: deque[int] = deque(i for i in range(count) if i not in self.done)
        self.holders: dict[int, set[str]] = {}  # chunk in flight → sources fetching it
        self.sources: dict[str, SourceState] = {s: SourceState() for s in sources}

    # --- questions ----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return len(self.done) == self.count

    def alive(self) -> list[str]:
        return [s for s, st in self.sources.items() if st.dropped is None]

    @property
    def stuck(self) -> bool:
        """No source is left and chunks are still missing."""
        return not self.finished and not self.alive()

    def dropped(self) -> dict[str, str]:
        return {s: st.dropped for s, st in self.sources.items() if st.dropped is not None}

    # --- decisions ----------------------------------------------------------------------

    def next_for(self, source: str) -> int | None:
        """The chunk `source` should fetch next (now marked in flight there), or None: it
        has nothing to do for now (or was dropped)."""
        state = self.sources[source]
        if state.dropped is not None or self.finished:
            return None
        if self.queue:
            index = self.queue.popleft()
        else:  # the end game: help with the chunk fewest others are fetching
            spare = [i for i, h in self.holders.items()
                     if source not in h and len(h) < MAX_HOLDERS]
            if not spare:
                return None
            index = min(spare, key=lambda i: (len(self.holders[i]), i))
        self.holders.setdefault(index, set()).add(source)
        state.holding.add(index)
        return index

    def on_verified(self, index: int, source: str, length: int) -> bool:
        """`source` delivered chunk `index` and it matched the manifest. True when it is the
        first copy (the caller has written it); False for a late duplicate."""
        state = self.sources[source]
        state.holding.discard(index)
        first = index not in self.done
        if first:
            self.done.add(index)
            state.verified_bytes += length
        self._release(index, source, requeue=False)
        return first

    def on_bad(self, index: int, source: str, reason: str) -> None:
        """`source` sent chunk `index` with the wrong hash: it is dropped at once."""
        self._drop(source, reason)
        self._release(index, source, requeue=True)

    def on_error(self, index: int, source: str, reason: str) -> bool:
        """`source` failed to deliver chunk `index` (error, timeout, refusal). Returns True
        when that was its last chance and it is now dropped."""
        state = self.sources[source]
        state.errors += 1
        if state.dropped is None and state.errors >= self.max_errors:
            self._drop(source, f"{state.errors} failures, the last: {reason}")
            self._release(index, source, requeue=True)
            return True
        self._release(index, source, requeue=True)
        return False

    def drop(self, source: str, reason: str) -> None:
        """Give up on `source` outright (it refused the file, or its manifest was wrong)."""
        self._drop(source, reason)

    def _drop(self, source: str, reason: str) -> None:
        state = self.sources[source]
        if state.dropped is None:
            state.dropped = reason

    def _release(self, index: int, source: str, *, requeue: bool) -> None:
        self.sources[source].holding.discard(index)
        holders = self.holders.get(index)
        if holders is not None:
            holders.discard(source)
            if not holders:
                del self.holders[index]
        # Back to the front: a chunk that failed is the one most likely to hold up the end.
        if requeue and index not in self.done and index not in self.holders \
                and index not in self.queue:
            self.queue.appendleft(index)
