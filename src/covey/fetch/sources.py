"""What a model SOURCE names (`covey pull SOURCE`, `covey serve --model SOURCE`), and the
HTTP request that fetches it. Pure: the environment comes in as a mapping.

    /path/to/x.gguf, ./x.gguf, x.gguf, ~/m/x.gguf   LocalFile
    gemma-3-270m (an embedded model's name or id)    Embedded
    https://host/path/x.gguf[#sha256=HEX]            HttpFile (plain http:// too, with a warning)
    hf:OWNER/REPO/FILE.gguf[@REVISION][#sha256=HEX]  HubFile, resolved like huggingface_hub
    gemma-3-270m-q4_k_m (anything else id-shaped)    PeerModel: a model id a mesh peer serves
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from covey.engine import embedded
from covey.errors import ConfigError
from covey.fetch.manifest import is_sha256

HUB_ENDPOINT = "https://huggingface.co"  # huggingface_hub's default; HF_ENDPOINT overrides
MAX_SOURCE_CHARS = 2048

_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # owner and repo names
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")  # what catalog.model_id_for produces
_SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LocalFile:
    path: Path


@dataclass(frozen=True)
class Embedded:
    """One of the models Covey carries (engine/embedded.py), by its name or id."""

    model: embedded.EmbeddedModel


@dataclass(frozen=True)
class HttpFile:
    url: str
    sha256: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def plain_http(self) -> bool:
        """True for `http://`: nothing but the sha256 (when given) protects the bytes."""
        return self.url.startswith("http://")


@dataclass(frozen=True)
class HubFile:
    owner: str
    repo: str
    file: str  # may hold folders: `sub/dir/x.gguf`
    revision: str = "main"
    sha256: str | None = None

    def url(self, endpoint: str) -> str:
        """huggingface_hub's `hf_hub_url`: the revision is quoted whole (`refs/pr/1`)."""
        return (f"{endpoint.rstrip('/')}/{self.owner}/{self.repo}/resolve/"
                f"{quote(self.revision, safe='')}/{quote(self.file)}")


@dataclass(frozen=True)
class PeerModel:
    model_id: str


Source = LocalFile | Embedded | HttpFile | HubFile | PeerModel


@dataclass(frozen=True)
class Request:
    """How to fetch an HttpFile or HubFile: the first URL, headers to send to its host, the
    sha256 when the source states it, the file name it lands under, and whether the hub's
    `X-Linked-Etag` may supply the sha256."""

    url: str
    headers: Mapping[str, str]
    sha256: str | None
    file_name: str
    sha256_from_hub: bool


def parse_source(text: str) -> Source:
    """Classify a SOURCE. Raises ConfigError naming the value and the accepted forms."""
    if not text or len(text) > MAX_SOURCE_CHARS or not text.isprintable():
        raise ConfigError(_bad(text[:80], "empty, too long, or holds control characters"))
    lower = text.lower()
    if lower.startswith(("https://", "http://")):
        url, sha256 = _split_sha256(text)
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(_bad(text, "the URL has no host"))
        return HttpFile(url, sha256)
    if lower.startswith("hf:"):
        return _parse_hub(text)
    if "://" in text:
        raise ConfigError(_bad(text, "only https:// and http:// URLs are fetched"))
    if "/" in text or "\\" in text or text.startswith("~") or lower.endswith(".gguf"):
        return LocalFile(Path(text).expanduser())
    model = embedded.find(text)
    if model is not None:
        return Embedded(model)
    if _MODEL_ID.fullmatch(lower):
        return PeerModel(lower)
    raise ConfigError(_bad(text, "not a path, a URL, an hf: file, or a model id"))


def request_for(source: HttpFile | HubFile, env: Mapping[str, str],
                name: str | None = None) -> Request:
    """The request that fetches `source`. `env` is the process environment (HF_ENDPOINT,
    HF_TOKEN); `name` (a model id or file name the user chose) overrides the file name."""
    if isinstance(source, HubFile):
        endpoint = env.get("HF_ENDPOINT") or HUB_ENDPOINT
        if not endpoint.startswith(("https://", "http://")):
            raise ConfigError(f"HF_ENDPOINT must be an http(s) URL, not {endpoint!r}")
        token = env.get("HF_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        default = PurePosixPath(source.file).name
        return Request(source.url(endpoint), headers, source.sha256,
                       file_name(name or default), sha256_from_hub=source.sha256 is None)
    default = unquote(PurePosixPath(urlsplit(source.url).path).name)
    return Request(source.url, dict(source.headers), source.sha256, file_name(name or default),
                   sha256_from_hub=False)


def file_name(raw: str) -> str:
    """A safe file name under `<data-dir>/models`: no folders, no leading dot, `.gguf`."""
    stem = _SAFE_FILE.sub("-", PurePosixPath(raw.replace("\\", "/")).name).strip("-.")
    if stem.lower().endswith(".gguf"):
        stem = stem[:-5].rstrip("-.")
    if not stem:
        raise ConfigError(f"cannot make a file name from {raw!r}: give one with --name")
    return stem[:200] + ".gguf"


def _parse_hub(text: str) -> HubFile:
    body, sha256 = _split_sha256(text[3:])
    revision = "main"
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not revision or any(c in revision for c in " ?#") or ".." in revision:
            raise ConfigError(_bad(text, "the revision after @ is empty or malformed"))
    parts = body.split("/")
    if len(parts) < 3:
        raise ConfigError(_bad(text, "expected hf:OWNER/REPO/FILE.gguf[@REVISION]"))
    owner, repo, *path = parts
    if not (_HUB_NAME.fullmatch(owner) and _HUB_NAME.fullmatch(repo)):
        raise ConfigError(_bad(text, "the owner or repository name is malformed"))
    if any(p in ("", ".", "..") for p in path):
        raise ConfigError(_bad(text, "the file path has an empty, '.' or '..' part"))
    return HubFile(owner, repo, "/".join(path), revision, sha256)


def _split_sha256(text: str) -> tuple[str, str | None]:
    if "#" not in text:
        return text, None
    rest, fragment = text.split("#", 1)
    if not fragment.startswith("sha256="):
        raise ConfigError(_bad(text, "the only fragment understood is #sha256=HEX"))
    digest = fragment[len("sha256="):].lower()
    if not is_sha256(digest):
        raise ConfigError(_bad(text, "#sha256= must be 64 hexadecimal digits"))
    return rest, digest


def _bad(text: str, why: str) -> str:
    return (f"model source {text!r}: {why} (a .gguf path, https://…/x.gguf[#sha256=HEX], "
            f"hf:OWNER/REPO/FILE.gguf[@REVISION], an embedded model's name, or a model id "
            f"a mesh peer serves)")
