"""Terminal side of the CLI: talk to a running node over its API and render the answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from covey.metrics.timing import measure

err = Console(stderr=True)


@contextlib.contextmanager
def assembly_progress() -> Iterator[Callable[[int, int], None]]:
    """A progress callback that shows a bar only if work actually happens."""
    progress = Progress(TextColumn("assembling the default model"), BarColumn(),
                        DownloadColumn(), TransferSpeedColumn(), console=err, transient=False)
    task: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task:
            progress.start()
            task.append(progress.add_task("assemble", total=total))
        progress.update(task[0], completed=done)

    try:
        yield update
    finally:
        if task:
            progress.stop()


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class NodeUnreachable(Exception):
    pass


async def _get_json(url: str, api_key: str | None) -> Any:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(url, headers=_headers(api_key)) as r:
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise NodeUnreachable(_error_message(body, r.status))
                return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NodeUnreachable(f"no Covey node answers at {url} ({type(exc).__name__}); "
                              "start one with `covey serve`") from exc


def _error_message(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"HTTP {status}: {body['error'].get('message')}"
    return f"HTTP {status}"


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "no measurement yet" if value is None else f"{value:.{digits}f} {unit}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _fetch_status(url: str, api_key: str | None) -> dict[str, Any] | None:
    """The node's /api/status, or None after telling the user why it could not be had."""
    try:
        snap: dict[str, Any] = asyncio.run(_get_json(url + "/api/status", api_key))
    except NodeUnreachable as exc:
        err.print(f"covey: {exc}")
        return None
    return snap


def status(url: str, api_key: str | None, as_json: bool) -> int:
    snap = _fetch_status(url, api_key)
    if snap is None:
        return 1
    if as_json:
        print(json.dumps(snap, indent=2))
        return 0
    node = snap["node"]
    out = Console()
    out.print(f"[bold]{node['name']}[/] {node['id']}  covey {node['version']}  "
              f"up {node['uptime_s']:.0f}s  {url}")
    table = Table(show_lines=False)
    table.add_column("model", no_wrap=True)
    for col in ("state", "slots", "queue", "TTFT p50", "tok/s p50", "native tok/s", "samples"):
        table.add_column(col)
    for m in snap["models"]:
        state = m["state"] if not m.get("reason") else f"{m['state']}: {m['reason']}"
        base = m["baseline"]
        table.add_row(m["id"], state, f"{m['in_flight'] - m['queue_depth']}/{m['slots']}",
                      str(m["queue_depth"]), _fmt(m["ttft_ms"]["p50"], "ms", 0),
                      _fmt(m["tokens_per_s"]["p50"], "tok/s"),
                      _fmt(base["tokens_per_s"] if base else None, "tok/s"),
                      str(m["tokens_per_s"]["count"]))
    out.print(table)
    return 0


def models(url: str, api_key: str | None, as_json: bool) -> int:
    snap = _fetch_status(url, api_key)
    if snap is None:
        return 1
    rows = [{k: m[k] for k in ("id", "size_bytes", "quantization", "state", "reason", "engine")}
            for m in snap["models"]]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table()
    table.add_column("model", no_wrap=True)
    for col in ("size", "quant", "engine", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], _size(r["size_bytes"]), r["quantization"] or "-", r["engine"],
                      r["state"] + (f": {r['reason']}" if r["reason"] else ""))
    Console().print(table)
    return 0


def chat(url: str, api_key: str | None, prompt: str, model: str | None,
         max_tokens: int) -> int:
    try:
        return asyncio.run(_chat(url, api_key, prompt, model, max_tokens))
    except NodeUnreachable as exc:
        err.print(f"covey: {exc}")
        return 1


async def _chat(url: str, api_key: str | None, prompt: str, model: str | None,
                max_tokens: int) -> int:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "stream": True,
                            "max_tokens": max_tokens,
                            "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    t0 = time.perf_counter()
    t_first = t_last = None
    tokens = 0
    served_model = model or "?"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                url + "/v1/chat/completions", json=body, headers=_headers(api_key)) as r:
            if r.status != 200:
                raise NodeUnreachable(_error_message(await r.json(content_type=None), r.status))
            served_by = r.headers.get("x-covey-served-by", "?")
            async for raw_line in r.content:
                line = raw_line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    sys.stdout.write("\n")
                    err.print(f"covey: stream failed: {event['error'].get('message')}")
                    return 1
                served_model = event.get("model", served_model)
                usage = event.get("usage") or {}
                tokens = usage.get("completion_tokens", tokens)
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        t_first = t_first or now
                        t_last = now
                        sys.stdout.write(text)
                        sys.stdout.flush()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NodeUnreachable(f"no Covey node answers at {url} ({type(exc).__name__}); "
                              "start one with `covey serve`") from exc
    result = measure(t0, t_first, t_last, tokens)
    sys.stdout.write("\n")
    err.print(f"[dim]model {served_model} · served by {served_by} · "
              f"TTFT {_fmt(result.ttft_ms, 'ms', 0)} · "
              f"{_fmt(result.tokens_per_s, 'tok/s')}[/]", soft_wrap=True)
    return 0
