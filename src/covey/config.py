"""One Settings object: defaults < config file < environment < command-line flags.

Every field is declared once, with its help text and unit; the CLI flags (`--field-name`),
the environment variables (`COVEY_FIELD_NAME`) and the config file keys (`field_name` in
`<data_dir>/config.toml`) all come from that declaration. The environment is read here,
once, when `main` asks for it; nothing reads it at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from covey.engine import embedded
from covey.errors import ConfigError
from covey.memory.records import is_project_name
from covey.mesh.addresses import MAX_ADDRESSES, check_address
from covey.router.providers import ProviderConfig, parse_providers
from covey.router.tiers import (
    CAPACITY,
    DAILY,
    EXPERIMENTAL,
    MAX_TOKENS_PER_S,
    MAX_TTFT_S,
    PolicyError,
    Targets,
    TierPolicy,
    parse_rule,
)

MiB = 1024 * 1024


def _opt(default: Any, help: str, *, flag: str | None = None, env: str | None = None) -> Any:
    meta = {"help": help, "flag": flag, "env": env}
    if isinstance(default, list | tuple):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    # --- where and how the node listens ---
    data_dir: Path = _opt(
        Path("~/.covey"), "node state: keys, assembled models, caches, logs", env="COVEY_HOME"
    )
    host: str = _opt("127.0.0.1", "address the client API binds; non-loopback needs --api-key")
    port: int = _opt(7272, "client API port (0 picks a free one)")
    api_key: str | None = _opt(None, "bearer key clients must send; required off loopback")
    allowed_hosts: tuple[str, ...] = _opt(
        (), "extra Host/Origin names the API accepts (repeatable); loopback is always allowed",
        flag="allowed-host",
    )
    node_name: str | None = _opt(None, "human name shown to peers (default: the hostname)")

    # --- the mesh ---
    mesh_host: str = _opt("127.0.0.1", "address the mesh (peer) listener binds; use the "
                          "machine's LAN address or 0.0.0.0 to let other machines in")
    mesh_port: int = _opt(7070, "mesh listener port (0 picks a free one)")
    advertise: tuple[str, ...] = _opt(
        (), "host:port peers should use to reach this node (repeatable; env: a comma list). "
        "With a wildcard --mesh-host these come first, before the host's own addresses; "
        "with a specific --mesh-host they replace it (default: the mesh host's addresses)")
    join: str | None = _opt(None, "invite (from `covey invite` on a member) to join a mesh")
    gossip_interval_s: float = _opt(2.0, "seconds between gossip rounds")
    cert_validity_s: float = _opt(365 * 24 * 3600.0, "seconds a member certificate issued "
                                  "by this node (the mesh's creator) is valid; members renew "
                                  "theirs when a third is left")
    mdns: bool = _opt(True, "find members on the LAN by mDNS (only when the mesh listener "
                      "is not loopback-only)")
    peer_timeout_s: float = _opt(30.0, "seconds a peer may take to start answering a prompt "
                                 "(its first response bytes) before the next node is tried")
    health_interval_s: float = _opt(2.0, "seconds between data-plane checks of each peer")
    health_timeout_s: float = _opt(3.0, "seconds each data-plane check layer may take")

    # --- what the node serves ---
    models: tuple[str, ...] = _opt(
        (), "GGUF file to serve, or an embedded model by name or id: "
        f"{embedded.names_help()}. Repeatable; replaces the default "
        f"(default: {embedded.DEFAULT.name})", flag="model",
    )
    default_model: bool = _opt(True, f"serve the embedded {embedded.DEFAULT.name} (a small "
                               "chat model) when no --model is given")
    backends: tuple[str, ...] = _opt(
        (), "OpenAI-compatible server to attach instead of starting engines (repeatable), "
        "e.g. http://127.0.0.1:11434/v1", flag="backend",
    )

    # --- engine (llama.cpp) ---
    ctx_size: int = _opt(2048, "context length per slot, in tokens")
    parallel: int = _opt(4, "parallel slots per model (continuous batching)")
    headroom: float = _opt(0.5, "share of a local model's slots that peers with no credit leave "
                                "free while this node's own clients or members in credit are "
                                "about (fair share; 0 turns it off)")
    threads: int | None = _opt(None, "CPU threads per engine (default: llama.cpp decides)")
    gpu_layers: int | None = _opt(None, "layers to offload to the GPU on CUDA/Metal wheels")
    embeddings: bool = _opt(False, "start every engine in embedding mode, chat models too "
                                   "(embedding models such as all-minilm-l6-v2 need no flag)")
    max_queue: int = _opt(16, "requests that may wait per model beyond the busy slots")
    fast_memory_bytes: int | None = _opt(
        None, "memory available for models, in bytes (default: detected available RAM)"
    )
    engine_start_timeout_s: float = _opt(120.0, "seconds an engine may take to load")
    restart_backoff_s: float = _opt(0.5, "first delay before restarting a crashed engine, seconds")
    restart_backoff_max_s: float = _opt(30.0, "longest delay between restarts, seconds")

    # --- API ---
    max_body_bytes: int = _opt(4 * MiB, "largest request body accepted, in bytes")
    shutdown_grace_s: float = _opt(5.0, "seconds in-flight streams get to finish on shutdown")

    # --- tiers and service targets (the creator's gossip to members; a member only tightens) ---
    tier: tuple[str, ...] = _opt(
        (), "MODEL_OR_GLOB=TIER (repeatable): daily-driver, capacity or experimental; exact ids "
        "win over globs, globs in the order given; unmapped models are experimental")
    daily_driver_ttft_s: float = _opt(3.0, "daily-driver target: TTFT p50 at most, seconds")
    daily_driver_tokens_per_s: float = _opt(8.0, "daily-driver target: decode p50 at least, "
                                                 "tokens/s")
    capacity_ttft_s: float = _opt(15.0, "capacity target: TTFT p50 at most, seconds")
    capacity_tokens_per_s: float = _opt(0.8, "capacity target: decode p50 at least, tokens/s")

    # --- external fallback (the SLA gate's providers: [[provider]] tables in config.toml) ---
    fallback_per_client: int = _opt(20, "provider requests each client (its API key, or its "
                                    "address on a node without keys) may use per window")
    fallback_window_s: float = _opt(3600.0, "the fallback budgets' window, seconds")
    providers: tuple[ProviderConfig, ...] = field(default=(), metadata={
        "help": "external OpenAI-compatible providers ([[provider]] tables in config.toml; "
                "see router/providers.py)", "file_only": True})

    # --- measurements ---
    metrics_window_s: float = _opt(3600.0, "rolling window for TTFT and tokens/s, seconds")
    baseline: bool = _opt(True, "measure each engine's native speed once it has settled")
    baseline_max_tokens: int = _opt(128, "tokens per native-baseline chat")
    baseline_settle_s: float = _opt(3.0, "seconds an engine must be ready before its baseline")
    baseline_refresh_s: float = _opt(12 * 3600.0, "seconds before a cached baseline is redone")

    # --- the credit ledger (issue 15; src/covey/ledger) ---
    ledger: bool = _opt(True, "make and countersign receipts for work served between members, "
                              "kept in ledger.sqlite3 (the mesh's creator keeps the mesh "
                              "ledger)")
    ledger_keeper: str = _opt("", "on the mesh's creator: the member (its node id, as `covey "
                                  "status` shows it) that keeps the mesh ledger; empty: the "
                                  "creator keeps it. Members send it their receipts")
    checkpoint_interval_s: float = _opt(86400.0, "seconds between signed checkpoints of the "
                                                 "ledger (in <data dir>/checkpoints)")
    checkpoint_sink_url: str | None = _opt(None, "also POST every signed checkpoint (its C2SP "
                                                 "note, text/plain) to this http(s) URL")

    # --- memory (issue 16; src/covey/memory) ---
    memory: bool = _opt(True, "keep a memory store (<data dir>/memory.sqlite3) and serve "
                              "/v1/memory on the client port")
    memory_model: str = _opt("all-minilm-l6-v2", "embedding model for memories: an embedded "
                             "model's name (started on first use), or the id of a model this "
                             "node or a peer serves; changing it re-embeds in the background")
    share_memory: tuple[str, ...] = _opt(
        (), "PROJECT whose memories members may search, read-only (repeatable; `*` for every "
        "project); nothing is shared by default", flag="share-memory")

    # --- model files from peers (issue 12; src/covey/fetch) ---
    share_models: bool = _opt(True, "offer the files of the models this node serves to "
                                    "members, chunked and verified (--no-share-models: off)")
    share_models_mbps: float = _opt(0.0, "megabits per second at most for sharing model "
                                         "files, all members together and each one; 0 is "
                                         "unlimited")

    # --- verification of peers' models (issue 14; src/covey/verify) ---
    verify: str = _opt("observe", "off, observe (audit peers, log and show verdicts) or "
                                  "enforce (also demote a peer after failed audits in a row)")
    verify_interval_s: float = _opt(300.0, "mean seconds between audits (random times)")
    verify_fails: int = _opt(3, "failed audits in a row before a peer is suspect (at least 2)")
    verify_demote_s: float = _opt(600.0, "first demotion in enforce mode, seconds; doubles on "
                                         "each repeat")

    # --- logging ---
    log_level: str = _opt("info", "debug, info, warning or error")

    def resolved(self) -> Settings:
        """Expand `~` and check values; raises ConfigError naming the key and the bad value."""
        s = dataclasses.replace(
            self,
            data_dir=self.data_dir.expanduser().resolve(),
            models=tuple(resolve_model(str(m)) for m in self.models),
        )
        s._check()
        return s

    def _check(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"setting {key}={getattr(self, key)!r}: {why}")

        for key in ("port", "mesh_port"):
            if not 0 <= getattr(self, key) <= 65535:
                raise bad(key, "must be 0..65535")
        for key in ("ctx_size", "parallel", "max_body_bytes", "baseline_max_tokens"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        if not 1 <= self.cert_validity_s <= 100 * 365 * 24 * 3600.0:
            raise bad("cert_validity_s", "must be 1 second .. 100 years")
        if self.max_queue < 0:
            raise bad("max_queue", "must not be negative")
        if self.fallback_per_client < 0:
            raise bad("fallback_per_client", "must not be negative")
        if not 0 < self.fallback_window_s <= 30 * 24 * 3600:
            raise bad("fallback_window_s", "must be above 0 and at most 30 days")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", "must be at least 1")
        if self.verify not in ("off", "observe", "enforce"):
            raise bad("verify", "must be off, observe or enforce")
        if self.verify_fails < 2:
            raise bad("verify_fails", "must be at least 2: one failed audit never convicts")
        if not self.verify_interval_s > 0 or not self.verify_demote_s > 0:
            raise bad("verify_interval_s", "intervals must be above zero")
        for project in self.share_memory:
            if project != "*" and not is_project_name(project):
                raise bad("share_memory", f"{project!r} is not a project name (letters, "
                                          "digits, . _ -, at most 64) or *")
        if not (math.isfinite(self.share_models_mbps) and self.share_models_mbps >= 0):
            raise bad("share_models_mbps", "must be 0 (unlimited) or a positive number")
        if not 0 < len(self.memory_model) <= 128:
            raise bad("memory_model", "must be a model name or id")
        if not (math.isfinite(self.headroom) and 0 <= self.headroom < 1):
            raise bad("headroom", "must be at least 0 and below 1")
        if self.ledger_keeper and not re.fullmatch(r"[a-z2-7]{16}", self.ledger_keeper):
            raise bad("ledger_keeper", "must be a node id (16 characters, as `covey status` "
                                       "shows it)")
        if self.checkpoint_sink_url is not None and not self.checkpoint_sink_url.startswith(
                ("http://", "https://")):
            raise bad("checkpoint_sink_url", "must be an http:// or https:// URL")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise bad("log_level", "must be debug, info, warning or error")
        for url in self.backends:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"setting backend={url!r}: must be an http:// or https:// URL")
        for address in self.advertise:
            try:
                check_address(address)
            except ValueError as exc:
                raise ConfigError(f"setting advertise={address!r}: {exc}") from exc
        if len(self.advertise) > MAX_ADDRESSES:
            raise bad("advertise", f"at most {MAX_ADDRESSES} addresses")
        for key, cap in (("daily_driver_ttft_s", MAX_TTFT_S), ("capacity_ttft_s", MAX_TTFT_S),
                         ("daily_driver_tokens_per_s", MAX_TOKENS_PER_S),
                         ("capacity_tokens_per_s", MAX_TOKENS_PER_S)):
            if not (math.isfinite(getattr(self, key)) and 0 < getattr(self, key) <= cap):
                raise bad(key, f"must be a positive number, at most {cap:g}")
        try:
            self.tier_policy()
        except PolicyError as exc:
            raise ConfigError(f"setting tier: {exc}") from exc
        if not is_loopback(self.host) and not self.api_key:
            raise ConfigError(
                f"setting host={self.host!r}: binding a non-loopback address exposes the API "
                "to the network, so it requires an API key; pass --api-key KEY or set "
                "COVEY_API_KEY (clients then send `Authorization: Bearer KEY`)"
            )

    def tier_policy(self) -> TierPolicy:
        """This node's own tier rules and targets (PolicyError naming a bad one)."""
        return TierPolicy(rules=tuple(parse_rule(r) for r in self.tier), targets={
            DAILY: Targets(self.daily_driver_ttft_s, self.daily_driver_tokens_per_s),
            CAPACITY: Targets(self.capacity_ttft_s, self.capacity_tokens_per_s),
            EXPERIMENTAL: Targets(None, None)})

    @property
    def serves_default_model(self) -> bool:
        return self.default_model and not self.models and not self.backends

    @classmethod
    def local_test(cls, data_dir: Path, **overrides: Any) -> Settings:
        """A fast profile for tests: port 0, small contexts, short baseline, quick restarts."""
        base: dict[str, Any] = dict(
            data_dir=data_dir, port=0, ctx_size=512, parallel=2, threads=2,
            baseline_max_tokens=8, baseline_settle_s=0.0, restart_backoff_s=0.2,
            shutdown_grace_s=3.0,
        )
        base.update(overrides)
        return cls(**base)


