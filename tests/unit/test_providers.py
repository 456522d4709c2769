"""router/providers.py: [[provider]] tables from config.toml, validated; keys never shown."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from covey.config import load
from covey.errors import ConfigError
from covey.router.budget import Budget
from covey.router.fallback import choose, client_key
from covey.router.providers import parse_providers

GOOD = {"name": "up", "base_url": "http://127.0.0.1:9/v1/", "key_env": "UP_KEY",
        "models": {"gemma": "google/gemma"}}


def test_a_provider_is_read_with_its_key_from_the_named_variable() -> None:
    (p,) = parse_providers([GOOD], {"UP_KEY": "sk-secret"})
    assert p.base_url == "http://127.0.0.1:9/v1" and p.models == {"gemma": "google/gemma"}
    assert p.timeout_s == 30.0 and p.hourly_cap is None and p.tiers == ("daily-driver",)
    assert p.enabled
    assert "sk-secret" not in repr(p) and "sk-secret" not in str(p.public())
    assert p.public()["key_set"] is True


def test_an_unset_variable_disables_the_provider() -> None:
    (p,) = parse_providers([GOOD], {})
    assert not p.enabled and p.public()["key_set"] is False
    assert choose([p], Budget(5, 60.0), "gemma", "daily-driver", "c", 0.0).status == \
        "fallback-disabled"


@pytest.mark.parametrize(("change", "names"), [
    ({"name": "bad name"}, "provider[0].name="),
    ({"base_url": "ftp://x"}, "provider[0].base_url="),
    ({"key_env": "1NOPE"}, "provider[0].key_env="),
    ({"models": {}}, "provider[0].models="),
    ({"models": {"gemma": 5}}, "provider[0].models.'gemma'"),
    ({"timeout_s": 0}, "provider[0].timeout_s="),
    ({"timeout_s": True}, "provider[0].timeout_s="),
    ({"hourly_cap": -1}, "provider[0].hourly_cap="),
    ({"hourly_cap": 1.5}, "provider[0].hourly_cap="),
    ({"tiers": ["fast"]}, "provider[0].tiers="),
    ({"key": "sk-inline"}, "unknown key 'key'"),
])
def test_errors_name_the_key(change: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=r".*") as info:
        parse_providers([{**GOOD, **change}], {})
    assert names in str(info.value)


def test_missing_keys_and_duplicates() -> None:
    with pytest.raises(ConfigError, match=r"provider\[0\]: missing 'key_env'"):
        parse_providers([{k: v for k, v in GOOD.items() if k != "key_env"}], {})
    with pytest.raises(ConfigError, match="used twice"):
        parse_providers([GOOD, GOOD], {})
    with pytest.raises(ConfigError, match=r"\[\[provider\]\] tables"):
        parse_providers({"name": "x"}, {})


def test_config_file_provider_tables(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'fallback_per_client = 3\n'
        '[[provider]]\nname = "up"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'key_env = "UP_KEY"\nhourly_cap = 10\ntiers = ["daily-driver", "capacity"]\n'
        '[provider.models]\n"gemma" = "google/gemma"\n')
    tomllib.loads((tmp_path / "config.toml").read_text())
    s = load({"data_dir": str(tmp_path)}, env={"UP_KEY": "sk-secret"})
    (p,) = s.providers
    assert (p.name, p.hourly_cap, p.tiers, p.key) == (
        "up", 10, ("daily-driver", "capacity"), "sk-secret")
    assert s.fallback_per_client == 3
    assert "sk-secret" not in repr(s)


def test_the_client_is_the_key_only_on_a_keyed_node() -> None:
    assert client_key("Bearer k", "10.0.0.1", keyed=False) == "addr:10.0.0.1"
    keyed = client_key("Bearer k", "10.0.0.1", keyed=True)
    assert keyed.startswith("key:") and "Bearer k" not in keyed
    assert client_key(None, "10.0.0.1", keyed=True) == "addr:10.0.0.1"
