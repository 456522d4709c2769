"""bench/fairshare.py on a short simulated run: properties, not timings (simulated clock)."""

from __future__ import annotations

from covey.bench.fairshare import run


def test_contributors_go_first_and_the_free_rider_is_still_served() -> None:
    result = run(seed=3, hours=0.25)
    fair, equal = result["runs"]["fair-share"], result["runs"]["no-standing"]
    for c in ("contributor-a", "contributor-b"):
        assert fair[c]["refused"] == 0
        assert fair[c]["wait_s"]["p50"] < equal[c]["wait_s"]["p50"]
    assert fair["free-rider"]["served"] > 0
    assert result["verdict"]["free_rider_within_bound"]
    # The same seed gives the same figures: the run is a simulation, not a measurement.
    assert run(seed=3, hours=0.25)["runs"] == result["runs"]