def resolve_model(value: str) -> str:
    """A `--model` value as the node reads it: a file becomes its absolute path (absolute(),
    not resolve(): the name the user gave, a symlink say, is the model id); an embedded
    model's name, a URL (`https://…`, `hf:…`) and a bare model id stay as given."""
    if embedded.find(value) or "://" in value or value.startswith("hf:"):
        return value
    path = Path(value).expanduser()
    if "/" in value or value.lower().endswith(".gguf") or path.exists():
        return str(path.absolute())
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- building Settings from the layers -------------------------------------------------


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) for an annotation."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _convert(name: str, raw: Any) -> Any:
    tp, optional = _base_type(_hints()[name])
    try:
        if optional and raw in (None, "", "none", "None"):
            return None
        if typing.get_origin(tp) is tuple:
            (item,) = typing.get_args(tp)[:1]
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(item(x) for x in items if x != "")
        if tp in (int, float) and isinstance(raw, bool):
            raise ValueError(f"expected a number, not {raw}")
        if tp is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError("expected a whole number")
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        return tp(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}={raw!r}: {exc}") from exc


def from_layers(
    file_values: Mapping[str, Any], env: Mapping[str, str], flag_values: Mapping[str, Any]
) -> Settings:
    """Merge the layers, later ones winning. Unknown config-file keys are an error."""
    names = {f.name for f in _layered()}
    merged: dict[str, Any] = {}
    for key, raw in file_values.items():
        if key == "provider":  # [[provider]] tables: their own schema
            merged["providers"] = parse_providers(raw, env)
            continue
        if key not in names:
            raise ConfigError(f"config file: unknown setting {key!r}")
        merged[key] = _convert(key, raw)
    for f in _layered():
        var = f.metadata.get("env") or f"COVEY_{f.name.upper()}"
        if var in env:
            merged[f.name] = _convert(f.name, env[var])
    for key, raw in flag_values.items():
        if raw is not None:
            merged[key] = _convert(key, raw)
    return Settings(**merged)


