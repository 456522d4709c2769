"""Terminal side of the CLI: talk to a running node over its API and render the answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from covey import console_verdicts as verdicts
from covey.engine import embedded
from covey.metrics.timing import measure

err = Console(stderr=True)


@contextlib.contextmanager
def assembly_progress() -> Iterator[Callable[[int, int], None]]:
    """A progress callback for putting an embedded model in place (unpacking, assembling,
    hashing); shows a bar only if work actually happens."""
    progress = Progress(TextColumn("preparing the model"), BarColumn(),
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


class NodeRefused(NodeUnreachable):
    """The node answered, with an error (`status`): it is running, the request was wrong."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def _get_json(url: str, api_key: str | None, timeout_s: float = 10) -> Any:
    try:
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url, headers=_headers(api_key)) as r:
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise NodeRefused(_error_message(body, r.status), r.status)
                return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NodeUnreachable(f"no Covey node answers at {url} ({type(exc).__name__}); "
                              "start one with `covey serve`") from exc


async def _post_json(url: str, api_key: str | None, payload: Any,
                     timeout_s: float = 30) -> Any:
    try:
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.post(url, json=payload, headers=_headers(api_key)) as r:
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise NodeUnreachable(_error_message(body, r.status))
                return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise NodeUnreachable(f"no Covey node answers at {url} ({type(exc).__name__}); "
                              "start one with `covey serve`") from exc


def invite(url: str, api_key: str | None, ttl_s: float) -> int:
    """Ask the running node for an invite (it asks the mesh's creator) and print it."""
    try:
        answer = asyncio.run(_post_json(url + "/api/invite", api_key, {"ttl_s": ttl_s}))
    except NodeUnreachable as exc:
        err.print(f"covey: {exc}", markup=False)
        return 1
    print(answer["invite"])
    return 0


def grant(url: str, api_key: str | None, node: str, credits: float, note: str) -> int:
    """Ask the running node (the mesh's creator) to grant `node` credits."""
    try:
        got = asyncio.run(_post_json(url + "/api/ledger/grant", api_key,
                                     {"node": node, "credits": credits, "note": note}))
    except NodeUnreachable as exc:
        err.print(f"covey: {exc}", markup=False)
        return 1
    print(f"entry {got['seq']}: {got['credits']:+g} credits to {got['node']} "
          f"(balance {got['balance']:g})")
    return 0


