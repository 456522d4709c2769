"""Mesh share: of the requests clients sent to this node, how many the mesh answered.

Each node counts the requests it received from clients (it was their entry), once each, by
who answered: this node's engine or attached backend ("local"), a peer ("peer"), or an
external provider ("provider", the SLA fallback). Mesh-served = local + peer. Requests that
peers relayed here are not counted (their entry counted them), nor health probes or the
native baseline's chats (they never pass the client API). Only answered requests count: a
stream counts once it reached its end, a whole answer once its body was read; a request that
failed everywhere, or whose client hung up mid-stream, was answered by nobody.

Counts are kept in hourly buckets keyed by (hour, source), `KEEP_HOURS` (8 days) of them, in
SQLite in the data dir so a restart keeps the history. `mesh_share()` is the pure part:
buckets and `now` in, the 24 h and 7 d windows out, shares None when a window saw no traffic
(never 0 or 1 for "nothing").

Writes are batched: `record()` only adds to the in-memory buckets (the request path pays a
dict update), and `run()` writes the changed buckets every `flush_s` seconds in a worker
thread (`asyncio.to_thread`), one transaction each time, so a disk's fsync never stalls the
event loop and a busy node does not commit once per request. `close()` writes the rest on
shutdown. A node killed outright (SIGKILL, power loss) loses at most the last `flush_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

log = logging.getLogger(__name__)

Source = Literal["local", "peer", "provider"]
SOURCES: tuple[Source, ...] = get_args(Source)
MESH: frozenset[Source] = frozenset({"local", "peer"})
HOUR_S = 3600
KEEP_HOURS = 8 * 24  # buckets older than this are dropped (the 7 d window plus a day)
WINDOWS: tuple[tuple[str, int], ...] = (("24h", 24), ("7d", 7 * 24))  # name, hours
# The most tokens one request may add: counts from a peer's body are hostile, and one lie
# must not swamp a week of honest traffic or overflow a column.
MAX_TOKENS = 1 << 24
FILE_NAME = "mesh_share.sqlite3"
FLUSH_S = 10.0


@dataclass(frozen=True, slots=True)
class Counts:
    """Answered requests and their tokens in one bucket."""

    requests: int = 0
    prompt_tokens: int = 0  # 0 where the server did not report a prompt count
    completion_tokens: int = 0

    def plus(self, other: Counts) -> Counts:
        return Counts(self.requests + other.requests,
                      self.prompt_tokens + other.prompt_tokens,
                      self.completion_tokens + other.completion_tokens)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


Key = tuple[int, Source]  # (hour: whole hours since the epoch, source)


def hour_of(t: float) -> int:
    """The bucket a wall-clock time (seconds since the epoch) falls in."""
    return math.floor(t / HOUR_S)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


def window_share(buckets: Mapping[Key, Counts], now: float, hours: int) -> dict[str, Any]:
    """Pure: one window, the current hour and the `hours - 1` before it (whole hours, so a
    bucket is in or out, never split). Buckets after `now` (a clock set back) are left out.

    Per source: requests, prompt and completion tokens; `mesh` and `total` sums; the shares
    (mesh ÷ total) by requests and by tokens (prompt + completion), None with no traffic."""
    last = hour_of(now)
    first = last - hours + 1
    by_source: dict[str, Counts] = dict.fromkeys(SOURCES, Counts())
    for (hour, source), counts in buckets.items():
        if first <= hour <= last and source in by_source:
            by_source[source] = by_source[source].plus(counts)
    mesh = Counts()
    total = Counts()
    for name, counts in by_source.items():
        total = total.plus(counts)
        if name in MESH:
            mesh = mesh.plus(counts)
    rows: dict[str, Counts] = {**by_source, "mesh": mesh, "total": total}
    return {
        "window_s": hours * HOUR_S,
        "since": first * HOUR_S,  # the window's start, seconds since the epoch
        "requests": {k: c.requests for k, c in rows.items()},
        "prompt_tokens": {k: c.prompt_tokens for k, c in rows.items()},
        "completion_tokens": {k: c.completion_tokens for k, c in rows.items()},
        "share_by_requests": _ratio(mesh.requests, total.requests),
        "share_by_tokens": _ratio(mesh.tokens, total.tokens),
    }


def mesh_share(buckets: Mapping[Key, Counts], now: float) -> dict[str, dict[str, Any]]:
    """Pure: every window of `WINDOWS` by name ("24h", "7d")."""
    return {name: window_share(buckets, now, hours) for name, hours in WINDOWS}


def kept(buckets: Mapping[Key, Counts], now: float) -> dict[Key, Counts]:
    """Pure: the buckets of the last `KEEP_HOURS` hours (the current one included)."""
    oldest = hour_of(now) - KEEP_HOURS + 1
    return {key: counts for key, counts in buckets.items() if key[0] >= oldest}


def _tokens(value: int | None) -> int:
    """A token count as added to a bucket: unknown counts as 0, a hostile one is capped."""
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, MAX_TOKENS)


class ShareStore:
    """This node's mesh-share buckets: in memory for reads and `record()`, in SQLite at
    `path` for restarts. Build with `open()` (blocking: reads the file)."""

    def __init__(self, path: Path, connection: sqlite3.Connection,
                 buckets: dict[Key, Counts], clock: Callable[[], float] = time.time,
                 flush_s: float = FLUSH_S) -> None:
        self.path = path
        self.clock = clock
        self.flush_s = flush_s
        self._db = connection
        self._buckets = buckets
        self._dirty: set[Key] = set()
        # The worker thread of a flush cut short by shutdown may still be writing when
        # close() writes the rest: one writer at a time on the connection.
        self._lock = threading.Lock()
        self._pruned_below: int | None = None  # the file holds no hour before this one

    @classmethod
    def open(cls, data_dir: Path, clock: Callable[[], float] = time.time,
             flush_s: float = FLUSH_S) -> ShareStore:
        """Open (or create) `<data_dir>/mesh_share.sqlite3` and load its recent buckets.

        A file SQLite cannot read is moved aside to `.corrupt` and counting starts afresh;
        where no file can be opened at all, counts are kept in memory only. Lost history is
        better than a node that will not start."""
        path = data_dir / FILE_NAME
        try:
            db, buckets = _load(str(path), clock())
        except sqlite3.DatabaseError as exc:
            log.error("mesh share: cannot read %s (%s)", path, exc)
            with contextlib.suppress(OSError):
                if path.is_file():
                    path.replace(path.with_suffix(".corrupt"))
                    log.error("mesh share: moved it to %s", path.with_suffix(".corrupt").name)
            try:
                db, buckets = _load(str(path), clock())
            except sqlite3.DatabaseError:
                log.error("mesh share: counting in memory only; it starts afresh on restart")
                db, buckets = _load(":memory:", clock())
        return cls(path, db, buckets, clock, flush_s)

    def record(self, source: Source, prompt_tokens: int | None,
               completion_tokens: int | None) -> None:
        """Count one answered request. Cheap (a dict update): runs on the request path."""
        key = (hour_of(self.clock()), source)
        add = Counts(1, _tokens(prompt_tokens), _tokens(completion_tokens))
        self._buckets[key] = self._buckets.get(key, Counts()).plus(add)
        self._dirty.add(key)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The windows as `/api/status` shows them (see `mesh_share`)."""
        return mesh_share(self._buckets, self.clock())

    async def run(self) -> None:
        """Write changed buckets every `flush_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Write the changed buckets and drop expired ones, off the event loop."""
        rows, oldest = self._take_changes()
        if not rows and oldest == self._pruned_below:
            return  # an idle node: no thread, no transaction every flush_s for nothing
        if await asyncio.to_thread(self._write, rows, oldest):
            self._pruned_below = oldest
        else:
            # Rewritten whole at the next flush (values are absolute, not increments).
            self._dirty.update((hour, source) for hour, source, *_ in rows)

    def close(self) -> None:
        """Write what is left and close the file. Blocking: call once, at shutdown."""
        rows, oldest = self._take_changes()
        self._write(rows, oldest)
        with self._lock:
            self._db.close()

    def _take_changes(self) -> tuple[list[tuple[int, Source, int, int, int]], int]:
        """On the event loop: prune memory and copy the changed buckets' values, so the
        writer thread never touches the live dict or set."""
        now = self.clock()
        self._buckets = kept(self._buckets, now)
        rows = [(hour, source, c.requests, c.prompt_tokens, c.completion_tokens)
                for (hour, source) in self._dirty
                if (c := self._buckets.get((hour, source))) is not None]
        self._dirty.clear()
        return rows, hour_of(now) - KEEP_HOURS + 1

    def _write(self, rows: list[tuple[int, Source, int, int, int]], oldest: int) -> bool:
        """Blocking; False when the file could not be written."""
        try:
            with self._lock, self._db:  # one transaction
                self._db.executemany(
                    "INSERT INTO buckets (hour, source, requests, prompt_tokens,"
                    " completion_tokens) VALUES (?, ?, ?, ?, ?) ON CONFLICT (hour, source)"
                    " DO UPDATE SET requests = excluded.requests,"
                    " prompt_tokens = excluded.prompt_tokens,"
                    " completion_tokens = excluded.completion_tokens", rows)
                self._db.execute("DELETE FROM buckets WHERE hour < ?", (oldest,))
        # A full disk or a file gone read-only: keep counting in memory and try again at
        # the next flush; the status page still shows the live numbers.
        except sqlite3.Error as exc:
            log.warning("mesh share: could not write %s (%s); retrying later",
                        self.path.name, exc)
            return False
        return True


def _load(path: str, now: float) -> tuple[sqlite3.Connection, dict[Key, Counts]]:
    """Open the file, create the table, read the buckets still kept. Rows that are not
    what this module writes (an unknown source, a negative count) are skipped."""
    # check_same_thread=False: flushes run in asyncio's worker threads; ShareStore._lock
    # keeps them one at a time.
    db = sqlite3.connect(path, check_same_thread=False)
    try:
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS buckets (hour INTEGER NOT NULL,"
                       " source TEXT NOT NULL, requests INTEGER NOT NULL,"
                       " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
                       " PRIMARY KEY (hour, source))")
        oldest = hour_of(now) - KEEP_HOURS + 1
        buckets: dict[Key, Counts] = {}
        for hour, source, *counts in db.execute(
                "SELECT hour, source, requests, prompt_tokens, completion_tokens"
                " FROM buckets WHERE hour >= ?", (oldest,)):
            if source not in SOURCES or not all(
                    isinstance(n, int) and 0 <= n for n in (hour, *counts)):
                continue
            buckets[(hour, source)] = Counts(*counts)
    except sqlite3.DatabaseError:
        with contextlib.suppress(sqlite3.Error):
            db.close()
        raise
    return db, buckets
