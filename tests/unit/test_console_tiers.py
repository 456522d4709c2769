"""`covey status` shows each model's tier: the local table's column and the mesh catalog."""

from __future__ import annotations

from rich.console import Console

from covey.console import _catalog_table, _targets


def _render(table: object) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_catalog_table_shows_tiers_targets_and_the_default() -> None:
    text = _render(_catalog_table([
        {"id": "chat-small", "tier": "daily-driver",
         "targets": {"ttft_s": 3.0, "tokens_per_s": 8.0}, "tokens_per_s_p50": 31.5,
         "nodes": [{"id": "n1", "name": "laptop"}]},
        {"id": "big-72b", "tier": "capacity", "targets": {"ttft_s": 15.0, "tokens_per_s": 0.8},
         "tokens_per_s_p50": None, "nodes": [{"id": "abcdefabcdefabcdef", "name": ""}]},
        {"id": "[red]odd", "nodes": []},  # an older node's row: no tier; markup stays text
    ], "chat-small"))
    assert "chat-small *" in text and "daily-driver" in text and "≤ 3 s TTFT, ≥ 8 tok/s" in text
    assert "capacity" in text and "≤ 15 s TTFT, ≥ 0.8 tok/s" in text and "abcdefabcdef" in text
    assert "[red]odd" in text


def test_targets_cell() -> None:
    assert _targets({"ttft_s": None, "tokens_per_s": None}) == "-"
    assert _targets(None) == "-"
    assert _targets({"ttft_s": 2.5, "tokens_per_s": None}) == "≤ 2.5 s TTFT"