def _error_message(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"HTTP {status}: {body['error'].get('message')}"
    return f"HTTP {status}"


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "no measurement yet" if value is None else f"{value:.{digits}f} {unit}"


def size_text(n: int | None) -> str:
    """A file size for people: MiB below a GiB, GiB with two decimals above."""
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


def fetch_lines(fetches: dict[str, Any]) -> list[str]:
    """One line per model whose file this node fetches from peers (issue 12)."""
    lines = []
    for model, f in sorted(fetches.items()):
        state = f.get("state", "?")
        if state == "fetching" and f.get("total"):
            done, total = f.get("done", 0), f["total"]
            lines.append(f"{model}: fetching from {', '.join(f.get('sources', []))}: "
                         f"{100 * done / total:.0f}% of {size_text(total)}")
        elif state == "fetched":
            dropped = f.get("dropped") or {}
            lines.append(f"{model}: fetched from peers in {f.get('seconds')}s ("
                         + ", ".join(f"{k} {size_text(v)}" for k, v in
                                     (f.get("bytes_from") or {}).items() if v)
                         + (f"; dropped {', '.join(dropped)}" if dropped else "") + ")")
        else:
            why = f": {f['reason']}" if f.get("reason") else ""
            lines.append(f"{model}: {state}{why}")
    return lines


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
    for col in ("tier", "state", "slots", "queue", "TTFT p50", "tok/s p50", "native tok/s",
                "samples"):
        table.add_column(col)
    for m in snap["models"]:
        state = m["state"] if not m.get("reason") else f"{m['state']}: {m['reason']}"
        base = m["baseline"]
        table.add_row(m["id"], m.get("tier", "-"), state,
                      f"{m['in_flight'] - m['queue_depth']}/{m['slots']}",
                      str(m["queue_depth"]), _fmt(m["ttft_ms"]["p50"], "ms", 0),
                      _fmt(m["tokens_per_s"]["p50"], "tok/s"),
                      _fmt(base["tokens_per_s"] if base else None, "tok/s"),
                      str(m["tokens_per_s"]["count"]))
    out.print(table)
    for line in fetch_lines(snap.get("fetches") or {}):
        out.print(line, markup=False)
    if snap.get("catalog"):
        out.print(_catalog_table(snap["catalog"], snap.get("default_model")))
    mesh = snap.get("mesh") or {}
    if mesh.get("addresses"):
        out.print(f"mesh {mesh.get('id')}: peers reach this node at "
                  f"{', '.join(mesh['addresses'])}")
    if snap.get("mesh", {}) and snap["mesh"].get("problem"):
        out.print(f"[red]mesh problem:[/] {snap['mesh']['problem']}")
    if snap.get("peers"):
        out.print(_peers_table(snap["peers"], snap.get("verification")))
    return 0


def _targets(targets: dict[str, Any] | None) -> str:
    """A tier's targets in one cell: `≤ 3 s TTFT, ≥ 8 tok/s`, or `-` (experimental)."""
    t = targets or {}
    parts = ([f"≤ {t['ttft_s']:g} s TTFT"] if t.get("ttft_s") is not None else []) + (
        [f"≥ {t['tokens_per_s']:g} tok/s"] if t.get("tokens_per_s") is not None else [])
    return ", ".join(parts) or "-"


def _catalog_table(catalog: list[dict[str, Any]], default: str | None) -> Table:
    """Every model the mesh serves, with its tier and targets; `*` marks the default."""
    table = Table(title="mesh catalog (* the default for requests naming no model)",
                  title_justify="left")
    for col in ("model", "tier", "targets", "tok/s p50", "nodes"):
        table.add_column(col, overflow="fold")
    for row in catalog:
        # Ids and names are peers' own words: shown as text, never as markup.
        table.add_row(escape(row["id"]) + (" *" if row["id"] == default else ""),
                      escape(row.get("tier", "-")), _targets(row.get("targets")),
                      _fmt(row.get("tokens_per_s_p50"), "tok/s"),
                      escape(", ".join(n.get("name") or n["id"][:12]
                                       for n in row.get("nodes", []))))
    return table


def _peers_table(peers: list[dict[str, Any]], verification: dict[str, Any] | None = None,
                 now: float | None = None) -> Table:
    """The peers and, per model, this node's audit verdict (`verified` column)."""
    table = Table(title="peers", title_justify="left")
    for col in ("node", "id", "address", "models", "last seen", "data plane", "verified"):
        table.add_column(col, overflow="fold")
    now = time.time() if now is None else now
    mode = (verification or {}).get("mode")
    for p in peers:
        models = ", ".join(
            f"{m['id']} ({m['state']}, {_fmt(m.get('tokens_per_s_p50'), 'tok/s')})"
            for m in p["models"]) or "-"
        rows = verdicts.verdict_rows(verification, p["id"], [m["id"] for m in p["models"]])
        # Names, ids and models are peers' own words: text, never markup.
        table.add_row(escape(p["name"] or ""), p["id"][:12], escape(", ".join(p["addresses"])),
                      escape(models), f"{max(0.0, now - p['last_seen']):.0f}s ago",
                      _health_cell(p.get("health")),
                      escape(verdicts.status_cell(rows, mode, now)))
    return table


def _health_cell(health: dict[str, Any] | None) -> str:
    if not health or health["ok"] is None:
        return "not checked yet"
    if health["ok"]:
        return "[green]✓[/] all layers pass"
    f = health["first_failure"]
    return f"[red]✗[/] layer {f['layer']} {f['name']}: {f['detail']}"


_MARK = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]·[/]"}


def doctor(url: str, api_key: str | None, peer: str | None, token: bool,
           as_json: bool) -> int:
    """Every layer for this node and its peers; exit 1 when any layer failed."""
    query = "?" + "&".join(([f"peer={quote(peer, safe='')}"] if peer else [])
                           + ([] if token else ["token=0"]))
    try:
        report: dict[str, Any] = asyncio.run(_get_json(url + "/api/doctor" + query.rstrip("?"),
                                                       api_key, timeout_s=120))
    except NodeUnreachable as exc:
        if isinstance(exc, NodeRefused) and exc.status == 404:
            # No such member: the message lists the known ones. Not a failed layer.
            err.print(f"covey: {exc}")
            return 2
        fix = "start it with `covey serve` (or point --url/--data-dir at the right node)"
        if as_json:
            print(json.dumps({"ok": False, "node": {"first_failure": {
                "layer": 1, "name": "local node running", "detail": str(exc), "fix": fix}},
                "peers": []}, indent=2))
        else:
            err.print(f"{_MARK[False]} layer 1 local node running: {exc}\n  fix: {fix}")
        return 1
    # The verdicts come from /api/status. A node that answered the doctor answers that too;
    # if it does not, the layers still print and the verdicts are said to be missing.
    snap = None
    with contextlib.suppress(NodeUnreachable):
        snap = asyncio.run(_get_json(url + "/api/status", api_key))
    report = verdicts.with_verification(report, snap if isinstance(snap, dict) else None)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    out = Console()
    now = time.time()
    mode = (report.get("verification") or {}).get("mode")
    sections = [("this node", report["node"]["layers"], report["node"]["first_failure"], None)]
    sections += [(f"{escape(p['name'] or p['address'] or '')} ({(p['id'] or '')[:12]})",
                  p["layers"],
                  p["first_failure"], p.get("verification")) for p in report["peers"]]
    for title, layers, failure, rows in sections:
        table = Table(title=title, title_justify="left", show_header=False, box=None)
        table.add_column(width=2)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        for layer in layers:
            table.add_row(_MARK[layer["ok"]], f"{layer['layer']:>2} {layer['name']}",
                          layer["detail"])
        out.print(table)
        if rows is not None:
            for line in verdicts.doctor_lines(rows, mode, now):
                out.print(line, soft_wrap=True, highlight=False)
        if failure:
            out.print(f"  [red]first failure:[/] layer {failure['layer']} ({failure['name']})"
                      f"\n  [bold]fix:[/] {failure['fix']}\n")
    if not report["peers"] and not peer:
        out.print("no peers in the roster yet")
    if report["verification"] is None:
        out.print("[dim]·[/] verification: not shown (/api/status did not answer)")
    out.print("[green]all layers pass[/]" if report["ok"] else "[red]something is broken[/]")
    return 0 if report["ok"] else 1


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
        table.add_row(r["id"], size_text(r["size_bytes"]), r["quantization"] or "-", r["engine"],
                      r["state"] + (f": {r['reason']}" if r["reason"] else ""))
    out = Console()
    out.print(table)
    out.print(f"embedded models, served by name with `covey serve --model NAME`: "
              f"{embedded.names_help()}", markup=False, highlight=False, soft_wrap=True)
    return 0


