"""Calibration bench for the audit statistic (verify/compare.py), on real llama.cpp engines.

    python -m covey.bench.verify --audits N [--json] [--save FILE] [--data-dir DIR]

Ground truth: Gemma 3 270M on an engine with the node's defaults (llama.cpp's thread count,
4 slots), alone (it is deterministic then: asked once per round). Each round draws a fresh
prompt from `audit_prompt` and a fresh seed, and every kind below gets that audit exactly as
auditor.py makes it (`audit_bodies`' ground-truth body), judged by `compare`
with the DEFAULT thresholds.

- honest: `same-config` (a second engine with the defaults), `threads-1`, `parallel-1`, and
  `under-load` / `under-load-3` (the same-config engine while one / three other requests
  stream on it, so the audit is batched with them: a node serving users), and `both-loaded`
  (the auditor's own engine also serves a stream while it answers: its answer is asked
  again under load for that kind);
- impostors: `smollm2` (SmolLM2 135M served under Gemma's id), `perturbed` (a copy of the
  Gemma file with one tensor altered, bench/impostors.py), `canned` (fixed replies and no
  logprobs, like tests/fake_backend.py), `echo` (no logprobs, repeats the prompt: Gemma, a
  base model, often does that itself).

Reported per kind: outcomes (and, as `text_only`, those of the same answers judged by their
text alone, as the auditor judges a peer it did not ask for logprobs), the distribution of the
mean |Δ logprob| and of the first top-1 mismatch, how often the 12-token texts were identical,
and the margin between the honest maximum and each impostor's minimum of the statistic; and
the cost of one audit. `--save` keeps every answer so thresholds can be replayed offline
(`replay`). Needs the `gguf` package (the `test` extra) for the perturbed copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from covey.engine import embedded
from covey.engine.llamacpp import READY_PREFIX
from covey.metrics.samples import median, percentile
from covey.verify.auditor import audit_bodies
from covey.verify.compare import DEFAULT, Answer, Step, Thresholds, compare, parse_answer
from covey.verify.fingerprint import chat_body
from covey.verify.prompts import audit_prompt

HONEST = ("same-config", "threads-1", "parallel-1", "under-load", "under-load-3", "both-loaded")
IMPOSTORS = ("smollm2", "perturbed", "canned", "echo")
LOAD_TOKENS = 64  # the concurrent stream outlasts the audit (12 tokens)


@dataclass(frozen=True)
class Record:
    kind: str
    outcome: str
    aligned: int
    agreed: int
    mean_nats: float | None
    first_mismatch: int | None  # step index of the first top-1 difference; None: none
    # there: the local top-1 logprob minus the local logprob of the peer's token (None: that
    # token is not in the local top-k, or no mismatch). Honest ones bound `tie_nats`.
    mismatch_gap: float | None
    same_text: bool
    ms: float  # both sides, one after the other (as the auditor asks them)
    tokens: int  # generated on both sides
    # The same answer judged by its text alone, as the auditor judges the half of its audits
    # that do not ask the peer for logprobs (and every one of a backend that gives none).
    text_outcome: str = "inconclusive"


def first_mismatch(local: Answer, peer: Answer) -> int | None:
    """Pure: the first step where the chosen tokens differ (over the shorter answer)."""
    return next((i for i, (a, b) in enumerate(zip(local.steps, peer.steps, strict=False))
                 if a.token != b.token), None)


def judge(kind: str, local: Answer, peer: Answer, ms: float, th: Thresholds) -> Record:
    c = compare(local, peer, th)
    at = first_mismatch(local, peer)
    gap = None
    if at is not None:
        step, other = local.steps[at], local.steps[at].top.get(peer.steps[at].token)
        gap = None if other is None else step.logprob - other
    text_only = compare(local, Answer(peer.text, (), peer.finish), th)
    return Record(kind, c.outcome, c.aligned, c.agreed, c.mean_nats, at, gap,
                  local.text == peer.text, ms, len(local.steps) + len(peer.steps),
                  text_only.outcome)


def _dist(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"min": ordered[0], "median": median(ordered), "p95": percentile(ordered, 95),
            "max": ordered[-1]}


def summarize(records: list[Record]) -> dict[str, Any]:
    """Pure: per-kind figures and the honest/impostor margins of the statistic."""
    kinds: dict[str, Any] = {}
    for kind in dict.fromkeys(r.kind for r in records):
        rs = [r for r in records if r.kind == kind]
        kinds[kind] = {
            "audits": len(rs),
            **{o: sum(r.outcome == o for r in rs) for o in ("pass", "fail", "inconclusive")},
            "mean_nats": _dist([r.mean_nats for r in rs if r.mean_nats is not None]),
            "first_mismatch": _dist([float(r.first_mismatch) for r in rs
                                     if r.first_mismatch is not None]),
            "mismatched": sum(r.first_mismatch is not None for r in rs),
            "mismatch_gap": _dist([r.mismatch_gap for r in rs if r.mismatch_gap is not None]),
            "same_text": sum(r.same_text for r in rs),
            "text_only": {o: sum(r.text_outcome == o for r in rs)
                          for o in ("pass", "fail", "inconclusive")},
        }
    honest = [r.mean_nats for r in records if r.kind in HONEST and r.mean_nats is not None]
    honest_max = max(honest) if honest else None
    margins = {}
    for kind in IMPOSTORS:
        values = [r.mean_nats for r in records if r.kind == kind and r.mean_nats is not None]
        margins[kind] = ({"honest_max": honest_max, "impostor_min": min(values),
                          "ratio": min(values) / honest_max if honest_max else None}
                         if values and honest_max is not None else None)
    # One audit as a node makes it: its own engine, then an honest peer's (same config).
    costs = [r for r in records if r.kind == "same-config"]
    ms = _dist([r.ms for r in costs])
    return {"kinds": kinds, "margins": margins, "thresholds": asdict(DEFAULT),
            "cost": {"tokens_median": median([float(r.tokens) for r in costs]) if costs
                     else None,
                     "ms_median": ms["median"] if ms else None,
                     "ms_p95": ms["p95"] if ms else None}}


# --- effects: engines, fake backends, requests ----------------------------------------------


@contextlib.contextmanager
def engine(model: Path, alias: str, parallel: int, threads: int | None) -> Iterator[str]:
    """A llama.cpp engine child (as the supervisor starts it) on loopback: its /v1 URL."""
    argv = [sys.executable, "-m", "covey.engine.llamacpp", "--model", str(model),
            "--alias", alias, "--parallel", str(parallel)]
    if threads:
        argv += ["--threads", str(threads)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_PREFIX):
                break
        else:
            raise RuntimeError(f"the engine on {model.name} did not start "
                               f"(exit status {proc.wait()})")
        yield line[len(READY_PREFIX):].strip() + "/v1"
    finally:
        if proc.stdin:
            proc.stdin.close()  # the engine exits when its stdin closes
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _fake_app(echo: bool) -> web.Application:
    """An attached backend that returns no logprobs: `canned` answers "tok tok …" as
    tests/fake_backend.py does; `echo` repeats the user's message."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        text = str(body["messages"][-1]["content"]) if echo else "tok " * n
        return web.json_response({"object": "chat.completion", "model": body.get("model"),
                                  "choices": [{"index": 0, "finish_reason": "length",
                                               "message": {"role": "assistant",
                                                           "content": text}}]})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@contextlib.asynccontextmanager
