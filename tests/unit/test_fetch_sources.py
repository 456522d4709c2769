"""SOURCE parsing (`covey pull SOURCE`) and the requests it turns into. Pure, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.engine import embedded
from covey.errors import ConfigError
from covey.fetch.sources import (
    Embedded,
    HttpFile,
    HubFile,
    LocalFile,
    PeerModel,
    Source,
    file_name,
    parse_source,
    request_for,
)

SHA = "ab" * 32


@pytest.mark.parametrize(("text", "expected"), [
    ("/models/x.gguf", LocalFile(Path("/models/x.gguf"))),
    ("./x.gguf", LocalFile(Path("x.gguf"))),
    ("x.GGUF", LocalFile(Path("x.GGUF"))),
    ("models/weights.bin", LocalFile(Path("models/weights.bin"))),
    ("~/m/x.gguf", LocalFile(Path("~/m/x.gguf").expanduser())),
    ("https://example.org/a/b/x.gguf", HttpFile("https://example.org/a/b/x.gguf")),
    (f"https://example.org/x.gguf#sha256={SHA}", HttpFile("https://example.org/x.gguf", SHA)),
    (f"https://example.org/x.gguf#sha256={SHA.upper()}",
     HttpFile("https://example.org/x.gguf", SHA)),
    ("http://127.0.0.1:8000/x.gguf", HttpFile("http://127.0.0.1:8000/x.gguf")),
    ("hf:owner/repo/x.gguf", HubFile("owner", "repo", "x.gguf")),
    ("hf:owner/repo/x.gguf@v1.0", HubFile("owner", "repo", "x.gguf", "v1.0")),
    ("hf:owner/repo/sub/dir/x.gguf@refs/pr/1",
     HubFile("owner", "repo", "sub/dir/x.gguf", "refs/pr/1")),
    (f"hf:o/r/x.gguf@abc#sha256={SHA}", HubFile("o", "r", "x.gguf", "abc", SHA)),
    ("gemma-3-270m", Embedded(embedded.GEMMA)),
    ("smollm2-135m-instruct-q4_1", Embedded(embedded.SMOLLM2)),
    ("qwen2.5-7b-instruct-q4_k_m", PeerModel("qwen2.5-7b-instruct-q4_k_m")),
    ("Qwen2.5-7B-Q4_K_M", PeerModel("qwen2.5-7b-q4_k_m")),
])
def test_parse_source(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(("text", "names"), [
    ("", "empty"),
    ("x" * 3000, "too long"),
    ("a\nb.gguf", "control"),
    ("https://example.org/x.gguf#sha256=abc", "64 hexadecimal"),
    (f"https://example.org/x.gguf#sha256={'g' * 64}", "64 hexadecimal"),
    ("https://example.org/x.gguf#md5=00", "#sha256=HEX"),
    ("https:///x.gguf", "no host"),
    ("ftp://example.org/x.gguf", "only https://"),
    ("hf:owner/x.gguf", "hf:OWNER/REPO/FILE"),
    ("hf:owner/repo/x.gguf@", "revision"),
    ("hf:owner/repo/../x.gguf", "'..'"),
    ("hf:-bad/repo/x.gguf", "malformed"),
    ("not an id", "not a path"),
])
def test_bad_sources_name_the_problem(text: str, names: str) -> None:
    with pytest.raises(ConfigError, match="model source") as caught:
        parse_source(text)
    assert names in caught.value.message


@pytest.mark.parametrize(("env", "url", "auth"), [
    ({}, "https://huggingface.co/o/r/resolve/main/x.gguf", None),
    ({"HF_ENDPOINT": "http://127.0.0.1:9/"}, "http://127.0.0.1:9/o/r/resolve/main/x.gguf", None),
    ({"HF_TOKEN": "hf_secret"}, "https://huggingface.co/o/r/resolve/main/x.gguf",
     "Bearer hf_secret"),
])
def test_hub_request_honours_env(env: dict[str, str], url: str, auth: str | None) -> None:
    req = request_for(HubFile("o", "r", "x.gguf"), env)
    assert req.url == url
    assert req.headers.get("Authorization") == auth
    assert req.file_name == "x.gguf"
    assert req.sha256_from_hub and req.sha256 is None


def test_hub_request_quotes_revision_and_keeps_the_base_name() -> None:
    req = request_for(parse_source("hf:o/r/sub/my model.gguf@refs/pr/1"), {})  # type: ignore[arg-type]
    assert req.url == "https://huggingface.co/o/r/resolve/refs%2Fpr%2F1/sub/my%20model.gguf"
    assert req.file_name == "my-model.gguf"


def test_hub_sha256_in_the_source_wins_over_the_hub() -> None:
    req = request_for(HubFile("o", "r", "x.gguf", sha256=SHA), {})
    assert req.sha256 == SHA and not req.sha256_from_hub


def test_bad_hub_endpoint_is_refused() -> None:
    with pytest.raises(ConfigError, match="HF_ENDPOINT"):
        request_for(HubFile("o", "r", "x.gguf"), {"HF_ENDPOINT": "file:///etc"})


def test_http_request_file_name_and_override() -> None:
    src = HttpFile("https://example.org/dl/Model%20One.Q4_K_M.gguf?download=true", SHA)
    req = request_for(src, {})
    assert req.file_name == "Model-One.Q4_K_M.gguf"
    assert req.sha256 == SHA and not req.sha256_from_hub and req.headers == {}
    assert request_for(src, {}, name="mine").file_name == "mine.gguf"


@pytest.mark.parametrize(("raw", "name"), [
    ("x.gguf", "x.gguf"),
    ("x", "x.gguf"),
    ("../../etc/passwd", "passwd.gguf"),
    (".hidden.gguf", "hidden.gguf"),
    ("a b/c d", "c-d.gguf"),
    ("..\\evil.gguf", "evil.gguf"),
])
def test_file_name_stays_in_the_folder(raw: str, name: str) -> None:
    assert file_name(raw) == name


def test_file_name_refuses_nothing_left() -> None:
    with pytest.raises(ConfigError, match="--name"):
        file_name("../..")
