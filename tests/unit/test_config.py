"""Settings: one declaration per field, layered defaults < file < env < flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from covey.config import Settings, add_flags, flag_values, from_layers, is_loopback, load
from covey.errors import ConfigError


def _flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return flag_values(parser.parse_args(list(argv)))


def test_layers_later_wins() -> None:
    s = from_layers({"port": 1000, "parallel": 3}, {"COVEY_PORT": "2000"}, _flags("--port", "3000"))
    assert s.port == 3000 and s.parallel == 3
    s = from_layers({"port": 1000}, {"COVEY_PORT": "2000"}, _flags())
    assert s.port == 2000
    assert from_layers({}, {}, _flags()).port == Settings().port


@pytest.mark.parametrize(("env", "field", "value"), [
    ({"COVEY_HOME": "/srv/covey"}, "data_dir", Path("/srv/covey")),
    ({"COVEY_API_KEY": "k"}, "api_key", "k"),
    ({"COVEY_DEFAULT_MODEL": "false"}, "default_model", False),
    ({"COVEY_MODELS": "a.gguf,b.gguf"}, "models", (Path("a.gguf"), Path("b.gguf"))),
    ({"COVEY_THREADS": "none"}, "threads", None),
    ({"COVEY_BASELINE_SETTLE_S": "1.5"}, "baseline_settle_s", 1.5),
])
def test_environment(env: dict[str, str], field: str, value: object) -> None:
    assert getattr(from_layers({}, env, {}), field) == value


def test_flags_round_trip() -> None:
    s = from_layers({}, {}, _flags("--model", "a.gguf", "--model", "b.gguf", "--no-default-model",
                                   "--port", "0", "--backend", "http://x/v1"))
    assert s.models == (Path("a.gguf"), Path("b.gguf"))
    assert s.default_model is False and s.port == 0 and s.backends == ("http://x/v1",)


@pytest.mark.parametrize(("layer", "message"), [
    ({"port": "eighty"}, "port='eighty'"),
    ({"baseline": "maybe"}, "baseline='maybe'"),
    ({"no_such_key": 1}, "unknown setting 'no_such_key'"),
])
def test_bad_file_values_name_the_key(layer: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_layers(layer, {}, {})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"port": 70000}, "port=70000"),
    ({"parallel": 0}, "parallel=0"),
    ({"max_queue": -1}, "max_queue=-1"),
    ({"log_level": "loud"}, "log_level='loud'"),
    ({"backends": ("ftp://x",)}, "backend='ftp://x'"),
    ({"host": "0.0.0.0"}, "--api-key"),
    ({"host": "192.0.2.10"}, "requires an API key"),
])
def test_resolved_refuses_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**overrides).resolved()  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_key(host: str) -> None:
    assert is_loopback(host)
    Settings(host=host).resolved()


def test_non_loopback_with_key_is_accepted() -> None:
    assert Settings(host="0.0.0.0", api_key="k").resolved().host == "0.0.0.0"


def test_model_paths_keep_the_given_name(tmp_path: Path) -> None:
    target = tmp_path / "real.gguf"
    target.write_bytes(b"GGUF")
    link = tmp_path / "alias-q4_0.gguf"
    link.symlink_to(target)
    assert Settings(models=(link,)).resolved().models == (link,)


@pytest.mark.parametrize(("overrides", "serves_default"), [
    ({}, True),
    ({"models": (Path("a.gguf"),)}, False),
    ({"backends": ("http://x/v1",)}, False),
    ({"default_model": False}, False),
])
def test_default_model_is_replaced(overrides: dict[str, object], serves_default: bool) -> None:
    assert Settings(**overrides).serves_default_model is serves_default  # type: ignore[arg-type]


def test_local_test_profile(tmp_path: Path) -> None:
    s = Settings.local_test(tmp_path, parallel=1)
    assert s.port == 0 and s.parallel == 1 and s.data_dir == tmp_path


def test_config_file_in_the_data_dir(tmp_path: Path) -> None:

    (tmp_path / "config.toml").write_text('parallel = 7\nport = 9000\n')
    s = load({"data_dir": str(tmp_path), "port": "9100"}, env={})
    assert s.parallel == 7 and s.port == 9100  # the flag beats the file
    (tmp_path / "config.toml").write_text("parallel = [")
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load({"data_dir": str(tmp_path)}, env={})
