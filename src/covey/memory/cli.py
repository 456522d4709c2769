"""`covey memory add | search | rm | ls | import | export`: the running node's memory API.

Every command talks to the node (`--url`, or the node running from `--data-dir`), which
embeds texts with its embedding model; nothing here opens the store itself. `import` and
`export` speak JSON lines (one memory object per line), so an export imports as it is.
Exit codes: 0 fine, 1 the node refused or failed, 2 bad input (import: some lines skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import quote, urlencode

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

IMPORT_BATCH = 128  # lines per POST (the API takes up to 256)
PAGE = 1000

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class Refused(Exception):
    """The node answered with an error, or did not answer."""


def add_arguments(mem: argparse.ArgumentParser,
                  client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """The subcommands of `covey memory` (covey/cli.py makes its parser)."""
    cmds = mem.add_subparsers(dest="memory_command", required=True, metavar="COMMAND")

    add = cmds.add_parser("add", help="store one memory")
    add.add_argument("text")
    add.add_argument("--project", default="default")
    add.add_argument("--tag", action="append", default=[], help="repeatable")
    add.add_argument("--source", default="cli", help="where it came from (default: cli)")
    add.add_argument("--confidence", type=float, default=1.0, help="0..1 (default: 1)")
    add.add_argument("--pin", action="store_true", help="mark it pinned")

    search = cmds.add_parser("search", help="the memories closest in meaning to a query")
    search.add_argument("query")
    search.add_argument("--project", action="append", help="only these projects (repeatable)")
    search.add_argument("--tag", action="append", default=[], help="must carry (repeatable)")
    search.add_argument("-k", type=int, default=5, help="results (default: 5)")
    search.add_argument("--min-score", type=float, default=0.0)
    search.add_argument("--days", type=float, help="only memories updated in the last DAYS")
    search.add_argument("--mesh", action="store_true", help="also ask every peer that "
                        "shares its memory")
    search.add_argument("--timeout", type=float, default=2.0, help="seconds peers get "
                        "(with --mesh; default: 2)")
    search.add_argument("--json", action="store_true")

    rm = cmds.add_parser("rm", help="forget memories by id")
    rm.add_argument("ids", nargs="+")

    ls = cmds.add_parser("ls", help="list memories, newest first")
    ls.add_argument("--project")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")

    imp = cmds.add_parser("import", help="add memories from JSON lines (a file, or - for "
                          "stdin)")
    imp.add_argument("file")

    exp = cmds.add_parser("export", help="write every memory as JSON lines")
    exp.add_argument("--project")
    exp.add_argument("-o", "--output", help="file (default: stdout)")
    for p in (add, search, rm, ls, imp, exp):
        client_flags(p)


def run(args: argparse.Namespace, url: str, api_key: str | None) -> int:
    try:
        with _file(args) as stream:
            return asyncio.run(_run(args, url, api_key, stream))
    except Refused as exc:
        err.print(f"covey: {exc}", markup=False)
        return 1


def _file(args: argparse.Namespace) -> contextlib.AbstractContextManager[IO[str]]:
    """What `import` reads or `export` writes (stdin, stdout, or the file named)."""
    try:
        if args.memory_command == "import":
            return (contextlib.nullcontext(sys.stdin) if args.file == "-"
                    else open(args.file, encoding="utf-8"))
        if args.memory_command == "export" and args.output:
            return open(args.output, "w", encoding="utf-8")
    except OSError as exc:
        raise Refused(f"cannot open {exc.filename}: {exc.strerror}") from exc
    return contextlib.nullcontext(sys.stdout)


async def _run(args: argparse.Namespace, url: str, api_key: str | None,
               stream: IO[str]) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession(headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        node = _Node(session, url)
        command = args.memory_command
        if command == "add":
            got = await node.call("POST", "/v1/memory", {
                "text": args.text, "project": args.project, "tags": args.tag,
                "source": args.source, "confidence": args.confidence, "pinned": args.pin})
            print(got["data"][0]["id"])
            return 0
        if command == "search":
            return await _search(node, args)
        if command == "rm":
            for memory_id in args.ids:
                await node.call("DELETE", f"/v1/memory/{quote(memory_id, safe='')}")
                print(f"forgot {memory_id}")
            return 0
        if command == "ls":
            query = {"limit": args.limit, **({"project": args.project} if args.project
                                              else {})}
            got = await node.call("GET", f"/v1/memory?{urlencode(query)}")
            if args.json:
                print(json.dumps(got, indent=2))
            else:
                _table(got["data"], scored=False)
                s = got.get("memory", {})
                out.print(f"{s.get('count', '?')} memories, embedded by {s.get('model')}; "
                          f"shared projects: {', '.join(s.get('shared_projects') or []) or 'none'}")
            return 0
        if command == "import":
            return await _import(node, stream)
        return await _export(node, args.project, stream)


class _Node:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        try:
            async with self.session.request(method, self.url + path, json=payload) as r:
                body = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Refused(f"no Covey node answers at {self.url} ({type(exc).__name__}); "
                          "start one with `covey serve`") from exc
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise Refused(f"HTTP {status}: {message or 'no reason given'}")
        return body


async def _search(node: _Node, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"query": args.query, "k": args.k, "min_score": args.min_score,
                            "scope": "mesh" if args.mesh else "local",
                            "timeout_s": args.timeout}
    if args.project:
        body["project"] = args.project
    if args.tag:
        body["tags"] = args.tag
    if args.days is not None:
        body["since"] = time.time() - args.days * 86400
    got = await node.call("POST", "/v1/memory/search", body)
    if args.json:
        print(json.dumps(got, indent=2))
        return 0
    _table(got["data"], scored=True)
    if args.mesh:
        if len(got.get("sources", [])) <= 1:
            out.print("  no peer shares its memory (a peer turns it on with "
                      "`covey serve --share-memory PROJECT`)", markup=False)
        for s in got.get("sources", []):
            why = f": {s['reason']}" if s.get("reason") else ""
            out.print(f"  {escape(s['name'])}: {s['status']}, {s['hits']} hits{escape(why)}")
    return 0


def _table(rows: list[dict[str, Any]], scored: bool) -> None:
    table = Table(show_edge=False, pad_edge=False)
    if scored:
        table.add_column("score", justify="right")
        table.add_column("node")
    table.add_column("id")
    table.add_column("project")
    table.add_column("text", overflow="fold")
    for r in rows:
        cells = [f"{r['score']:.3f}", escape(str(r.get("node", "")))] if scored else []
        text = str(r["text"])
        table.add_row(*cells, escape(str(r.get("id", ""))), escape(str(r["project"])),
                      escape(text if len(text) <= 200 else text[:199] + "…"))
    out.print(table if rows else "no memories found")


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, line


async def _import(node: _Node, lines: IO[str]) -> int:
    bad: list[str] = []
    added = 0
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("importing", total=None)
        batch: list[dict[str, Any]] = []
        numbers: list[int] = []

        async def send() -> None:
            nonlocal added
            if not batch:
                return
            try:
                got = await node.call("POST", "/v1/memory", {"memories": batch})
                added += len(got["data"])
            except Refused as exc:
                if "HTTP 400" not in str(exc):
                    raise
                # One bad memory refuses its batch: send them singly to keep the good ones.
                for number, item in zip(numbers, batch, strict=True):
                    try:
                        await node.call("POST", "/v1/memory", item)
                        added += 1
                    except Refused as one:
                        bad.append(f"line {number}: {one}")
            progress.update(task, completed=added)
            batch.clear()
            numbers.clear()

        for number, line in _lines(lines):
            try:
                item = json.loads(line)
            except ValueError:
                bad.append(f"line {number}: not JSON")
                continue
            if not isinstance(item, dict):
                bad.append(f"line {number}: not a JSON object")
                continue
            batch.append({k: item[k] for k in ("text", "project", "tags", "source",
                                               "confidence", "pinned") if k in item})
            numbers.append(number)
            if len(batch) >= IMPORT_BATCH:
                await send()
        await send()
    for line in bad[:20]:
        err.print(f"skipped {line}", markup=False)
    if len(bad) > 20:
        err.print(f"... and {len(bad) - 20} more", markup=False)
    err.print(f"imported {added} memories" + (f", skipped {len(bad)} lines" if bad else ""))
    return 2 if bad else 0


async def _export(node: _Node, project: str | None, stream: IO[str]) -> int:
    count = 0
    offset = 0
    while True:
        query = {"limit": PAGE, "offset": offset, **({"project": project} if project else {})}
        got = await node.call("GET", f"/v1/memory?{urlencode(query)}")
        for memory in got["data"]:
            stream.write(json.dumps(memory, ensure_ascii=False) + "\n")
        count += len(got["data"])
        if len(got["data"]) < PAGE:
            break
        offset += PAGE
    err.print(f"exported {count} memories")
    return 0
