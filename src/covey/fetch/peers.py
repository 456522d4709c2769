"""Fetching a model file from the members that have it: every source at once, every chunk
verified before it is written, resumable.

1. Every source is asked for the file's manifest; the first valid one for the sha256 asked
   for becomes the reference. A source whose own manifest differs, or that has none, is
   dropped before it sends any chunk.
2. Chunks are taken from one shared queue (`fetch/plan.py` decides who fetches what), each
   source keeping up to `parallel` requests open. A chunk is hashed against the manifest and
   only then written at its offset in `<target>.part`; the indices of verified chunks go to
   `<target>.part.chunks` every few seconds (after the data is synced), so a fetch that is
   interrupted, by a crash or a source going away, loses nothing already verified.
3. A source that sends a chunk with the wrong hash is dropped at once (one log line, and in
   the result); one that fails `max_errors` times is dropped too; the others finish.
4. At the end the whole file's sha256 (the one the serving nodes publish in their signed
   records) is checked, then `.part` is renamed into place: nothing but a complete, verified
   file ever has the final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from covey.errors import FetchError
from covey.fetch.download import part_path
from covey.fetch.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    is_sha256,
    parse_manifest,
)
from covey.fetch.plan import Plan
from covey.fetch.serve import CHUNK_PATH, MANIFEST_PATH
from covey.mesh.peer_transport import Peer, PeerError, PeerTransport, call_json

log = logging.getLogger(__name__)

PARALLEL = 4  # requests open per source
MAX_ERRORS = 3  # failures before a source is dropped
MANIFEST_TIMEOUT_S = 120.0  # a source may first have to hash a large file it just got
IDLE_TIMEOUT_S = 60.0  # a chunk request with no bytes for this long has failed
FLUSH_EVERY_S = 2.0  # how often verified chunks are recorded for a resume
ANSWER_SLACK = 64 * 1024  # a chunk answer may be this much over the chunk (an error body)
RECORD_VERSION = 1
Progress = Callable[[int, int], None]  # (verified bytes, total bytes)
_T = TypeVar("_T")


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    size: int
    bytes_from: dict[str, int]  # source label → verified bytes it delivered in this run
    dropped: dict[str, str]  # source label → why it was dropped
    resumed_bytes: int  # verified bytes already in the .part when this run started


def record_of(target: Path) -> Path:
    return target.with_name(target.name + ".part.chunks")


async def fetch_from_peers(sha256: str, size: int | None, sources: Sequence[Peer],
                           transport: PeerTransport, target: Path,
                           progress: Progress | None = None, parallel: int = PARALLEL, *,
                           max_errors: int = MAX_ERRORS,
                           manifest_timeout_s: float = MANIFEST_TIMEOUT_S,
                           idle_timeout_s: float = IDLE_TIMEOUT_S,
                           flush_every_s: float = FLUSH_EVERY_S,
                           clock: Callable[[], float] = time.monotonic) -> FetchResult:
    """Fetch the file `sha256` (`size` bytes, when the record says) from `sources` into
    `target`. Raises FetchError when no source is left or the file does not match its
    sha256; what was verified stays in `<target>.part` for the next try."""
    if not is_sha256(sha256):
        raise FetchError(f"{sha256[:80]!r} is not a sha256 (64 lowercase hex digits)")
    if parallel < 1:
        raise ValueError("parallel must be 1 or more")
    unique = list({p.fingerprint: p for p in sources}.values())
    if not unique:
        raise FetchError(f"no peer has the file {sha256[:12]}…")
    run = _Run(sha256, size, unique, transport, target, progress, parallel, max_errors,
               manifest_timeout_s, idle_timeout_s, flush_every_s, clock)
    return await run.fetch()


class _Signal:
    """Wakes every waiter when something changed (a chunk done, a source dropped)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class _Run:
    def __init__(self, sha256: str, size: int | None, sources: list[Peer],
                 transport: PeerTransport, target: Path, progress: Progress | None,
                 parallel: int, max_errors: int, manifest_timeout_s: float,
                 idle_timeout_s: float, flush_every_s: float,
                 clock: Callable[[], float]) -> None:
        self.sha256, self.size, self.sources = sha256, size, sources
        self.transport, self.target, self.progress = transport, target, progress
        self.parallel, self.max_errors = parallel, max_errors
        self.manifest_timeout_s, self.idle_timeout_s = manifest_timeout_s, idle_timeout_s
        self.flush_every_s, self.clock = flush_every_s, clock
        self.part, self.record = part_path(target), record_of(target)
        self.labels = _labels(sources)
        self.signal = _Signal()
        self.failed_early: dict[str, str] = {}  # before the plan exists: fingerprint → why
        self.plan: Plan | None = None
        self.manifest: Manifest | None = None
        self.fd = -1
        self.done_bytes = 0
        self.last_flush = 0.0
        self.flushing = False
        self.threads: set[asyncio.Future[Any]] = set()
        self.whole = hashlib.sha256()  # of chunks 0..hashed-1, in order
        self.hashed = 0

    # --- the whole run --------------------------------------------------------------------

    async def fetch(self) -> FetchResult:
        asks = {p.fingerprint: asyncio.create_task(self._ask_manifest(p)) for p in self.sources}
        try:
            reference = await self._first_manifest(asks)
            return await self._transfer(reference, asks)
        finally:
            for task in asks.values():
                task.cancel()
            await asyncio.gather(*asks.values(), return_exceptions=True)
            if self.fd >= 0:
                os.close(self.fd)

    async def _first_manifest(self, asks: dict[str, asyncio.Task[Manifest]]) -> str:
        pending = set(asks.values())
        while pending:
            finished, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
            # Source order, not arrival order, among those that answered together.
            for fp, task in asks.items():
                if task not in finished:
                    continue
                exc = task.exception()
                if exc is None:
                    self.manifest = task.result()
                    return fp
                if fp not in self.failed_early:
                    self.failed_early[fp] = str(exc)
                    self._log_drop(fp, str(exc))
        raise FetchError(f"no peer could give the manifest of {self.sha256[:12]}…: "
                         + "; ".join(f"{self.labels[fp]}: {why}"
                                     for fp, why in self.failed_early.items()))

    async def _transfer(self, reference: str, asks: dict[str, asyncio.Task[Manifest]]
                        ) -> FetchResult:
        manifest = self.manifest
        assert manifest is not None
        done = await asyncio.to_thread(self._resume, manifest)
        plan = self.plan = Plan(len(manifest.chunks), [p.fingerprint for p in self.sources],
                                done=done, max_errors=self.max_errors)
        for fp, why in self.failed_early.items():
            plan.drop(fp, why)
        resumed = sum(manifest.span(i)[1] for i in plan.done)
        self.done_bytes = resumed
        await asyncio.to_thread(self._open, manifest, resumed)
        self._report()
        runners = [asyncio.create_task(self._source(p, asks[p.fingerprint], reference))
                   for p in self.sources if p.fingerprint not in self.failed_early]
        runners.append(asyncio.create_task(self._hash_prefix()))
        try:
            while not (plan.finished or plan.stuck):
                for task in runners:
                    if task.done() and not task.cancelled() and task.exception():
                        raise task.exception()  # type: ignore[misc]  # a disk write failed
                await self.signal.wait()
        finally:
            for task in runners:
                task.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            # A cancelled slot's write may still be running in its thread: the file
            # descriptor must outlive it.
            await asyncio.gather(*self.threads, return_exceptions=True)
            with contextlib.suppress(OSError):  # keep what was verified for a resume
                await asyncio.to_thread(self._flush)
        if not plan.finished:
            raise FetchError(f"every peer was dropped before {self.sha256[:12]}… was "
                             f"complete ({len(plan.done)}/{plan.count} chunks verified, kept "
                             "for the next try): " + "; ".join(
                                 f"{self.labels[fp]}: {why}"
                                 for fp, why in plan.dropped().items()))
        await asyncio.to_thread(self._finish, manifest)
        return FetchResult(self.target, self.sha256, manifest.size,
                           {self.labels[fp]: st.verified_bytes
                            for fp, st in plan.sources.items()},
                           {self.labels[fp]: why for fp, why in plan.dropped().items()},
                           resumed)

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn` in a thread that a cancellation of the caller does not orphan: the run
        waits for every such thread before it closes the file."""
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self.threads.add(future)
        future.add_done_callback(self.threads.discard)
        return await asyncio.shield(future)

    # --- one source ---------------------------------------------------------------------

    async def _ask_manifest(self, peer: Peer) -> Manifest:
        try:
            answer = await call_json(self.transport, peer, MANIFEST_PATH,
                                     {"sha256": self.sha256}, self.manifest_timeout_s,
                                     max_bytes=MAX_MANIFEST_BYTES)
            return parse_manifest(answer, self.sha256, self.size)
        # Why: a refusal, a broken connection or a malformed answer all mean this source
        # gives no usable manifest; it is dropped with the reason.
        except (PeerError, aiohttp.ClientError) as exc:
            raise _SourceFailed(str(exc)) from exc
        except ManifestError as exc:
            raise _SourceFailed(f"bad manifest: {exc}") from exc

    async def _source(self, peer: Peer, ask: asyncio.Task[Manifest], reference: str) -> None:
        plan, fp = self.plan, peer.fingerprint
        assert plan is not None
        if fp != reference:
            try:
                theirs = await ask
            except _SourceFailed as exc:
                return self._drop(fp, str(exc))
            if theirs != self.manifest:
                return self._drop(fp, f"its manifest differs from {self.labels[reference]}'s")
        try:
            await asyncio.gather(*(self._slot(peer) for _ in range(self.parallel)))
        finally:
            self.signal.fire()

    def _drop(self, fp: str, why: str) -> None:
        assert self.plan is not None
        self.plan.drop(fp, why)
        self._log_drop(fp, why)
        self.signal.fire()

    async def _slot(self, peer: Peer) -> None:
        plan, manifest, fp = self.plan, self.manifest, peer.fingerprint
        assert plan is not None and manifest is not None
        while True:
            index = plan.next_for(fp)
            if index is None:
                if plan.finished or plan.stuck or plan.sources[fp].dropped is not None:
                    return
                await self.signal.wait()
                continue
            offset, length = manifest.span(index)
            try:
                data = await self._get_chunk(peer, index, length)
            except _SourceFailed as exc:
                refused = exc.status in (403, 404, 409)
                if refused:  # it does not (or no longer) share the file: no point retrying
                    plan.on_error(index, fp, str(exc))
                    plan.drop(fp, str(exc))
                    self._log_drop(fp, str(exc))
                elif plan.on_error(index, fp, str(exc)):
                    self._log_drop(fp, plan.sources[fp].dropped or str(exc))
                self.signal.fire()
                continue
            good = await self._in_thread(_verify_and_write, self.fd, data, offset,
                                         manifest.chunks[index])
            if not good:
                why = f"chunk {index} did not match its hash in the manifest"
                was_dropped = plan.sources[fp].dropped is not None
                plan.on_bad(index, fp, why)
                if not was_dropped:
                    self._log_drop(fp, why)
            elif plan.on_verified(index, fp, length):
                self.done_bytes += length
                self._report()
                await self._maybe_flush()
            self.signal.fire()

    async def _hash_prefix(self) -> None:
        """Feed the whole-file hash with the verified chunks at the front of the file while
        the rest arrive (read back from the page cache), so little is left for the end."""
        plan = self.plan
        assert plan is not None
        while True:
            upto = self.hashed
            while upto in plan.done:
                upto += 1
            if upto > self.hashed:
                await self._in_thread(self._hash_chunks, upto)
            else:
                await self.signal.wait()

    def _hash_chunks(self, upto: int) -> None:
        """Hash chunks `self.hashed`..`upto` (all verified and written) into the whole."""
        manifest = self.manifest
        assert manifest is not None
        while self.hashed < upto:
            offset, length = manifest.span(self.hashed)
            data = os.pread(self.fd, length, offset)
            if len(data) != length:
                raise FetchError(f"{self.part} is shorter than what was written to it")
            self.whole.update(data)
            self.hashed += 1

    async def _get_chunk(self, peer: Peer, index: int, length: int) -> list[bytes]:
        """The chunk as the pieces it came in: the worker thread joins them, so the event
        loop, which also decrypts every byte, copies none of them."""
        body = json.dumps({"sha256": self.sha256, "index": index}).encode()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.idle_timeout_s) as deadline:
                async with await self.transport.post(
                        peer, CHUNK_PATH, body, timeout_s=self.idle_timeout_s,
                        max_bytes=length + ANSWER_SLACK) as r:
                    if r.status != 200:
                        raise _SourceFailed(_refusal(r.status, await r.read()), r.status)
                    declared = r.headers.get("Content-Length")
                    if declared is not None and declared != str(length):
                        raise _SourceFailed(f"announced {declared[:20]} bytes for chunk "
                                            f"{index} of {length}")
                    pieces: list[bytes] = []
                    got = 0
                    async for piece in r.content.iter_any():
                        if got + len(piece) > length:
                            raise _SourceFailed(f"sent more than chunk {index}'s {length} "
                                                "bytes")
                        pieces.append(piece)
                        got += len(piece)
                        deadline.reschedule(loop.time() + self.idle_timeout_s)
        except TimeoutError as exc:
            raise _SourceFailed(f"sent nothing for {self.idle_timeout_s:g}s") from exc
        # Why: a connection that breaks mid-answer surfaces as aiohttp's error, a transport
        # refusal as PeerError; both are one failed attempt for this source.
        except (PeerError, aiohttp.ClientError) as exc:
            raise _SourceFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc
        if got != length:
            raise _SourceFailed(f"sent {got} of chunk {index}'s {length} bytes")
        return pieces

    # --- the files ----------------------------------------------------------------------

    def _resume(self, manifest: Manifest) -> set[int]:
        """Chunks already verified in a .part left by an earlier run of the same file."""
        try:
            data = json.loads(self.record.read_text())
            if (not isinstance(data, dict) or data.get("version") != RECORD_VERSION
                    or data.get("sha256") != manifest.sha256
                    or data.get("size") != manifest.size
                    or self.part.stat().st_size != manifest.size):
                return set()
            done = data.get("done")
            if not isinstance(done, list) or len(done) > len(manifest.chunks):
                return set()
            indices = {i for i in done if isinstance(i, int) and 0 <= i < len(manifest.chunks)}
        # No record, or a damaged one: start over (the .part is overwritten chunk by chunk).
        except (OSError, ValueError):
            return set()
        if data.get("manifest") == manifest.digest:
            return indices
        # Another manifest (another chunk size): keep only chunks that still verify.
        return {i for i in indices if _chunk_matches(self.part, manifest, i)}

    def _open(self, manifest: Manifest, resumed: int) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.target.parent).free
        existing = self.part.stat().st_size if self.part.exists() else 0
        need = manifest.size - min(existing, resumed)
        if free < need:
            raise FetchError(f"not enough disk space for {self.target.name}: it needs "
                             f"{need / 2**30:.2f} GiB more, {free / 2**30:.2f} GiB free in "
                             f"{self.target.parent}")
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, manifest.size)

    async def _maybe_flush(self) -> None:
        if self.flushing or self.clock() - self.last_flush < self.flush_every_s:
            return
        self.flushing = True
        try:
            await self._in_thread(self._flush)
        finally:
            self.flushing = False

    def _flush(self) -> None:
        """Record the verified chunks, after their bytes are on disk (so the record never
        names a chunk a crash could lose)."""
        plan, manifest = self.plan, self.manifest
        if plan is None or manifest is None or self.fd < 0:
            return
        done = sorted(plan.done)
        os.fdatasync(self.fd)
        tmp = self.record.with_name(self.record.name + ".tmp")
        tmp.write_text(json.dumps({"version": RECORD_VERSION, "sha256": manifest.sha256,
                                   "size": manifest.size, "manifest": manifest.digest,
                                   "done": done}))
        os.replace(tmp, self.record)
        self.last_flush = self.clock()

    def _finish(self, manifest: Manifest) -> None:
        os.fsync(self.fd)
        self._hash_chunks(len(manifest.chunks))
        whole = self.whole.hexdigest()
        if whole != manifest.sha256:
            self.part.unlink(missing_ok=True)
            self.record.unlink(missing_ok=True)
            raise FetchError(f"the assembled file's sha256 is {whole[:12]}…, not "
                             f"{manifest.sha256[:12]}…: every chunk matched a manifest that "
                             "does not describe the published file; the partial file was "
                             "removed")
        os.replace(self.part, self.target)
        self.record.unlink(missing_ok=True)

    # --- reporting ----------------------------------------------------------------------

    def _report(self) -> None:
        if self.progress is not None and self.manifest is not None:
            self.progress(self.done_bytes, self.manifest.size)

    def _log_drop(self, fp: str, why: str) -> None:
        log.warning("peer fetch %s…: dropped source %s: %s", self.sha256[:12],
                    self.labels[fp], why)


class _SourceFailed(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _refusal(status: int, raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error", {})
        message = str(error.get("message") or "")[:300]
    except (ValueError, AttributeError):  # not the JSON error a peer sends: say only the status
        message = ""
    return f"HTTP {status}" + (f": {message}" if message else "")


def _labels(sources: list[Peer]) -> dict[str, str]:
    names = [p.label for p in sources]
    return {p.fingerprint: p.label if names.count(p.label) == 1
            else f"{p.label} ({p.fingerprint[:8]})" for p in sources}


def _verify_and_write(fd: int, pieces: Sequence[bytes], offset: int, expected: str) -> bool:
    """Hash the chunk's `pieces`; only when it is the expected chunk, write it at `offset`.
    Blocking.

    Joined first: hashing and writing a piece at a time hands the GIL to and from the event
    loop at every piece, and each handover can wait for the loop's switch interval; with two
    sources that halved the rate. One copy, then one hash and one write without the GIL."""
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    if hashlib.sha256(data).hexdigest() != expected:
        return False
    view = memoryview(data)
    try:
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
    except OSError as exc:
        raise FetchError(f"cannot write the downloaded file: {exc.strerror or exc}") from exc
    return True


def _chunk_matches(path: Path, manifest: Manifest, index: int) -> bool:
    offset, length = manifest.span(index)
    with path.open("rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(length)).hexdigest() == manifest.chunks[index]


def describe(result: FetchResult) -> dict[str, Any]:
    """The result as JSON (for logs and /api/status)."""
    return {"path": str(result.path), "sha256": result.sha256, "size": result.size,
            "bytes_from": result.bytes_from, "dropped": result.dropped,
            "resumed_bytes": result.resumed_bytes}