class StreamBroken(Exception):
    """The node answered and began streaming, then the answer stopped before `[DONE]`."""

    def __init__(self, tokens: int, reason: str) -> None:
        super().__init__(f"the answer stopped after {tokens} token{'s' * (tokens != 1)}: "
                         f"{reason}")


def chat(url: str, api_key: str | None, prompt: str, model: str | None,
         max_tokens: int) -> int:
    """Stream one answer; exit 1 when no node answers or the answer stops short."""
    try:
        return asyncio.run(_chat(url, api_key, prompt, model, max_tokens))
    except (NodeUnreachable, StreamBroken) as exc:
        # markup off: the reason may come from the network and hold brackets ("[DONE]").
        err.print(f"covey: {exc}", soft_wrap=True, markup=False, highlight=False)
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
    pieces = tokens = 0
    served_model = model or "?"
    done = False
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            response = await session.post(url + "/v1/chat/completions", json=body,
                                          headers=_headers(api_key))
        # Nothing answered at all (refused, reset before headers, timed out): no node there.
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NodeUnreachable(f"no Covey node answers at {url} ({type(exc).__name__}); "
                                  "start one with `covey serve`") from exc
        async with response as r:
            if r.status != 200:
                raise NodeUnreachable(await _error_text(r))
            served_by = r.headers.get("x-covey-served-by", "?")
            try:
                async for raw_line in r.content:
                    line = raw_line.strip()
                    if line == b"data: [DONE]":
                        done = True
                        break
                    if not line.startswith(b"data: "):
                        continue
                    try:
                        event = json.loads(line[6:])
                    except ValueError:
                        raise StreamBroken(pieces, "the node sent an event that is not JSON"
                                           ) from None
                    if not isinstance(event, dict):
                        raise StreamBroken(pieces, "the node sent an event that is not an "
                                           "object")
                    if "error" in event:
                        error = event["error"]
                        message = error.get("message") if isinstance(error, dict) else error
                        raise StreamBroken(pieces, str(message))
                    served_model = event.get("model", served_model)
                    usage = event.get("usage") or {}
                    tokens = usage.get("completion_tokens", tokens)
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            now = time.perf_counter()
                            t_first = t_first or now
                            t_last = now
                            pieces += 1
                            sys.stdout.write(text)
                            sys.stdout.flush()
            # The node answered, so it runs: the stream broke after it began (the node was
            # stopped, the connection dropped, or it went silent past the read timeout).
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise StreamBroken(pieces, f"the connection to {url} broke ({reason})"
                                   ) from exc
            finally:
                if pieces:
                    sys.stdout.write("\n")
                    sys.stdout.flush()
    if not done:
        raise StreamBroken(pieces, "the stream ended without [DONE]")
    result = measure(t0, t_first, t_last, tokens)
    err.print(f"[dim]model {served_model} · served by {served_by} · "
              f"TTFT {_fmt(result.ttft_ms, 'ms', 0)} · "
              f"{_fmt(result.tokens_per_s, 'tok/s')}[/]", soft_wrap=True)
    return 0


async def _error_text(r: aiohttp.ClientResponse) -> str:
    """The node's error message for a non-200 answer (or just the status, if its body is
    not the OpenAI error JSON)."""
    try:
        return _error_message(await r.json(content_type=None), r.status)
    # Not JSON (a proxy's HTML page, say), or the body broke off: the status still tells.
    except (ValueError, aiohttp.ClientError):
        return f"HTTP {r.status}"
