"""Remembered peers: merged freshest first, a moved node keeps one address, damage ignored."""

from __future__ import annotations

from pathlib import Path

from covey.mesh.remembered import MAX_REMEMBERED, Bootstrap, load, merge, save

A, B, C = (Bootstrap(f"10.0.0.{i}:7070", f"{i}" * 64) for i in (1, 2, 3))


def test_merge_puts_live_first_and_keeps_others() -> None:
    assert merge([B], [A, B]) == [B, A]


def test_a_moved_node_keeps_only_its_new_address() -> None:
    moved = Bootstrap("10.0.0.9:7171", A.fingerprint)
    assert merge([moved], [A, C]) == [moved, C]


def test_merge_is_capped() -> None:
    many = [Bootstrap(f"10.0.1.{i}:1", f"{i:064x}") for i in range(40)]
    assert len(merge(many[:20], many[20:])) == MAX_REMEMBERED


def test_round_trip_and_damaged_files(tmp_path: Path) -> None:
    save(tmp_path, [A, B])
    assert load(tmp_path) == [A, B]
    for damage in ("not json", '{"a": 1}', '[{"address": "x"}]', "[1, 2]"):
        (tmp_path / "peers.json").write_text(damage)
        assert load(tmp_path) == []
    assert load(tmp_path / "missing") == []
