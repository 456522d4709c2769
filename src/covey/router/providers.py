"""External OpenAI-compatible providers the SLA gate may fall back to: their configuration.

An operator lists them as `[[provider]]` tables in `<data_dir>/config.toml`:

    [[provider]]
    name = "openrouter"                      # shown as `x-covey-served-by: provider:NAME`
    base_url = "https://openrouter.ai/api/v1"
    key_env = "OPENROUTER_API_KEY"           # the key is read from this variable at start
    models = { "gemma-3-270m" = "google/gemma-3-270m" }   # mesh model id = provider's id
    timeout_s = 30                           # seconds it may take to start answering
    hourly_cap = 200                         # optional: requests per hour to this provider
    tiers = ["daily-driver"]                 # optional: tiers it may serve (default shown)

`parse_providers()` validates them (errors name the table and the key) and reads each key
from the environment once. The key lives only in `ProviderConfig.key` (kept out of repr) and
the Authorization header sent to that provider: never in logs, status or response headers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from covey.errors import ConfigError
from covey.router.tiers import DAILY, TIERS

MAX_PROVIDERS = 16
MAX_MODELS = 256
MAX_ID = 256
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
KEYS = frozenset({"name", "base_url", "key_env", "models", "timeout_s", "hourly_cap", "tiers"})


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    base_url: str  # ends in /v1 (or the provider's equivalent): `/chat/completions` is added
    key_env: str
    models: Mapping[str, str]  # mesh model id → the provider's model id
    timeout_s: float = 30.0  # seconds it may take to start answering (its response headers)
    hourly_cap: int | None = None  # requests per hour to this provider; None: no cap
    tiers: tuple[str, ...] = (DAILY,)  # capacity and experimental stay on the mesh by default
    key: str | None = field(default=None, repr=False, compare=False)  # None: variable unset

    @property
    def enabled(self) -> bool:
        return bool(self.key)

    def public(self) -> dict[str, Any]:
        """What status may show: everything but the key (only whether it is set)."""
        return {"name": self.name, "base_url": self.base_url, "key_env": self.key_env,
                "key_set": self.enabled, "models": dict(self.models),
                "timeout_s": self.timeout_s, "hourly_cap": self.hourly_cap,
                "tiers": list(self.tiers)}


def parse_providers(raw: Any, env: Mapping[str, str]) -> tuple[ProviderConfig, ...]:
    """The `provider` array of config.toml, validated; keys read from `env`."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("config file: `provider` must be [[provider]] tables")
    if len(raw) > MAX_PROVIDERS:
        raise ConfigError(f"config file: at most {MAX_PROVIDERS} [[provider]] tables")
    out: list[ProviderConfig] = []
    for i, table in enumerate(raw):
        provider = _one(table, i, env)
        if any(p.name == provider.name for p in out):
            raise ConfigError(f"provider[{i}].name={provider.name!r}: used twice")
        out.append(provider)
    return tuple(out)


def _one(table: dict[str, Any], i: int, env: Mapping[str, str]) -> ProviderConfig:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"provider[{i}].{key}={table.get(key)!r}: {why}")

    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"provider[{i}]: unknown key {unknown[0]!r}; known: "
                          + ", ".join(sorted(KEYS)))
    for key in ("name", "base_url", "key_env", "models"):
        if key not in table:
            raise ConfigError(f"provider[{i}]: missing {key!r}")
    name, base_url, key_env = table["name"], table["base_url"], table["key_env"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad("name", "letters, digits, '.', '_' or '-', at most 64")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")) \
            or len(base_url) > 2048:
        raise bad("base_url", "must be an http:// or https:// URL")
    if not isinstance(key_env, str) or not _ENV.fullmatch(key_env):
        raise bad("key_env", "must be an environment variable's name")
    models = table["models"]
    if not isinstance(models, dict) or not models or len(models) > MAX_MODELS:
        raise bad("models", f"a table of 1..{MAX_MODELS} mesh_id = \"provider_id\"")
    for mesh_id, provider_id in models.items():
        if not 0 < len(mesh_id) <= MAX_ID or not isinstance(provider_id, str) \
                or not 0 < len(provider_id) <= MAX_ID:
            raise ConfigError(f"provider[{i}].models.{mesh_id!r}: ids must be 1..{MAX_ID} "
                              "characters of text")
    timeout = table.get("timeout_s", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not math.isfinite(timeout) or not 0 < timeout <= 3600:
        raise bad("timeout_s", "must be a number of seconds, 0 < timeout_s <= 3600")
    cap = table.get("hourly_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
        raise bad("hourly_cap", "must be a whole number of requests, 0 or more")
    tiers = table.get("tiers", [DAILY])
    if not isinstance(tiers, list) or not all(t in TIERS for t in tiers):
        raise bad("tiers", f"must be a list of {', '.join(TIERS)}")
    return ProviderConfig(name=name, base_url=base_url.rstrip("/"), key_env=key_env,
                          models=dict(models), timeout_s=float(timeout), hourly_cap=cap,
                          tiers=tuple(tiers), key=env.get(key_env) or None)
