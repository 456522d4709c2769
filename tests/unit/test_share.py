"""metrics/share.py: the mesh share's windows (pure, table-driven, an injected clock), the
8-day pruning, and the SQLite store surviving a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from covey.metrics.export import registry_for, render
from covey.metrics.share import (
    FILE_NAME,
    HOUR_S,
    KEEP_HOURS,
    MAX_TOKENS,
    Counts,
    Key,
    ShareStore,
    kept,
    mesh_share,
)
from covey.router.table import ModelTable

NOW = 1_700_000_000.0 + 1800  # half past some hour
H = int(NOW // HOUR_S)  # the current hour's bucket


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("buckets", "day", "week"), [
    # name: (24 h share by requests, by tokens), (7 d ...)
    ({}, (None, None), (None, None)),  # no traffic: no share, never 0 or 1
    ({(H, "local"): Counts(3, 30, 60)}, (1.0, 1.0), (1.0, 1.0)),  # never fell back: 100 %
    ({(H, "local"): Counts(1, 0, 10), (H, "peer"): Counts(1, 0, 10),
      (H, "provider"): Counts(2, 0, 20)}, (0.5, 0.5), (0.5, 0.5)),
    # tokens weigh differently from requests
    ({(H, "peer"): Counts(3, 10, 20), (H, "provider"): Counts(1, 30, 40)},
     (0.75, 0.3), (0.75, 0.3)),
    # the 24 h window holds the current hour and the 23 before; hour H-24 is only in 7 d
    ({(H - 23, "local"): Counts(1, 0, 1), (H - 24, "provider"): Counts(1, 0, 1)},
     (1.0, 1.0), (0.5, 0.5)),
    # older than 7 d: in no window; so a week-old fallback leaves no trace
    ({(H - 168, "provider"): Counts(5, 5, 5), (H - 167, "local"): Counts(1, 1, 1)},
     (None, None), (1.0, 1.0)),
    # a bucket after `now` (the clock was set back) is in no window
    ({(H + 1, "provider"): Counts(1, 1, 1)}, (None, None), (None, None)),
    # requests but no token counts at all: a share by requests, none by tokens
    ({(H, "local"): Counts(2, 0, 0)}, (1.0, None), (1.0, None)),
])
def test_windows(buckets: dict[Key, Counts], day: tuple[Any, Any],
                 week: tuple[Any, Any]) -> None:
    share = mesh_share(buckets, NOW)
    assert (share["24h"]["share_by_requests"], share["24h"]["share_by_tokens"]) == day
    assert (share["7d"]["share_by_requests"], share["7d"]["share_by_tokens"]) == week


def test_window_counts_by_source() -> None:
    share = mesh_share({(H, "local"): Counts(2, 5, 7), (H - 1, "peer"): Counts(1, 3, 4),
                        (H - 30, "provider"): Counts(1, 1, 1)}, NOW)
    day, week = share["24h"], share["7d"]
    assert day["requests"] == {"local": 2, "peer": 1, "provider": 0, "mesh": 3, "total": 3}
    assert day["prompt_tokens"] == {"local": 5, "peer": 3, "provider": 0, "mesh": 8,
                                    "total": 8}
    assert day["completion_tokens"]["mesh"] == 11
    assert week["requests"] == {"local": 2, "peer": 1, "provider": 1, "mesh": 3, "total": 4}
    assert day["window_s"] == 24 * HOUR_S and week["window_s"] == 7 * 24 * HOUR_S
    assert day["since"] == (H - 23) * HOUR_S


def test_kept_drops_buckets_past_eight_days() -> None:
    buckets: dict[Key, Counts] = {(H - KEEP_HOURS + 1, "local"): Counts(1),
                                  (H - KEEP_HOURS, "local"): Counts(1), (H, "peer"): Counts(1)}
    assert set(kept(buckets, NOW)) == {(H - KEEP_HOURS + 1, "local"), (H, "peer")}
    assert KEEP_HOURS == 8 * 24


def test_record_counts_and_caps_hostile_token_counts(tmp_path: Path) -> None:
    store = ShareStore.open(tmp_path, clock=Clock())
    store.record("local", 4, 10)
    store.record("peer", None, 5)  # no prompt count reported: 0
    store.record("peer", -3, MAX_TOKENS * 10)  # a lying peer: floored and capped
    store.record("provider", True, 2)  # type: ignore[arg-type]  # a JSON bool is no count
    day = store.snapshot()["24h"]
    assert day["requests"] == {"local": 1, "peer": 2, "provider": 1, "mesh": 3, "total": 4}
    assert day["prompt_tokens"]["total"] == 4
    assert day["completion_tokens"]["peer"] == 5 + MAX_TOKENS
    store.close()


async def test_restart_keeps_history_and_prunes(tmp_path: Path) -> None:
    clock = Clock()
    store = ShareStore.open(tmp_path, clock=clock)
    store.record("local", 1, 2)
    clock.t += HOUR_S
    store.record("peer", 3, 4)
    await store.flush()  # the periodic write, in a worker thread
    store.record("provider", 5, 6)  # only written by close(), at shutdown
    store.close()

    again = ShareStore.open(tmp_path, clock=clock)
    assert again.snapshot() == store.snapshot()
    assert again.snapshot()["7d"]["requests"] == {"local": 1, "peer": 1, "provider": 1,
                                                 "mesh": 2, "total": 3}
    # Reopened eight days on: the first hour is past keeping, in memory and in the file.
    clock.t += (KEEP_HOURS - 1) * HOUR_S
    again.record("local", 0, 1)
    again.close()
    rows = sqlite3.connect(tmp_path / FILE_NAME).execute(
        "SELECT hour, source FROM buckets ORDER BY hour").fetchall()
    assert rows == [(H + 1, "peer"), (H + 1, "provider"), (H + KEEP_HOURS, "local")]
    later = ShareStore.open(tmp_path, clock=clock)
    assert later.snapshot()["7d"]["requests"]["total"] == 1  # only the newest hour's
    later.close()


async def test_an_idle_flush_writes_nothing(tmp_path: Path) -> None:
    clock = Clock()
    store = ShareStore.open(tmp_path, clock=clock)
    writes: list[int] = []
    real = store._write
    store._write = lambda rows, oldest: writes.append(len(rows)) or real(rows, oldest)  # type: ignore[method-assign]
    store.record("local", 1, 2)
    await store.flush()
    await store.flush()  # nothing new, nothing to prune: no worker thread, no transaction
    assert writes == [1]
    clock.t += HOUR_S  # an hour later an old hour may be past keeping: pruned once
    await store.flush()
    await store.flush()
    assert writes == [1, 0]
    store.record("peer", 3, 4)
    await store.flush()
    assert writes == [1, 0, 1]
    store.close()


async def test_a_failed_write_is_retried_whole(tmp_path: Path) -> None:
    clock = Clock()
    store = ShareStore.open(tmp_path, clock=clock)
    store.record("local", 1, 1)
    store._db.execute("DROP TABLE buckets")  # the write below fails: no table
    await store.flush()
    store._db.execute("CREATE TABLE buckets (hour INTEGER NOT NULL, source TEXT NOT NULL,"
                      " requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,"
                      " completion_tokens INTEGER NOT NULL, PRIMARY KEY (hour, source))")
    store.record("local", 1, 1)
    store.close()
    again = ShareStore.open(tmp_path, clock=clock)
    assert again.snapshot()["24h"]["requests"]["local"] == 2
    again.close()


def test_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"not a database" * 100)
    store = ShareStore.open(tmp_path, clock=Clock())
    assert store.snapshot()["24h"]["share_by_requests"] is None
    store.record("local", 1, 1)
    store.close()
    assert (tmp_path / FILE_NAME).with_suffix(".corrupt").exists()
    again = ShareStore.open(tmp_path, clock=Clock())
    assert again.snapshot()["24h"]["requests"]["local"] == 1
    again.close()


def test_rows_it_did_not_write_are_ignored(tmp_path: Path) -> None:
    ShareStore.open(tmp_path, clock=Clock()).close()
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.executemany("INSERT INTO buckets VALUES (?, ?, ?, ?, ?)",
                       [(H, "mallory", 9, 9, 9), (H, "peer", -5, 0, 0), (H, "local", 1, 2, 3)])
    store = ShareStore.open(tmp_path, clock=Clock())
    day = store.snapshot()["24h"]
    store.close()
    assert day["requests"]["total"] == 1 and day["completion_tokens"]["local"] == 3


def test_metrics_export_the_windows_and_leave_out_missing_shares(tmp_path: Path) -> None:
    store = ShareStore.open(tmp_path, clock=Clock())
    registry = registry_for(ModelTable(), store)
    text = render(registry).decode()
    assert "covey_mesh_share_ratio{" not in text  # no traffic: no share, never 0
    assert 'covey_mesh_share_requests{source="local",window="24h"} 0.0' in text
    store.record("local", 2, 3)
    store.record("provider", 1, 1)
    text = render(registry).decode()
    assert 'covey_mesh_share_ratio{by="requests",window="24h"} 0.5' in text
    assert 'covey_mesh_share_ratio{by="tokens",window="7d"} 0.7142857142857143' in text
    assert 'covey_mesh_share_tokens{kind="prompt",source="local",window="7d"} 2.0' in text
    store.close()
