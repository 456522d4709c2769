"""Put the file a SOURCE names into `<data-dir>/models` (what `covey pull` does, and what a
node does for `--model URL`): decide the target, skip what is already there, download, record
the sidecar."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from covey.errors import FetchError
from covey.fetch import inventory
from covey.fetch.download import RETRY_DELAYS_S, Progress, fetch_file
from covey.fetch.sources import HttpFile, HubFile, Request, request_for

log = logging.getLogger(__name__)


def target_for(request: Request, data_dir: Path) -> Path:
    return inventory.models_dir(data_dir) / request.file_name


def already_there(target: Path, request: Request, text: str) -> bool:
    """Whether `target` already holds what `text` names. Raises FetchError when another
    file holds that name. Blocking (may hash `target`)."""
    if not target.exists():
        return False
    facts = inventory.read_sidecar(target)
    if request.sha256 is not None:
        digest = facts["sha256"] if facts else inventory.describe(target, _now()).sha256
        if digest == request.sha256:
            return True
    elif facts is not None and facts["source"] == text:
        return True
    raise FetchError(f"{target} already exists and is not {text}: choose another file name "
                     f"with --name, or remove it with `covey rm {inventory.model_id(target)}`")


async def pull(source: HttpFile | HubFile, text: str, data_dir: Path, *,
               env: Mapping[str, str], name: str | None = None,
               progress: Progress | None = None, session: aiohttp.ClientSession | None = None,
               retry_delays_s: Sequence[float] = RETRY_DELAYS_S) -> inventory.OnDisk:
    """Fetch `source` (parsed from `text`) unless it is already on disk; return its facts.

    `env` holds HF_ENDPOINT and HF_TOKEN; `name` overrides the file name (`ID` → `ID.gguf`).
    Raises FetchError or ConfigError with a message for the user."""
    request = request_for(source, env, name)
    target = target_for(request, data_dir)
    if already_there(target, request, _recorded(text)):
        log.info("%s is already in %s", target.name, target.parent)
        return inventory.describe(target, _now())
    if isinstance(source, HttpFile) and source.plain_http:
        log.warning("%s is plain http: nothing protects the bytes in transit%s", target.name,
                    "" if request.sha256 else " and no #sha256= checks them")
    fetched = await fetch_file(request.url, target, sha256=request.sha256,
                               headers=request.headers, progress=progress, session=session,
                               sha256_from_hub=request.sha256_from_hub,
                               retry_delays_s=retry_delays_s)
    inventory.write_sidecar(target, source=_recorded(text), sha256=fetched.sha256, now=_now())
    log.info("fetched %s (%d bytes, sha256 %s)", target.name, fetched.size, fetched.sha256)
    return inventory.describe(target, _now())


def _recorded(text: str) -> str:
    """The source as the sidecar keeps it: a password in the URL is not kept."""
    if not text.lower().startswith(("https://", "http://")):
        return text
    parts = urlsplit(text)
    if parts.username is None and parts.password is None:
        return text
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _now() -> datetime:
    return datetime.now().astimezone()

