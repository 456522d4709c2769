"""`covey pull SOURCE`, `covey rm ID`, `covey models --local`: model files on this machine.

Exit codes: 0 fine, 1 the fetch or removal failed, 2 a source this command does not take.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from covey.console import size_text
from covey.engine import embedded
from covey.errors import FetchError
from covey.fetch import inventory
from covey.fetch.download import Progress as ProgressCallback
from covey.fetch.pull import pull
from covey.fetch.sources import (
    Embedded,
    HttpFile,
    HubFile,
    LocalFile,
    PeerModel,
    parse_source,
    request_for,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SOURCES_HELP = ("an https:// URL to a GGUF (optionally ending #sha256=HEX), "
                "hf:OWNER/REPO/FILE.gguf[@REVISION] (HF_ENDPOINT and HF_TOKEN are honoured), "
                "or an embedded model's name")


def add_pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help=SOURCES_HELP)
    p.add_argument("--name", help="save it as NAME.gguf (default: the file name in the URL)")
    p.add_argument("--data-dir", help="default: ~/.covey, or $COVEY_HOME")


def add_rm_arguments(rm: argparse.ArgumentParser) -> None:
    rm.add_argument("model", help="its model id or file name (see `covey models --local`)")
    rm.add_argument("--data-dir", help="default: ~/.covey, or $COVEY_HOME")


def run_pull(args: argparse.Namespace, data_dir: Path, env: Mapping[str, str]) -> int:
    source = parse_source(args.source)
    if isinstance(source, LocalFile):
        err.print(f"covey: {source.path} is a local file: serve it with "
                  f"`covey serve --model {source.path}`", markup=False, soft_wrap=True)
        return 2
    if isinstance(source, PeerModel):
        err.print(f"covey: {source.model_id!r} is a model id: a node fetches it from the "
                  f"mesh peers that serve it (`covey serve --model {source.model_id}`); "
                  f"`covey pull` takes {SOURCES_HELP}", markup=False, soft_wrap=True)
        return 2
    _log_to_stderr()
    if isinstance(source, Embedded):
        with _progress(source.model.file_name) as update:
            path = embedded.model_path(source.model, data_dir, progress=update)
        found = inventory.describe(path, _now())
    else:
        found_or_none = _pull(source, args.source, data_dir, env, args.name)
        if found_or_none is None:
            return 1
        found = found_or_none
    print(f"model id: {found.id}\nfile:     {found.path}\nsha256:   {found.sha256}")
    return 0


def _pull(source: HttpFile | HubFile, text: str, data_dir: Path, env: Mapping[str, str],
          name: str | None) -> inventory.OnDisk | None:
    try:
        with _progress(request_for(source, env, name).file_name) as update:
            return asyncio.run(pull(source, text, data_dir, env=env, name=name,
                                    progress=update))
    except FetchError as exc:
        err.print(f"covey: {exc.message}", markup=False, soft_wrap=True)
        return None


def run_rm(args: argparse.Namespace, data_dir: Path, api_key: str | None) -> int:
    path = inventory.find(data_dir, args.model)
    model_id = inventory.model_id(path) if path else None
    try:
        removed = inventory.remove(data_dir, args.model)
    except FetchError as exc:
        err.print(f"covey: {exc.message}", markup=False, soft_wrap=True)
        return 1
    print(f"removed {removed}")
    url = _running_node(data_dir)
    if url and model_id and model_id in _served(url, api_key):
        print(f"the node at {url} still serves {model_id} from memory until it stops "
              "(the file is gone: it will not load it again)")
    return 0


def run_local(data_dir: Path, as_json: bool) -> int:
    """`covey models --local`: the GGUFs in `<data_dir>/models` (hashes files without a
    sidecar once)."""
    found = inventory.list_models(data_dir)
    if as_json:
        out.print_json(json.dumps([{**dataclasses.asdict(m), "path": str(m.path)}
                                   for m in found]))
        return 0
    if not found:
        out.print(f"no model files in {inventory.models_dir(data_dir)}", markup=False)
        return 0
    table = Table()
    table.add_column("model", no_wrap=True)
    for col in ("size", "sha256", "source", "fetched"):
        table.add_column(col)
    for m in found:
        table.add_row(m.id, size_text(m.size), m.sha256[:12], m.source or "-",
                      (m.fetched_at or "-")[:16].replace("T", " "))
    out.print(table)
    return 0


@contextlib.contextmanager
def _progress(label: str) -> Iterator[ProgressCallback]:
    bar = Progress(TextColumn(label[:60], markup=False), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=False)
    task = bar.add_task("download", total=None)

    def update(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def _running_node(data_dir: Path) -> str | None:
    try:
        return str(json.loads((data_dir / "node.json").read_text())["url"]).rstrip("/")
    # No node running from this data dir (or a stale file): nothing to warn about.
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _served(url: str, api_key: str | None) -> set[str]:
    """Model ids the node at `url` lists; empty when it does not answer (best effort)."""
    async def ask() -> set[str]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s, \
                s.get(f"{url}/v1/models", headers=headers) as r:
            body = await r.json() if r.status == 200 else {}
        data = body.get("data") if isinstance(body, dict) else None
        return {str(m.get("id"))[:256] for m in (data or [])[:1000] if isinstance(m, dict)}

    try:
        return asyncio.run(ask())
    # A stale node.json, a node mid-shutdown, or a refusal: the warning is best effort.
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return set()


class _ErrLine(logging.Handler):
    """Log records as plain lines on stderr, printed above a live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"covey: {record.getMessage()}", markup=False, soft_wrap=True)


def _log_to_stderr() -> None:
    root = logging.getLogger("covey")
    root.setLevel(logging.WARNING)
    root.addHandler(_ErrLine())


def _now() -> datetime:
    return datetime.now().astimezone()


def environment() -> Mapping[str, str]:
    """The variables a pull reads (HF_ENDPOINT, HF_TOKEN), read once by the CLI."""
    return {k: v for k in ("HF_ENDPOINT", "HF_TOKEN") if (v := os.environ.get(k))}
