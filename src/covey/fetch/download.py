"""Resumable, verified HTTP download of one file into place.

The bytes go to `<target>.part` in 1 MiB blocks and reach `target` only by an atomic rename
after they are complete (and match the sha256, when one is known): a partial file never sits
under the final name. A `.part` left by an earlier run resumes with `Range: bytes=N-`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from covey.errors import FetchError
from covey.fetch.manifest import is_sha256

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None"], None]  # (bytes done, total bytes or None)

BLOCK = 1 << 20  # bytes per write (and per progress update)
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)  # seconds
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # a dropped connection resumes after each
MAX_REDIRECTS = 10
MAX_SIZE = 1 << 44  # 16 TiB: a stated size beyond this is a lie, not a model
LOW_DISK = 64 << 20  # size unknown: stop when less than this is free
_REDIRECTS = (301, 302, 303, 307, 308)
_TRANSIENT = (408, 425, 429, 500, 502, 503, 504)
_CONTENT_RANGE = re.compile(r"bytes (?:(\d{1,16})-(\d{1,16})|\*)/(\d{1,16}|\*)")


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int


class _Transient(Exception):
    """This attempt failed in a way that another attempt may not (a 5xx, a short body)."""


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


async def download(url: str, target: Path, *, sha256: str | None = None,
                   headers: Mapping[str, str] | None = None,
                   progress: Progress | None = None,
                   session: aiohttp.ClientSession | None = None,
                   sha256_from_hub: bool = False,
                   retry_delays_s: Sequence[float] = RETRY_DELAYS_S) -> Path:
    """Fetch `url` into `target` and return `target`. See `fetch_file`."""
    return (await fetch_file(url, target, sha256=sha256, headers=headers, progress=progress,
                             session=session, sha256_from_hub=sha256_from_hub,
                             retry_delays_s=retry_delays_s)).path


async def fetch_file(url: str, target: Path, *, sha256: str | None = None,
                     headers: Mapping[str, str] | None = None,
                     progress: Progress | None = None,
                     session: aiohttp.ClientSession | None = None,
                     sha256_from_hub: bool = False,
                     retry_delays_s: Sequence[float] = RETRY_DELAYS_S) -> Fetched:
    """Fetch `url` into `target` (replacing it) and say what landed, with its sha256.

    `headers` go to `url`'s host only: a redirect to another host drops `Authorization`.
    `sha256_from_hub`: when `sha256` is None, take it from the hub's `X-Linked-Etag` (or
    `ETag`) if that is a 64-hex sha256. A dropped connection resumes after each of
    `retry_delays_s` in turn (the count restarts once bytes flow again); other failures raise
    FetchError at once, keeping the `.part` for a later resume, except after a sha256
    mismatch, which deletes it. File writes and hashing run off the event loop."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    own = session is None
    client = session or aiohttp.ClientSession(timeout=TIMEOUT)
    try:
        with part.open("ab") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:  # a second `covey pull` of the same file
                raise FetchError(f"another download of {target.name} is in progress "
                                 f"({part} is locked)") from exc
            job = _Job(client, URL(url), dict(headers or {}), target, f, sha256, sha256_from_hub,
                       progress)
            try:
                await job.run(retry_delays_s)
            except BaseException:
                if job.size == 0:  # nothing to resume from: leave no empty .part behind
                    part.unlink(missing_ok=True)
                raise
            await asyncio.to_thread(_sync, f)
        digest = job.verify()
        os.replace(part, target)
        _fsync_dir(target.parent)
        return Fetched(target, digest, job.size)
    finally:
        if own:
            await client.close()


