"""Supervise one llama.cpp child process per local model: start, watch, restart with backoff.

The lifecycle is a tagged union (`EngineStarting | EngineReady | EngineFailed | EngineStopped`).
A child that reports a load failure (llama.cpp's own error, exit status EXIT_LOAD_FAILED) is
not restarted: the file will not fix itself. Any other death, while loading or after ready
(a signal such as the OOM killer's SIGKILL, a crash, an unexpected exit), is restarted with
doubling backoff, reset after a quiet minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from covey.engine.llamacpp import EXIT_LOAD_FAILED, READY_PREFIX
from covey.types import (
    EngineFailed,
    EngineReady,
    EngineStarting,
    EngineState,
    EngineStopped,
    ModelCard,
)

log = logging.getLogger(__name__)

STABLE_AFTER_S = 60.0  # ready this long → the next crash starts backoff from the beginning
MAX_LOG_BYTES = 10 * 1024 * 1024  # an engine log past this is moved to .1 at the next start


@dataclass(frozen=True)
class EngineOptions:
    ctx_size: int
    parallel: int
    threads: int | None
    gpu_layers: int | None
    embeddings: bool
    start_timeout_s: float
    backoff_s: float
    backoff_max_s: float


def load_failure_is_final(code: int) -> bool:
    """Pure: does a child that exited with `code` before it was ready stay failed? Only when
    it reported llama.cpp's load error itself; a signal (negative code) or any other exit
    says nothing about the file, so it is restarted like a crash after ready."""
    return code == EXIT_LOAD_FAILED


@dataclass(frozen=True)
class _DiedLoading:
    """The child died before it was ready without reporting a load error."""

    reason: str


def engine_argv(card: ModelCard, o: EngineOptions) -> list[str]:
    """Pure: the command line of the child that serves `card`."""
    argv = [sys.executable, "-m", "covey.engine.llamacpp", "--model", str(card.path),
            "--alias", card.id, "--ctx", str(o.ctx_size), "--parallel", str(o.parallel)]
    if o.threads:
        argv += ["--threads", str(o.threads)]
    if o.gpu_layers is not None:
        argv += ["--gpu-layers", str(o.gpu_layers)]
    if o.embeddings or card.embeddings_only:
        # An embedding model serves nothing else: it needs no flag to be useful.
        argv.append("--embeddings")
        if not card.declares_pooling:
            # Generative models declare no pooling; llama.cpp then returns per-token
            # vectors, which the OpenAI embeddings API cannot express.
            argv.append("--mean-pooling")
    return argv


def next_backoff(previous: float | None, initial: float, maximum: float,
                 was_stable: bool) -> float:
    """Pure: the delay before the next restart; doubles per crash unless the engine was stable."""
    if previous is None or was_stable:
        return initial
    return min(maximum, previous * 2)


class LocalEngine:
    """One llama.cpp child serving one GGUF file. `run()` owns the child until cancelled."""

    kind = "llama.cpp"

    def __init__(self, card: ModelCard, options: EngineOptions, log_dir: Path) -> None:
        assert card.path is not None
        self.card = card
        self.options = options
        self.log_path = log_dir / f"engine-{card.id}.log"
        self._state: EngineState = EngineStopped()
        self._proc: asyncio.subprocess.Process | None = None
        self._log_offset = 0
        self.restarts = 0

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def _set(self, state: EngineState) -> None:
        self._state = state

    async def run(self) -> None:
        delay: float | None = None
        attempt = 0
        try:
            while True:
                attempt += 1
                self._set(EngineStarting(attempt=attempt))
                started = await self._start()
                if started is None:
                    return  # load failure: state already says why; nothing to retry
                if isinstance(started, _DiedLoading):
                    reason, stable = started.reason, False
                else:
                    code = await self._proc.wait()  # type: ignore[union-attr]
                    stable = time.monotonic() - started >= STABLE_AFTER_S
                    reason = f"engine process exited ({_describe_exit(code)})"
                delay = next_backoff(delay, self.options.backoff_s, self.options.backoff_max_s,
                                     stable)
                log.warning("model %s: %s; restarting in %.1fs", self.card.id, reason, delay)
                self.restarts += 1
                self._set(EngineFailed(reason=f"{reason}; restarting", retry_in=delay))
                await asyncio.sleep(delay)
        finally:
            await self._kill()
            # A load failure is final and must stay visible; anything else ends as stopped.
            if not (isinstance(self._state, EngineFailed) and self._state.retry_in is None):
                self._set(EngineStopped())

    async def _start(self) -> float | _DiedLoading | None:
        """Start the child and wait until it serves. Returns the ready time, _DiedLoading
        when it died before that without a load error (to be restarted), or None when it
        failed for good (the state says why)."""
        o = self.options
        argv = engine_argv(self.card, o)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _rotate(self.log_path, MAX_LOG_BYTES)
        with self.log_path.open("ab") as errlog:
            self._log_offset = errlog.tell()
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=errlog, start_new_session=True,  # Ctrl-C in a terminal reaches us only
            )
        log.info("model %s: engine starting (pid %d)", self.card.id, self._proc.pid)
        try:
            url = await asyncio.wait_for(self._read_ready_line(), o.start_timeout_s)
        except TimeoutError:
            await self._kill()
            self._set(EngineFailed(f"engine did not load within {o.start_timeout_s:.0f}s; "
                                   f"see {self.log_path}"))
            return None
        if url is None:
            code = await self._proc.wait()
            if not load_failure_is_final(code):
                hint = "; out of memory?" if code == -signal.SIGKILL else ""
                return _DiedLoading(f"engine process died while loading "
                                    f"({_describe_exit(code)}{hint})")
            reason = self._load_failure_reason(code)
            log.error("model %s: %s", self.card.id, reason)
            self._set(EngineFailed(reason))
            return None
        if not await _wait_healthy(url, o.start_timeout_s):
            await self._kill()
            self._set(EngineFailed(f"engine started but its /health never answered ok; "
                                   f"see {self.log_path}"))
            return None
        self._set(EngineReady(base_url=url + "/v1", pid=self._proc.pid))
        log.info("model %s: engine ready at %s (pid %d)", self.card.id, url, self._proc.pid)
        return time.monotonic()

    async def _read_ready_line(self) -> str | None:
        assert self._proc and self._proc.stdout
        while line := await self._proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if text.startswith(READY_PREFIX):
                # Nothing else is printed on stdout; no drain task is needed after this.
                return text[len(READY_PREFIX):]
        return None

    def _load_failure_reason(self, code: int) -> str:
        tail = _first_error_line(self.log_path, self._log_offset)
        if tail:
            return f"llama.cpp could not load {self.card.path.name}: {tail}"  # type: ignore[union-attr]
        return f"engine could not load the model ({_describe_exit(code)}); see {self.log_path}"

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _wait_healthy(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/health") as r:
                    if r.status == 200:
                        return True
            # Connection refused or reset while llama.cpp is still binding: try again shortly.
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _rotate(path: Path, max_bytes: int) -> None:
    try:
        if path.stat().st_size > max_bytes:
            path.replace(path.with_suffix(path.suffix + ".1"))
    except FileNotFoundError:
        pass  # first start: nothing to rotate


def _first_error_line(path: Path, offset: int) -> str | None:
    """llama.cpp's first error-level line written since `offset`: usually the root cause."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            lines = f.read(1 << 20).decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if " E " in line or "error" in line.lower():
            message = line.split(" E ", 1)[-1].strip()
            return message.split(": ", 1)[-1] if ": " in message else message
    return lines[-1].strip() if lines else None