async def fake_backend(echo: bool) -> Any:
    runner = web.AppRunner(_fake_app(echo))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def ask(session: aiohttp.ClientSession, base_url: str, body: dict[str, Any]
              ) -> dict[str, Any]:
    async with session.post(f"{base_url}/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{base_url} answered HTTP {r.status}")
        data = await r.json()
    if not isinstance(data, dict):
        raise RuntimeError(f"{base_url} answered no JSON object")
    return data


@contextlib.asynccontextmanager
async def streaming_load(session: aiohttp.ClientSession, base_url: str,
                         prompts: list[str]) -> Any:
    """Other requests decoding on `base_url` for as long as the block runs (each one's first
    token has arrived when the block starts)."""
    async with contextlib.AsyncExitStack() as stack:
        for prompt in prompts:
            body = {**chat_body(GEMMA_ID, prompt, LOAD_TOKENS, 0, 1), "stream": True}
            del body["logprobs"], body["top_logprobs"]
            r = await stack.enter_async_context(
                session.post(f"{base_url}/chat/completions", json=body))
            # Closed, not released, at the end: the engine then stops decoding it at once
            # instead of finishing it under the next audits.
            stack.callback(r.close)
            await r.content.readline()
        yield


GEMMA_ID = embedded.GEMMA.model_id


async def measure(urls: dict[str, str], ground: str, rounds: int, rng: random.Random,
                  save: Path | None = None, progress: Any = None) -> list[Record]:
    records: list[Record] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for n in range(rounds):
            # The ground truth's body, with logprobs, for every side: this calibrates the
            # log-probability statistic (the auditor also asks peers half of the time
            # without logprobs; a text-only match is never a pass, compare.py).
            body, _ = audit_bodies(GEMMA_ID, audit_prompt(rng), rng)
            started = time.perf_counter()
            local = parse_answer(await ask(session, ground, body))
            local_ms = (time.perf_counter() - started) * 1000
            for kind, url in urls.items():
                load = LOAD.get(kind, 0)
                truth = local
                if kind == "both-loaded":
                    async with streaming_load(session, ground, [audit_prompt(rng)]):
                        truth = parse_answer(await ask(session, ground, body))
                async with streaming_load(session, url, [audit_prompt(rng) for _ in range(load)]):
                    started = time.perf_counter()
                    peer = parse_answer(await ask(session, url, body))
                    ms = local_ms + (time.perf_counter() - started) * 1000
                if truth is None or peer is None:
                    raise RuntimeError(f"{kind}: not a chat completion")
                records.append(judge(kind, truth, peer, ms, DEFAULT))
                if save is not None:  # as it goes: a long run cut short keeps its audits
                    with save.open("a") as f:
                        f.write(json.dumps({"kind": kind, "ms": ms, "local": _steps(truth),
                                            "peer": _steps(peer)}) + "\n")
            if progress:
                progress(n + 1)
    return records


