"""bench/fairshare.py on a short simulated run: properties, not timings (simulated clock)."""

from __future__ import annotations

from covey.bench.fairshare import run
from covey.router.fairshare import Policy


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


def test_the_headroom_keeps_contributors_waiting_as_if_alone() -> None:
    """Contributors at half the engine's capacity: with the default headroom their p50 wait
    is within 1.5x of their run alone (the issue's goal); without it, it is not. The
    free-rider is slowed, still served, every wait within the bound."""
    result = run(seed=1, hours=0.25, contributor_load=0.5)
    verdict = result["verdict"]
    assert verdict["contributors_wait_within_1_5x"], verdict
    assert verdict["free_rider_served"] > 0 and verdict["free_rider_within_bound"]
    off = run(seed=1, hours=0.25, contributor_load=0.5, policy=Policy(headroom_share=0.0))
    assert not off["verdict"]["contributors_wait_within_1_5x"], off["verdict"]
    assert off["verdict"]["free_rider_served"] > verdict["free_rider_served"]
