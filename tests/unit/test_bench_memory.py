"""bench/memory.py at tiny sizes, so it cannot rot (figures, not timings, are checked)."""

from __future__ import annotations

import json

import pytest

from covey.bench.memory import main


def test_bench_runs_at_tiny_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--json", "--sizes", "100,300", "--queries", "10", "--dim", "32"])
    result = json.loads(capsys.readouterr().out)
    assert [r["size"] for r in result["clustered"]] == [100, 300]
    for row in [*result["clustered"], result["uniform"]]:
        for key in ("exact_ms", "ann_ms", "store_ms"):
            assert row[key]["p50"] <= row[key]["p95"]
        assert row["store_method"] == "exact"  # both sizes under ANN_THRESHOLD
        assert 0.0 <= row["recall_at_10"] <= 1.0
    largest = result["clustered"][-1]
    assert largest["store_filtered_recall_at_10"] == 1.0
    assert set(largest["filter_ms"]) == {"columns", "sql"}
    main(["--sizes", "100", "--queries", "5", "--dim", "16", "--no-uniform"])
    assert "recall@10" in capsys.readouterr().out
