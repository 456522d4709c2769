"""What the node's `--model` values are on disk: files, embedded models put in place,
URLs and `hf:` files pulled (blocking, with progress), and model ids a file here has; the
ids no file here has are left to be fetched from peers (wanted.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from covey.engine import embedded
from covey.engine.catalog import ModelFileError
from covey.errors import ConfigError, FetchError
from covey.fetch import inventory
from covey.fetch.pull import pull
from covey.fetch.sources import Embedded, HttpFile, HubFile, LocalFile, parse_source

Progress = Callable[[int, int], None]  # (done bytes, total bytes)


def model_files(values: Sequence[str], data_dir: Path, progress: Progress | None = None
                ) -> tuple[list[tuple[Path, ModelFileError | None]], list[str]]:
    """Each value's file with the error that kept it from being had (a failed row naming
    the fix, never a dead node), and the model ids to fetch from peers."""
    files: list[tuple[Path, ModelFileError | None]] = []
    wanted: list[str] = []
    for value in values:
        try:
            source = parse_source(value)
        except ConfigError as exc:
            files.append((Path(value), ModelFileError(str(exc))))
            continue
        if isinstance(source, LocalFile):
            files.append((source.path, None))
        elif isinstance(source, Embedded):
            try:
                files.append((embedded.model_path(source.model, data_dir, progress), None))
            except ModelFileError as exc:
                files.append((data_dir / "models" / source.model.file_name, exc))
        elif isinstance(source, HttpFile | HubFile):
            try:
                files.append((pull_blocking(source, value, data_dir, progress), None))
            except (FetchError, ConfigError) as exc:
                files.append((Path(value.split("#")[0].rsplit("/", 1)[-1]),
                              ModelFileError(f"cannot fetch {value}: {exc}")))
        elif (held := inventory.find(data_dir, source.model_id)) is not None:
            files.append((held, None))  # pulled or fetched before: served by its id
        else:
            wanted.append(source.model_id)
    return files, wanted


def pull_blocking(source: HttpFile | HubFile, text: str, data_dir: Path,
                  progress: Progress | None = None) -> Path:
    """Download a `--model URL` into the data dir (or find it there), blocking: on its own
    event loop in a worker thread, so it works with or without a running loop."""
    def counted(done: int, total: int | None) -> None:
        if progress is not None:
            progress(done, total or 0)

    def work() -> Path:
        return asyncio.run(pull(source, text, data_dir, env=os.environ,
                                progress=counted)).path

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()