def _layered() -> list[dataclasses.Field[Any]]:
    """The fields that have a flag and a variable (not the config file's own tables)."""
    return [f for f in fields(Settings) if not f.metadata.get("file_only")]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; defaults stay None so unset flags do not override."""
    for f in _layered():
        flag = "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))
        tp, _ = _base_type(_hints()[f.name])
        help_text = f.metadata["help"]
        if "(default:" not in help_text:
            help_text += f" (default: {_show(f.default)})"
        metavar = flag[2:].upper().replace("-", "_")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif typing.get_origin(tp) is tuple:
            parser.add_argument(flag, dest=f.name, action="append", default=None,
                                help=help_text, metavar=metavar)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text,
                                metavar=metavar)


def _show(value: Any) -> str:
    if value in ((), None):
        return "none"
    return str(value)


def load(flag_values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build resolved Settings from the real environment and the config file in the data dir."""
    env = os.environ if env is None else env
    first = from_layers({}, env, flag_values)
    config_file = first.data_dir.expanduser() / "config.toml"
    file_values: dict[str, Any] = {}
    if config_file.is_file():
        try:
            file_values = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
    return from_layers(file_values, env, flag_values).resolved()


def flag_values(ns: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in _layered()}
    return {k: v for k, v in vars(ns).items() if k in names}


__all__: Sequence[str] = ["Settings", "add_flags", "flag_values", "is_loopback", "load"]
