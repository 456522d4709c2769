"""config.py: one declaration per field, layered defaults < file < env < flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path

import pytest

from covey.config import Settings, add_flags, flag_values, from_layers, is_loopback, load
from covey.errors import ConfigError


def _flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return flag_values(parser.parse_args(list(argv)))


# --- layering -----------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "env", "argv", "port"), [
    ({}, {}, [], 7272),
    ({"port": 1000}, {}, [], 1000),
    ({}, {"COVEY_PORT": "2000"}, [], 2000),
    ({"port": 1000}, {"COVEY_PORT": "2000"}, [], 2000),
    ({"port": 1000}, {}, ["--port", "3000"], 3000),
    ({}, {"COVEY_PORT": "2000"}, ["--port", "3000"], 3000),
    ({"port": 1000}, {"COVEY_PORT": "2000"}, ["--port", "3000"], 3000),
    ({"port": 1000}, {"COVEY_PORT": "2000"}, ["--port", "0"], 0),  # 0 is a value, not unset
])
def test_later_layers_win(file: dict[str, object], env: dict[str, str], argv: list[str],
                          port: int) -> None:
    assert from_layers(file, env, _flags(*argv)).port == port


def test_layers_merge_field_by_field() -> None:
    s = from_layers({"port": 1000, "parallel": 3}, {"COVEY_CTX_SIZE": "1024"},
                    _flags("--port", "3000"))
    assert (s.port, s.parallel, s.ctx_size, s.threads) == (3000, 3, 1024, Settings().threads)


@pytest.mark.parametrize(("env", "field", "value"), [
    ({"COVEY_HOME": "/srv/covey"}, "data_dir", Path("/srv/covey")),
    ({"COVEY_HOST": "0.0.0.0"}, "host", "0.0.0.0"),
    ({"COVEY_API_KEY": "k"}, "api_key", "k"),
    ({"COVEY_DEFAULT_MODEL": "false"}, "default_model", False),
    ({"COVEY_MODELS": "a.gguf,b.gguf"}, "models", ("a.gguf", "b.gguf")),
    ({"COVEY_MODELS": "a.gguf,,b.gguf,"}, "models", ("a.gguf", "b.gguf")),
    ({"COVEY_BACKENDS": "http://x/v1"}, "backends", ("http://x/v1",)),
    ({"COVEY_ALLOWED_HOSTS": "a.lan,b.lan"}, "allowed_hosts", ("a.lan", "b.lan")),
    ({"COVEY_THREADS": "4"}, "threads", 4),
    ({"COVEY_THREADS": "none"}, "threads", None),
    ({"COVEY_THREADS": "None"}, "threads", None),
    ({"COVEY_THREADS": ""}, "threads", None),
    ({"COVEY_BASELINE_SETTLE_S": "1.5"}, "baseline_settle_s", 1.5),
    ({"COVEY_FAST_MEMORY_BYTES": "1073741824"}, "fast_memory_bytes", 1 << 30),
    # the data dir is COVEY_HOME only; look-alikes and foreign names are ignored
    ({"COVEY_DATA_DIR": "/elsewhere"}, "data_dir", Settings().data_dir),
    ({"PORT": "1", "covey_port": "1"}, "port", Settings().port),
    ({"COVEY_NO_SUCH_SETTING": "1"}, "port", Settings().port),
])
def test_environment(env: dict[str, str], field: str, value: object) -> None:
    assert getattr(from_layers({}, env, {}), field) == value


@pytest.mark.parametrize(("raw", "value"), [
    *[(raw, True) for raw in ("1", "true", "TRUE", "yes", "on", True, 1)],
    *[(raw, False) for raw in ("0", "false", "No", "off", False, 0)],
])
def test_bool_conversion(raw: object, value: bool) -> None:
    assert from_layers({"embeddings": raw}, {}, {}).embeddings is value


@pytest.mark.parametrize(("file", "field", "value"), [
    ({"models": ["a.gguf", "b.gguf"]}, "models", ("a.gguf", "b.gguf")),
    ({"allowed_hosts": "x.lan"}, "allowed_hosts", ("x.lan",)),
    ({"data_dir": "/srv/covey"}, "data_dir", Path("/srv/covey")),
    ({"port": "8080"}, "port", 8080),
    ({"gossip_interval_s": 3}, "gossip_interval_s", 3.0),
    ({"api_key": ""}, "api_key", None),
])
def test_file_values_are_converted(file: dict[str, object], field: str, value: object) -> None:
    assert getattr(from_layers(file, {}, {}), field) == value


# --- bad values name the key and the value ------------------------------------------------


@pytest.mark.parametrize(("file", "env", "argv", "message"), [
    ({"port": "eighty"}, {}, [], "setting port='eighty'"),
    ({"baseline": "maybe"}, {}, [], "setting baseline='maybe'"),
    ({"models": 5}, {}, [], "setting models=5"),
    ({}, {"COVEY_PORT": "8080.5"}, [], "setting port='8080.5'"),
    ({}, {"COVEY_EMBEDDINGS": "2"}, [], "setting embeddings='2'"),
    ({}, {"COVEY_THREADS": "many"}, [], "setting threads='many'"),
    ({}, {}, ["--gossip-interval-s", "fast"], "setting gossip_interval_s='fast'"),
    ({}, {}, ["--port", "abc"], "setting port='abc'"),
    ({"no_such_key": 1}, {}, [], "config file: unknown setting 'no_such_key'"),
])
def test_bad_values_name_the_key(file: dict[str, object], env: dict[str, str], argv: list[str],
                                 message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_layers(file, env, _flags(*argv))


# Was a bug: _convert calls int()/float() on whatever the TOML file holds, so a float or a boolean
# in an integer setting is silently truncated or turned into 1 instead of refused.
@pytest.mark.parametrize(("file", "message"), [
    ({"parallel": 2.5}, "setting parallel=2.5"),
    ({"port": True}, "setting port=True"),
])
def test_wrong_toml_types_are_refused(file: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_layers(file, {}, {})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"port": 70000}, "port=70000"),
    ({"mesh_port": -1}, "mesh_port=-1"),
    ({"parallel": 0}, "parallel=0"),
    ({"ctx_size": 0}, "ctx_size=0"),
    ({"max_queue": -1}, "max_queue=-1"),
    ({"threads": 0}, "threads=0"),
    ({"log_level": "loud"}, "log_level='loud'"),
    ({"backends": ("ftp://x",)}, "backend='ftp://x'"),
    ({"host": "0.0.0.0"}, "--api-key"),
    ({"host": "::"}, "--api-key"),
    ({"host": "192.0.2.10"}, "requires an API key"),
    ({"host": "192.0.2.10", "api_key": ""}, "--api-key"),  # an empty key is no key
    ({"tier": ("gemma=fast",)}, "tier: tier rule 'gemma=fast': tier must be one of"),
    ({"tier": ("=capacity",)}, "write MODEL_OR_GLOB=TIER"),
    ({"daily_driver_ttft_s": 0.0}, "daily_driver_ttft_s=0.0: must be a positive number"),
    ({"capacity_tokens_per_s": float("nan")}, "capacity_tokens_per_s=nan"),
    ({"headroom": 1.0}, "headroom=1.0: must be at least 0 and below 1"),
    ({"ledger_keeper": "node-b"}, "ledger_keeper='node-b': must be a node id"),
    # A target the mesh's policy could not carry is refused here, not at the creator's start.
    ({"capacity_ttft_s": 1e9}, "capacity_ttft_s=1000000000.0: must be a positive number, at "
                               "most 86400"),
])
def test_resolved_refuses_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings(**overrides).resolved()  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_key(host: str) -> None:
    assert is_loopback(host)
    assert Settings(host=host).resolved().host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "covey.lan", "LOCALHOST.",
                                  ""])
def test_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_non_loopback_with_key_is_accepted(host: str) -> None:
    assert Settings(host=host, api_key="k").resolved().host == host


def test_model_paths_keep_the_given_name(tmp_path: Path) -> None:
    target = tmp_path / "real.gguf"
    target.write_bytes(b"GGUF")
    link = tmp_path / "alias-q4_0.gguf"
    link.symlink_to(target)
    assert Settings(models=(str(link),)).resolved().models == (str(link),)


def test_resolved_makes_paths_absolute() -> None:
    s = Settings(models=("rel.gguf",)).resolved()
    assert Path(s.models[0]).is_absolute() and Path(s.models[0]).name == "rel.gguf"
    assert s.data_dir.is_absolute() and "~" not in str(s.data_dir)


def test_embedded_model_names_stay_names() -> None:
    """`--model gemma-3-270m` names the embedded Gemma (the node fetches it), not a file in
    the working directory; a path with a folder in it stays a path."""
    s = from_layers({}, {}, _flags("--model", "gemma-3-270m", "--model", "dir/gemma-3-270m",
                                   "--model", "smollm2-135m-instruct-q4_1")).resolved()
    assert s.models[0] == "gemma-3-270m"
    assert Path(s.models[1]).is_absolute() and Path(s.models[1]).name == "gemma-3-270m"
    assert s.models[2] == "smollm2-135m-instruct-q4_1"
    assert not s.serves_default_model


def test_urls_and_model_ids_stay_as_given(tmp_path: Path) -> None:
    """Issue 12: a URL (`//` must survive: a Path would fold it), the hub's form and a model
    id a peer serves are sources the node fetches; a bare name that is a file here is a file."""
    (tmp_path / "local-model").write_bytes(b"GGUF")
    values = ("https://host.example/m.gguf#sha256=" + "0" * 64, "hf:owner/repo/f.gguf@main",
              "qwen2.5-7b-instruct-q4_k_m")
    assert Settings(models=values).resolved().models == values
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert Settings(models=("local-model",)).resolved().models == (
            str(tmp_path / "local-model"),)
    finally:
        os.chdir(cwd)


# --- what is served -----------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "serves_default"), [
    ({}, True),
    ({"models": (Path("a.gguf"),)}, False),
    ({"backends": ("http://x/v1",)}, False),
    ({"models": (Path("a.gguf"),), "backends": ("http://x/v1",)}, False),
    ({"default_model": False}, False),
])
def test_default_model_is_replaced(overrides: dict[str, object], serves_default: bool) -> None:
    assert Settings(**overrides).serves_default_model is serves_default  # type: ignore[arg-type]


@pytest.mark.parametrize(("argv", "serves_default"), [
    ([], True),
    (["--default-model"], True),
    (["--model", "a.gguf"], False),
    (["--model", "a.gguf", "--default-model"], False),  # --model replaces the default
    (["--backend", "http://x/v1"], False),
    (["--no-default-model"], False),
])
def test_default_model_from_flags(argv: list[str], serves_default: bool) -> None:
    assert from_layers({}, {}, _flags(*argv)).serves_default_model is serves_default


# --- profiles -----------------------------------------------------------------------------


def test_local_test_profile(tmp_path: Path) -> None:
    s = Settings.local_test(tmp_path, parallel=1)
    assert s.port == 0 and s.parallel == 1 and s.data_dir == tmp_path
    assert s.ctx_size == 512 and s.baseline_settle_s == 0.0
    assert s.resolved().data_dir == tmp_path.resolve()


def test_local_test_profile_takes_any_setting(tmp_path: Path) -> None:
    assert Settings.local_test(tmp_path, port=5, host="::1").port == 5
    with pytest.raises(TypeError):
        Settings.local_test(tmp_path, no_such_setting=1)


# --- flags --------------------------------------------------------------------------------


def test_unset_flags_are_none_and_cover_every_field() -> None:
    values = _flags()
    # Every field but the config file's own tables ([[provider]]) has a flag.
    assert set(values) == {f.name for f in dataclasses.fields(Settings)} - {"providers"}
    assert set(values.values()) == {None}


def test_flags_round_trip() -> None:
    s = from_layers({}, {}, _flags("--model", "a.gguf", "--model", "b.gguf", "--no-default-model",
                                   "--port", "0", "--backend", "http://x/v1"))
    assert s.models == ("a.gguf", "b.gguf")
    assert s.default_model is False and s.port == 0 and s.backends == ("http://x/v1",)


@pytest.mark.parametrize(("argv", "field", "value"), [
    (["--model", "a,b.gguf"], "models", ("a,b.gguf",)),  # repeated flags are not split
    (["--allowed-host", "a.lan", "--allowed-host", "b.lan"], "allowed_hosts",
     ("a.lan", "b.lan")),
    (["--api-key", "k"], "api_key", "k"),
    (["--threads", "none"], "threads", None),
    (["--embeddings"], "embeddings", True),
    (["--no-baseline"], "baseline", False),
    (["--data-dir", "/srv/covey"], "data_dir", Path("/srv/covey")),
    (["--restart-backoff-max-s", "2.5"], "restart_backoff_max_s", 2.5),
])
def test_flags(argv: list[str], field: str, value: object) -> None:
    assert getattr(from_layers({}, {}, _flags(*argv)), field) == value


# --- the config file ----------------------------------------------------------------------


def test_config_file_in_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('parallel = 7\nport = 9000\n')
    s = load({"data_dir": str(tmp_path), "port": "9100"}, env={})
    assert s.parallel == 7 and s.port == 9100  # the flag beats the file
    (tmp_path / "config.toml").write_text("parallel = [")
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load({"data_dir": str(tmp_path)}, env={})


def test_config_file_found_through_covey_home(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('ctx_size = 1024\n')
    s = load({}, env={"COVEY_HOME": str(tmp_path), "COVEY_CTX_SIZE": "4096"})
    assert s.data_dir == tmp_path.resolve() and s.ctx_size == 4096  # env beats the file
    (tmp_path / "config.toml").write_text('ctx_sise = 1024\n')
    with pytest.raises(ConfigError, match="unknown setting 'ctx_sise'"):
        load({}, env={"COVEY_HOME": str(tmp_path)})