class _Job:
    """One download's state across attempts: the open `.part`, its running hash, and what
    the server said about the file."""

    def __init__(self, session: aiohttp.ClientSession, url: URL, headers: dict[str, str],
                 target: Path, f: IO[bytes], sha256: str | None, sha256_from_hub: bool,
                 progress: Progress | None) -> None:
        self.session, self.url, self.headers, self.target, self.f = (
            session, url, headers, target, f)
        self.expected, self.from_hub, self.progress = sha256, sha256_from_hub, progress
        self.hasher = hashlib.sha256()
        self.size = 0  # bytes in the .part, all of them fed to `hasher`
        self.total: int | None = None
        self.answered = False  # a response came back at least once in this call

    async def run(self, retry_delays_s: Sequence[float]) -> None:
        self.size = await asyncio.to_thread(self._hash_existing)
        failures = 0
        while True:
            before = self.size
            try:
                if await self._attempt():
                    return
                continue  # the server restarted us from zero: not a failure
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    TimeoutError, _Transient) as exc:
                # A host that never answered (wrong name, nothing listening) fails at once;
                # one that answered and then dropped resumes.
                if isinstance(exc, aiohttp.ClientConnectorError) and not self.answered:
                    raise FetchError(f"cannot reach {self.url.host}: {exc}") from exc
                failures = 0 if self.size > before else failures
                if failures >= len(retry_delays_s):
                    raise FetchError(
                        f"download of {self.target.name} failed {failures + 1} times in a "
                        f"row ({_why(exc)}); {self.size} bytes are kept in "
                        f"{part_path(self.target).name}: run the same command to resume"
                    ) from exc
                delay = retry_delays_s[failures]
                failures += 1
                log.warning("download of %s interrupted at %d of %s bytes (%s); resuming in "
                            "%.0f s (retry %d of %d)", self.target.name, self.size,
                            self.total if self.total is not None else "?", _why(exc), delay,
                            failures, len(retry_delays_s))
                await asyncio.sleep(delay)

    def verify(self) -> str:
        digest = self.hasher.hexdigest()
        if self.expected is not None and digest != self.expected:
            part_path(self.target).unlink(missing_ok=True)
            raise FetchError(f"sha256 mismatch for {self.target.name}: expected "
                             f"{self.expected}, got {digest}; the partial file was deleted")
        return digest

    async def _attempt(self) -> bool:
        """One request. True when the `.part` holds the whole file."""
        offset = self.size
        resp = await self._open(offset)
        async with resp:
            self.answered = True
            status = resp.status
            if status == 416 and offset:
                return await self._range_not_satisfiable(resp.headers)
            if status in _TRANSIENT:
                raise _Transient(f"HTTP {status}")
            if status not in (200, 206):
                raise FetchError(_refusal(self.url, status))
            if status == 206:
                start, total = _content_range(resp.headers.get("Content-Range", ""))
                if start != offset:
                    if offset == 0:
                        raise FetchError(f"{self.url.host} answered a whole-file request "
                                         f"with a part starting at byte {start}")
                    log.warning("download of %s: the server resumed at byte %s, not %d; "
                                "starting over", self.target.name, start, offset)
                    await self._restart()
                    return False
            else:
                if offset:
                    log.warning("download of %s: the server does not resume (HTTP 200 to a "
                                "Range request); starting over", self.target.name)
                    await self._restart()
                total = resp.content_length
            if total is not None and total > MAX_SIZE:
                raise FetchError(f"{self.url.host} says the file is {total} bytes; refusing")
            self.total = total
            self._check_disk(total)
            if self.progress is not None:
                self.progress(self.size, total)
            await self._stream(resp)
        if self.total is not None and self.size < self.total:
            raise _Transient(f"the body ended at byte {self.size}")
        return True

    async def _open(self, offset: int) -> aiohttp.ClientResponse:
        """GET with `Range` from `offset`, following redirects here (not in aiohttp) so the
        rule about `Authorization` is visible: it goes only to the host it was meant for."""
        url, headers = self.url, {**self.headers, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self.session.get(url, headers=headers, allow_redirects=False,
                                          timeout=TIMEOUT, auto_decompress=False,
                                          read_bufsize=BLOCK)
            self._learn_sha256(resp.headers)
            if resp.status not in _REDIRECTS:
                return resp
            location = resp.headers.get("Location", "")
            resp.release()
            try:
                nxt = url.join(URL(location, encoded=True))
            except ValueError as exc:
                raise FetchError(f"{url.host} redirected to a malformed URL") from exc
            if not location or nxt.scheme not in ("http", "https") or not nxt.host:
                raise FetchError(f"{url.host} redirected to an unusable URL")
            if url.scheme == "https" and nxt.scheme == "http":
                raise FetchError(f"{url.host} redirected from https to plain http; refusing")
            if nxt.origin() != url.origin():
                headers.pop("Authorization", None)
            url = nxt
        raise FetchError(f"{self.url.host}: more than {MAX_REDIRECTS} redirects")

    def _learn_sha256(self, headers: CIMultiDictProxy[str]) -> None:
        if not self.from_hub or self.expected is not None:
            return
        for name in ("X-Linked-Etag", "ETag"):
            value = headers.get(name, "")[:200].removeprefix("W/").strip('"').lower()
            if is_sha256(value):
                self.expected = value
                return

    async def _range_not_satisfiable(self, headers: CIMultiDictProxy[str]) -> bool:
        """416 to `Range: bytes=N-`: the `.part` may already be whole. Keep it when the
        stated size or the known sha256 says so; otherwise start over."""
        _, total = _content_range(headers.get("Content-Range", ""))
        if total is not None and total == self.size:
            self.total = total
            return True
        if total is None and self.expected is not None and \
                self.hasher.hexdigest() == self.expected:
            return True
        log.warning("download of %s: the server cannot resume at byte %d; starting over",
                    self.target.name, self.size)
        await self._restart()
        return False

    async def _restart(self) -> None:
        await asyncio.to_thread(self.f.truncate, 0)
        self.hasher, self.size = hashlib.sha256(), 0

    def _check_disk(self, total: int | None) -> None:
        if total is None:
            return
        needed = total - self.size
        free = shutil.disk_usage(self.target.parent).free
        if needed > free:
            raise FetchError(f"not enough disk space for {self.target.name}: it needs "
                             f"{needed} more bytes ({_gb(needed)}), {free} bytes "
                             f"({_gb(free)}) are free in {self.target.parent}")

    async def _stream(self, resp: aiohttp.ClientResponse) -> None:
        buffer = bytearray()
        blocks = 0
        try:
            async for chunk in resp.content.iter_chunked(BLOCK):
                buffer += chunk
                if self.total is not None and self.size + len(buffer) > self.total:
                    buffer = bytearray()  # past the end: none of it belongs to the file
                    raise FetchError(f"{self.url.host} sent more than the {self.total} bytes "
                                     "it announced")
                if len(buffer) >= BLOCK:
                    await self._write(buffer)
                    buffer = bytearray()
                    blocks += 1
                    if self.total is None and blocks % 64 == 0:
                        self._check_unknown_size_disk()
        finally:
            # What arrived before a drop is good: keep it for the resume.
            if buffer:
                await self._write(buffer)

    async def _write(self, block: bytearray) -> None:
        try:
            await asyncio.to_thread(_append, self.f, self.hasher, block)
        except OSError as exc:  # disk full or gone: keep what is there for a resume
            raise FetchError(f"cannot write {part_path(self.target)}: {exc.strerror}") from exc
        self.size += len(block)
        if self.progress is not None:
            self.progress(self.size, self.total)

    def _check_unknown_size_disk(self) -> None:
        free = shutil.disk_usage(self.target.parent).free
        if free < LOW_DISK:
            raise FetchError(f"the disk is almost full ({free} bytes free in "
                             f"{self.target.parent}) and {self.url.host} did not say how big "
                             f"{self.target.name} is; stopped at {self.size} bytes")

    def _hash_existing(self) -> int:
        """Hash what an earlier run left in the `.part` (the file is open for appending)."""
        size = 0
        with open(self.f.name, "rb") as existing:
            while block := existing.read(4 * BLOCK):
                self.hasher.update(block)
                size += len(block)
        return size


def _append(f: IO[bytes], hasher: hashlib._Hash, block: bytearray) -> None:
    f.write(block)
    hasher.update(block)


def _sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes A-B/T` or `bytes */T`; None where absent."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _refusal(url: URL, status: int) -> str:
    if status in (401, 403):
        return (f"{url.host} refused the download (HTTP {status}): the file may be private or "
                "gated; for the hub, set HF_TOKEN to a token that may read it")
    if status == 404:
        return f"{url.host} has no such file (HTTP 404): check the URL, file name and revision"
    return f"{url.host} answered HTTP {status}"


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:160]


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk; not every
    # filesystem lets a folder be opened for that.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