LOAD = {"under-load": 1, "under-load-3": 3, "both-loaded": 3}  # concurrent streams during the audit


def _steps(a: Answer) -> dict[str, Any]:
    return {"text": a.text, "finish": a.finish,
            "steps": [[s.token, s.logprob, dict(s.top)] for s in a.steps]}


def _answer(d: dict[str, Any]) -> Answer:
    return Answer(d["text"], tuple(Step(t, lp, top) for t, lp, top in d["steps"]),
                  d.get("finish"))


def replay(saved: list[dict[str, Any]], th: Thresholds) -> list[Record]:
    """Pure: a saved run judged again with other thresholds."""
    return [judge(d["kind"], _answer(d["local"]), _answer(d["peer"]), d["ms"], th)
            for d in saved]


async def _run(args: argparse.Namespace, models: dict[str, Path]) -> list[Record]:
    with contextlib.ExitStack() as stack:
        gemma = models["gemma"]
        ground = stack.enter_context(engine(gemma, GEMMA_ID, 4, None))
        same = stack.enter_context(engine(gemma, GEMMA_ID, 4, None))
        urls = {"same-config": same,
                "threads-1": stack.enter_context(engine(gemma, GEMMA_ID, 4, 1)),
                "parallel-1": stack.enter_context(engine(gemma, GEMMA_ID, 1, None)),
                "under-load": same,
                "under-load-3": same,
                "both-loaded": same,
                "smollm2": stack.enter_context(engine(models["smollm2"], GEMMA_ID, 4, None)),
                "perturbed": stack.enter_context(engine(models["perturbed"], GEMMA_ID, 4,
                                                        None))}
        async with fake_backend(echo=False) as canned, fake_backend(echo=True) as echo:
            urls |= {"canned": canned, "echo": echo}
            urls = {k: v for k, v in urls.items() if k in args.kinds}
            records = await measure(urls, ground, args.audits, random.Random(args.seed),
                                    args.save, lambda n: print(f"round {n}/{args.audits}",
                                                    file=sys.stderr, flush=True))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m covey.bench.verify")
    p.add_argument("--audits", type=int, default=20, help="audits per kind")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--save", type=Path,
                   help="append every audit's answers here (JSON lines) for --replay")
    p.add_argument("--replay", type=Path, help="judge a saved run again; start no engine")
    p.add_argument("--max-mean-nats", type=float, default=None, help="with --replay")
    p.add_argument("--tie-nats", type=float, default=None, help="with --replay")
    p.add_argument("--seed", type=int, default=1, help="of the prompt and seed generator")
    p.add_argument("--kinds", default=",".join(HONEST + IMPOSTORS),
                   help="comma-separated subset of the kinds")
    p.add_argument("--tensor", default=None, help="perturbed copy: which tensor")
    p.add_argument("--factor", type=float, default=None, help="perturbed copy: scale factor")
    p.add_argument("--data-dir", type=Path, default=Path("~/.covey"),
                   help="where the embedded models are kept")
    args = p.parse_args(argv)
    args.kinds = args.kinds.split(",")
    if args.replay:
        th = Thresholds(**{k: v for k, v in (("max_mean_nats", args.max_mean_nats),
                                             ("tie_nats", args.tie_nats)) if v is not None})
        saved = [json.loads(line) for line in args.replay.read_text().splitlines() if line]
        result = summarize(replay(saved, th))
        result["thresholds"] = asdict(th)
        print(json.dumps(result, indent=1))
        return 0
    from covey.bench.impostors import perturbed_gguf

    data_dir = args.data_dir.expanduser()
    gemma = embedded.model_path(embedded.GEMMA, data_dir)
    models = {"gemma": gemma, "smollm2": embedded.model_path(embedded.SMOLLM2, data_dir)}
    with tempfile.TemporaryDirectory(prefix="covey-bench-verify-") as tmp:
        models["perturbed"] = Path(tmp) / gemma.name
        options = {k: v for k, v in (("tensor", args.tensor), ("factor", args.factor))
                   if v is not None}
        changed = perturbed_gguf(gemma, models["perturbed"], **options)
        started = time.monotonic()
        records = asyncio.run(_run(args, models))
    result = summarize(records)
    result |= {"perturbation": changed, "audits_per_kind": args.audits,
               "wall_s": time.monotonic() - started}
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
