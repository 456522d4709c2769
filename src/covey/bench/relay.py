"""`covey bench`: what the node's relay costs, measured side by side in one run.

A real node (child process) serves the model with a real llama.cpp engine. The same client
streams the same deterministic chat straight to the engine, through the node, and through a
bare TCP byte pipe (covey.bench.floor), rotating which goes first each round so drift on a
shared machine hits every path alike. Reported: through-node ÷ direct decode tokens/s at 1 and
4 concurrent streams (medians over runs); the TTFT the node adds, from many interleaved
one-token request pairs (p50/p99); the node process's CPU time per relayed SSE event, next to
the same figure for the byte pipe, so the machine's own cost of waking a relay once per token
is visible (the engine is a separate process and is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
from rich.console import Console
from rich.table import Table

from covey import event_loop
from covey.console import assembly_progress
from covey.engine import embedded
from covey.engine.catalog import ModelFileError
from covey.metrics.probe import StreamStats, deterministic_chat, stream_chat
from covey.metrics.samples import median, percentile

err = Console(stderr=True)

GOALS = {  # key: (goal, higher is better)
    "ratio_1_stream": (0.99, True),
    "ratio_4_streams": (0.97, True),
    "ttft_added_ms_p50": (2.0, False),
    "cpu_us_per_chunk": (50.0, False),
    "cpu_floor_ratio": (1.2, False),
    "mesh_ratio_1_stream": (0.98, True),
    "mesh_ratio_4_streams": (0.95, True),
    "mesh_ttft_added_ms_p50": (5.0, False),
    # The mesh's second hop costs no more than the first node does (issue 11).
    "mesh_ttft_added_ratio": (2.0, False),
    "mesh_ttft_added_ratio_2_tokens": (2.0, False),
}


@dataclass(frozen=True)
class NodeUnderTest:
    url: str  # the node's OpenAI root (…/v1)
    engine_url: str  # the engine's OpenAI root, for the direct path
    model: str
    pid: int
    data_dir: Path


# Gossip and data-plane checks between the two nodes run every few seconds; in the bench they
# would be charged to the relay's CPU per chunk and steal the engine's cores, so they are
# slowed (the entry still checks the serving node once before routing to it).
QUIET_MESH = ("--gossip-interval-s", "2", "--health-interval-s", "15")
IDLE_S = 10.0  # how long the node's idle CPU is measured, over several gossip rounds
# TTFT rounds by default. The p50 of a ~1.5 ms difference between TTFTs whose parts outside
# the engine vary by several ms is noisy: cut into blocks, each of six 240-round runs read
# the mesh's one-token ratio 0.4–1.7 apart in blocks of 40, 0.03–0.24 apart in blocks of 120.
TTFT_PAIRS = 120
# A gap after each TTFT sample: a mesh answer's receipt is settled 50 ms after it ends
# (ledger/service.py, SETTLE_AFTER_S), in a few ms; the next sample must not pay for it.
AFTERMATH_S = 0.1


@contextlib.contextmanager
def running_node(model: Path, threads: int | None, streams: int) -> Iterator[NodeUnderTest]:
    """A `covey serve` child on a free port with a throwaway data dir; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="covey-bench-") as tmp:
        argv = [sys.executable, "-m", "covey", "serve", "--data-dir", tmp, "--port", "0",
                "--mesh-port", "0",
                "--model", str(model), "--parallel", str(streams), "--no-baseline",
                *QUIET_MESH, "--log-level", "warning"]
        if threads:
            argv += ["--threads", str(threads)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            yield _wait_ready(proc, Path(tmp) / "node.json")
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the node finishes cleanly), then SIGKILL if it ignores that for 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def entry_node(server: NodeUnderTest) -> Iterator[tuple[str, int]]:
    """A second node joined to `server`'s mesh, serving nothing itself: (its /v1 URL, pid).
    Requests to it cross the mesh: client → entry → serving node → engine."""
    invite = subprocess.run([sys.executable, "-m", "covey", "invite", "--data-dir",
                             str(server.data_dir)], capture_output=True, text=True, timeout=30)
    if invite.returncode != 0:
        raise RuntimeError(f"covey invite failed: {invite.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="covey-bench-entry-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "covey", "serve", "--data-dir", tmp, "--port", "0",
             "--mesh-port", "0", "--no-default-model", "--join", invite.stdout.strip(),
             *QUIET_MESH, "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"the entry node exited with status {proc.returncode}")
                try:
                    url = json.loads((Path(tmp) / "node.json").read_text())["url"]
                    listed = json.loads(_get(url + "/v1/models"))["data"]
                    if any(m["id"] == server.model for m in listed):
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("the entry node did not learn the model within 60s")
            yield url + "/v1", proc.pid
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], runtime: Path,
                timeout_s: float = 180) -> NodeUnderTest:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with status {proc.returncode}")
        try:
            url = json.loads(runtime.read_text())["url"]
            model = json.loads(_get(url + "/api/status"))["models"][0]
        # Not written yet, or not answering yet: keep polling until the deadline.
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(0.2)
            continue
        if model["state"] == "ready":
            return NodeUnderTest(url=url + "/v1", engine_url=model["engine_url"],
                                 model=model["id"], pid=proc.pid, data_dir=runtime.parent)
        if model["state"] == "failed":
            raise RuntimeError(f"the engine failed: {model['reason']}")
        time.sleep(0.2)
    raise RuntimeError(f"the node was not ready within {timeout_s:.0f}s")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


@dataclass
class Side:
    """One path to the engine (direct, through the node, through the floor relay)."""

    base_url: str
    pid: int | None  # the relay process whose CPU is counted; None for the direct path
    one_tps: list[float] = field(default_factory=list)
    four_tps: list[float] = field(default_factory=list)
    # Each stream's rate as the client saw it ÷ llama.cpp's own rate for that same stream.
    one_pace: list[float] = field(default_factory=list)
    four_pace: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    # Each TTFT less llama.cpp's own time for that prompt (None: no timings came back), of
    # one-token answers and of two-token ones.
    outside: list[float | None] = field(default_factory=list)
    outside_2: list[float | None] = field(default_factory=list)
    events: int = 0
    cpu_s: float = 0.0
    stream_s: float = 0.0  # wall time its streams took (its CPU was counted over it)

    def cpu_us_per_event(self) -> float:
        return self.cpu_s * 1e6 / max(1, self.events)


@contextlib.contextmanager
def floor_relay(engine_url: str) -> Iterator[tuple[str, int]]:
    """The byte-pipe relay of covey.bench.floor in front of the engine: (its /v1 URL, pid)."""
    upstream = urlsplit(engine_url)
    proc = subprocess.Popen([sys.executable, "-m", "covey.bench.floor", "--upstream",
                             f"{upstream.hostname}:{upstream.port}"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("FLOOR-LISTENING "):
            raise RuntimeError("the floor relay did not start")
        yield f"http://127.0.0.1:{line.split()[1]}/v1", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every thread of `pid` so far.

    Linux's scheduler keeps it per thread to the nanosecond (/proc/PID/task/*/schedstat);
    psutil's user/system times come in 10 ms clock ticks, coarser than a whole 64-token
    stream's relay work here, which made the per-chunk figures jump by a third between runs.
    Elsewhere, psutil's figure."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended between listing and reading: its time is gone
    except OSError:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    return total / 1e9


async def _streams(session: aiohttp.ClientSession, side: Side, body: dict[str, Any],
                   concurrent: int) -> list[StreamStats]:
    """`concurrent` streams at once through `side`, charging its relay's CPU to it."""
    cpu0 = cpu_seconds(side.pid) if side.pid else None
    t0 = time.monotonic()
    results = await asyncio.gather(*(stream_chat(session, side.base_url, body)
                                     for _ in range(concurrent)))
    if side.pid and cpu0 is not None:
        side.cpu_s += cpu_seconds(side.pid) - cpu0
        side.stream_s += time.monotonic() - t0
        side.events += sum(r.events for r in results)
    if any(r.tokens_per_s is None for r in results):
        raise RuntimeError(f"a stream from {side.base_url} produced fewer than two tokens")
    return list(results)


async def measure(node: NodeUnderTest, floor: tuple[str, int], entry: tuple[str, int],
                  runs: int, max_tokens: int, progress: Callable[[str], None],
                  ttft_pairs: int | None = None, idle_s: float = IDLE_S) -> dict[str, Any]:
    """Every figure of the result. `ttft_pairs`: one-token request trios for the added TTFT
    (default: max(TTFT_PAIRS, 8 × runs)); `idle_s`: how long the node's idle CPU is measured."""
    body = deterministic_chat(node.model, max_tokens, llama_cpp=True)
    direct = Side(node.engine_url, None)
    through = Side(node.url, node.pid)
    floor_side = Side(*floor)
    mesh = Side(*entry)
    sides = [direct, through, floor_side, mesh]
    ttft_pairs = ttft_pairs or max(TTFT_PAIRS, 8 * runs)
    # One connection per request on every path, so no side gets cheaper connects.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                     connector=aiohttp.TCPConnector(force_close=True)) as session:
        for side in sides:  # warm-up, not counted
            await stream_chat(session, side.base_url, body)
        # Added TTFT: many cheap requests. The repeated prompt is cached by the engine, so
        # prompt-processing jitter does not drown the node's share. Each round asks each
        # path for one token and for two: a one-token answer ends with its first token, so
        # what a path does when an answer ends (on the mesh, on both nodes) competes with
        # that token's way to the client while the engine rests; the first of two tokens
        # comes while the engine decodes the next, as in any longer answer.
        trio = [direct, through, mesh]
        for i in range(ttft_pairs):
            progress(f"TTFT round {i + 1}/{ttft_pairs}")
            for tokens in ((1, 2) if i % 2 == 0 else (2, 1)):
                for side in trio[i % 3:] + trio[:i % 3]:
                    stats = await stream_chat(session, side.base_url,
                                              {**body, "max_tokens": tokens})
                    if stats.ttft_ms is None:
                        raise RuntimeError(f"no token came back from {side.base_url}")
                    outside = (None if stats.engine_ttft_ms is None
                               else stats.ttft_ms - stats.engine_ttft_ms)
                    if tokens == 1:
                        side.ttft.append(stats.ttft_ms)
                        side.outside.append(outside)
                    else:
                        side.outside_2.append(outside)
                    # A mesh answer leaves work behind (the ledger's receipt is signed, sent
                    # and countersigned after it ends): measured at once, the next request,
                    # usually a direct one, paid for it, and the mesh's added TTFT read low.
                    await asyncio.sleep(AFTERMATH_S)
        for i in range(runs):
            progress(f"decode round {i + 1}/{runs}")
            for side in sides[i % 4:] + sides[:i % 4]:  # rotate who goes first
                (one,) = await _streams(session, side, body, 1)
                side.one_tps.append(one.tokens_per_s or 0.0)
                side.one_pace += _paces([one])
                four = await _streams(session, side, body, 4)
                side.four_tps.append(sum(r.tokens_per_s or 0.0 for r in four) / len(four))
                side.four_pace += _paces(four)
        # What the node spends with nothing to relay (gossip with the entry, data-plane
        # checks, its own loops): charged to its chunks above at this rate.
        progress("the node's idle CPU")
        idle_cpu0 = cpu_seconds(node.pid)
        await asyncio.sleep(idle_s)
        idle_rate = (cpu_seconds(node.pid) - idle_cpu0) / idle_s
    added = sorted(t - d for t, d in zip(through.ttft, direct.ttft, strict=True))
    mesh_added = sorted(t - d for t, d in zip(mesh.ttft, direct.ttft, strict=True))
    # The same differences with the engine's own prompt time taken out of every sample: a
    # one-token TTFT here varies by ±20 ms with the engine alone, which buried the relays'
    # few milliseconds in 40 pairs; what is left of a TTFT outside the engine varies by ~2.
    beyond = _added_outside(through, direct)
    mesh_beyond = _added_outside(mesh, direct)
    beyond_2 = _added_outside(through, direct, two_tokens=True)
    mesh_beyond_2 = _added_outside(mesh, direct, two_tokens=True)
    return {
        "model": node.model, "runs": runs, "max_tokens": max_tokens, "ttft_pairs": ttft_pairs,
        "ratio_1_stream": median(through.one_tps) / median(direct.one_tps),
        "ratio_4_streams": median(through.four_tps) / median(direct.four_tps),
        "ttft_added_ms_p50": percentile(added, 50),
        "ttft_added_ms_p99": percentile(added, 99),
        # A chunk is one SSE event relayed (what the engine framed as one), counted in the
        # node process only: the engine is a separate process.
        "cpu_us_per_chunk": through.cpu_us_per_event(),
        # The same figure for a bare TCP byte pipe on the same machine in the same run: what
        # any relay process costs here by waking once per token, before doing any work.
        "cpu_us_per_chunk_floor": floor_side.cpu_us_per_event(),
        "cpu_us_per_chunk_above_floor":
            through.cpu_us_per_event() - floor_side.cpu_us_per_event(),
        # The node against the bare pipe, both on the same event loop (`event_loop`): 1.0
        # would be a relay that costs nothing beyond waking up once per chunk.
        "cpu_floor_ratio": cpu_floor_ratio(through.cpu_us_per_event(),
                                           floor_side.cpu_us_per_event()),
        "event_loop": event_loop.name(),
        # The node's CPU per second while idle, and the share of cpu_us_per_chunk that is
        # that background (idle rate × the time its streams took ÷ events): the relay's own
        # cost per chunk is the rest, which `cpu_floor_ratio_net` holds against the pipe.
        "cpu_ms_per_s_idle": idle_rate * 1000,
        "cpu_us_per_chunk_idle": (idle_share := idle_rate * 1e6 * through.stream_s
                                  / max(1, through.events)),
        "cpu_floor_ratio_net": cpu_floor_ratio(through.cpu_us_per_event() - idle_share,
                                               floor_side.cpu_us_per_event()),
        "direct_tokens_per_s_1_stream": median(direct.one_tps),
        "through_tokens_per_s_1_stream": median(through.one_tps),
        "floor_tokens_per_s_1_stream": median(floor_side.one_tps),
        "direct_tokens_per_s_4_streams": median(direct.four_tps),
        "through_tokens_per_s_4_streams": median(through.four_tps),
        "direct_ttft_ms_p50": median(direct.ttft),
        "through_ttft_ms_p50": median(through.ttft),
        "events_relayed": through.events,
        # Two nodes: client → entry node → serving node (over the mesh's TLS) → engine.
        "mesh_ratio_1_stream": median(mesh.one_tps) / median(direct.one_tps),
        "mesh_ratio_4_streams": median(mesh.four_tps) / median(direct.four_tps),
        # The same ratios with each stream first held beside llama.cpp's own rate for it: the
        # engine's speed drifts 10-15 % between streams here, which the ratios above carry.
        "ratio_1_stream_beside_engine": _pace_ratio(through.one_pace, direct.one_pace),
        "ratio_4_streams_beside_engine": _pace_ratio(through.four_pace, direct.four_pace),
        "mesh_ratio_1_stream_beside_engine": _pace_ratio(mesh.one_pace, direct.one_pace),
        "mesh_ratio_4_streams_beside_engine": _pace_ratio(mesh.four_pace, direct.four_pace),
        "mesh_ttft_added_ms_p50": percentile(mesh_added, 50),
        "mesh_ttft_added_ms_p99": percentile(mesh_added, 99),
        "ttft_added_outside_engine_ms_p50": beyond,
        "mesh_ttft_added_outside_engine_ms_p50": mesh_beyond,
        "mesh_ttft_added_ratio": _quotient(mesh_beyond, beyond),
        # The same of two-token answers: their first token's, as in any longer answer.
        "ttft_added_outside_engine_ms_p50_2_tokens": beyond_2,
        "mesh_ttft_added_outside_engine_ms_p50_2_tokens": mesh_beyond_2,
        "mesh_ttft_added_ratio_2_tokens": _quotient(mesh_beyond_2, beyond_2),
    }


def _paces(streams: list[StreamStats]) -> list[float]:
    """Client-seen ÷ engine-reported decode rate, for the streams that have both."""
    return [r.tokens_per_s / r.engine_tokens_per_s for r in streams
            if r.tokens_per_s and r.engine_tokens_per_s]


def _pace_ratio(side: list[float], direct: list[float]) -> float | None:
    # A pace is a quotient of two positive rates, so a median of some is above zero.
    return median(side) / median(direct) if side and direct else None


def _added_outside(side: Side, direct: Side, two_tokens: bool = False) -> float | None:
    """p50 of `side`'s time to first token outside the engine less the direct path's, over
    the pairs where llama.cpp reported its timings on both; None when it never did.
    `two_tokens`: of the two-token answers."""
    ours, theirs = ((side.outside_2, direct.outside_2) if two_tokens
                    else (side.outside, direct.outside))
    pairs = sorted(s - d for s, d in zip(ours, theirs, strict=True)
                   if s is not None and d is not None)
    return percentile(pairs, 50) if pairs else None


def _quotient(mesh: float | None, node: float | None) -> float | None:
    return mesh / node if mesh is not None and node is not None and node > 0 else None


def cpu_floor_ratio(node_us: float, floor_us: float) -> float | None:
    """Node CPU per chunk ÷ the bare pipe's; None when the pipe measured no CPU at all."""
    return node_us / floor_us if floor_us > 0 else None


def goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pure: each goal with whether this result meets it (None: not measured)."""
    out: dict[str, dict[str, Any]] = {}
    for key, (goal, higher) in GOALS.items():
        value = result.get(key)
        met = None if value is None else value >= goal if higher else value <= goal
        out[key] = {"goal": goal, "met": met}
    return out


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_bench(args: argparse.Namespace, data_dir: Path) -> int:
    """Entry point for `covey bench`. Exit 0 whether or not goals are met (it measures)."""
    idle_s = IDLE_S if args.idle_s is None else args.idle_s
    if args.runs < 1 or args.max_tokens < 2 or (args.ttft_pairs is not None
                                                 and args.ttft_pairs < 1) or not idle_s > 0:
        err.print("covey bench: --runs and --ttft-pairs must be ≥ 1, --max-tokens ≥ 2 and "
                  "--idle-s above 0")
        return 2
    # SIGTERM (`timeout covey bench`, a CI job cancelled) would end this process at once and
    # leave its nodes running; as SystemExit, every `with` below stops what it started.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Gemma by default: it needs no download, and docs/bench.md's figures were taken on it
    # (the relay's overhead does not depend on whether the model can chat).
    named = embedded.find(str(args.model)) if args.model else embedded.GEMMA
    try:
        with assembly_progress() as progress:
            model = embedded.model_path(named, data_dir, progress) if named else args.model
    except ModelFileError as exc:
        err.print(f"covey bench: {exc}")
        return 1
    try:
        with err.status("starting a node and its engine…") as status, \
                running_node(model, args.threads, streams=4) as node:
            with floor_relay(node.engine_url) as floor, entry_node(node) as entry:
                result = asyncio.run(measure(node, floor, entry, args.runs, args.max_tokens,
                                             lambda text: status.update(f"measuring: {text}"),
                                             args.ttft_pairs, idle_s))
        result["goals"] = goals(result)
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        err.print(f"covey bench: {exc}")
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"covey bench · {result['model']} · {result['runs']} runs × "
                        f"{result['max_tokens']} tokens (medians)")
    for col in ("figure", "measured", "goal", ""):
        table.add_column(col)
    rows: list[tuple[str, str, str]] = [
        ("ratio_1_stream", f"{result['ratio_1_stream']:.3f}", "≥ 0.99"),
        ("ratio_4_streams", f"{result['ratio_4_streams']:.3f}", "≥ 0.97"),
        ("  beside the engine (1 / 4)", f"{_ratio(result['ratio_1_stream_beside_engine'])} / "
                                        f"{_ratio(result['ratio_4_streams_beside_engine'])}",
         ""),
        ("ttft_added_ms_p50", f"{result['ttft_added_ms_p50']:.2f} ms", "≤ 2 ms"),
        ("ttft_added_ms_p99", f"{result['ttft_added_ms_p99']:.2f} ms", ""),
        ("cpu_us_per_chunk", f"{result['cpu_us_per_chunk']:.1f} µs", "≤ 50 µs"),
        ("  floor: bare TCP relay", f"{result['cpu_us_per_chunk_floor']:.1f} µs", ""),
        ("  node above the floor", f"{result['cpu_us_per_chunk_above_floor']:.1f} µs", ""),
        ("cpu_floor_ratio", "—" if result["cpu_floor_ratio"] is None
         else f"{result['cpu_floor_ratio']:.2f} × ({result['event_loop']})", "≤ 1.2 ×"),
        ("  of which idle background", f"{result['cpu_us_per_chunk_idle']:.1f} µs "
                                       f"({result['cpu_ms_per_s_idle']:.2f} ms/s)", ""),
        ("  ratio net of background", "—" if result["cpu_floor_ratio_net"] is None
         else f"{result['cpu_floor_ratio_net']:.2f} ×", ""),
    ]
    for key, value, goal in rows:
        met = result["goals"].get(key, {}).get("met")
        table.add_row(key, value, goal, "" if met is None else ("✓" if met else "✗"))
    for key, value, goal in (
            ("mesh_ratio_1_stream", f"{result['mesh_ratio_1_stream']:.3f}", "≥ 0.98"),
            ("mesh_ratio_4_streams", f"{result['mesh_ratio_4_streams']:.3f}", "≥ 0.95"),
            ("  beside the engine (1 / 4)",
             f"{_ratio(result['mesh_ratio_1_stream_beside_engine'])} / "
             f"{_ratio(result['mesh_ratio_4_streams_beside_engine'])}", ""),
            ("mesh_ttft_added_ms_p50", f"{result['mesh_ttft_added_ms_p50']:.2f} ms", "≤ 5 ms"),
            ("mesh_ttft_added_ms_p99", f"{result['mesh_ttft_added_ms_p99']:.2f} ms", ""),
            ("ttft added outside the engine", _ms(result["ttft_added_outside_engine_ms_p50"]),
             ""),
            ("  through the mesh", _ms(result["mesh_ttft_added_outside_engine_ms_p50"]), ""),
            ("mesh_ttft_added_ratio", _times(result["mesh_ttft_added_ratio"]), "≤ 2 ×"),
            ("ttft added outside the engine, 2 tokens",
             _ms(result["ttft_added_outside_engine_ms_p50_2_tokens"]), ""),
            ("  through the mesh", _ms(result["mesh_ttft_added_outside_engine_ms_p50_2_tokens"]),
             ""),
            ("mesh_ttft_added_ratio_2_tokens", _times(result["mesh_ttft_added_ratio_2_tokens"]),
             "≤ 2 ×")):
        met = result["goals"].get(key, {}).get("met")
        table.add_row(key, value, goal, "" if met is None else ("✓" if met else "✗"))
    table.add_row("direct tok/s (1 / 4 streams)",
                  f"{result['direct_tokens_per_s_1_stream']:.1f} / "
                  f"{result['direct_tokens_per_s_4_streams']:.1f}", "", "")
    table.add_row("TTFT p50 direct / through",
                  f"{result['direct_ttft_ms_p50']:.1f} / {result['through_ttft_ms_p50']:.1f} ms",
                  "", "")
    Console().print(table)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ×"
