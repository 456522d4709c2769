"""Peer health as a state machine, on an injected clock: debounce, suppression, freshness,
and a failed one-token probe that is re-probed with backoff and comes back."""

from __future__ import annotations

import pytest

from covey.health import layers as L
from covey.health.state import (
    CheapCheck,
    Observation,
    PeerState,
    Policy,
    RealRequest,
    TokenProbe,
    large_kept,
    large_probe_due,
)

M = "m-q4_k_m"
LONG = 1e9  # a freshness limit that never runs out, for tests about something else


def check_ok() -> CheapCheck:
    return CheapCheck(tuple(L.passed(layer, "fine") for layer in range(5, 11)))


def check_failed(layer: int = 6) -> CheapCheck:
    passes = [L.passed(n, "fine") for n in range(5, layer)]
    # A result above the failure is noise the failure caused: it must never be reported.
    return CheapCheck((*passes, L.failed(layer, f"layer {layer} broke", f"fix {layer}"),
                       L.failed(min(layer + 2, 11), "noise", "noise")))


def token_ok(model: str = M) -> TokenProbe:
    return TokenProbe(model, L.passed(11, f"{model}: first token in 50 ms"))


def token_failed(model: str = M) -> TokenProbe:
    return TokenProbe(model, L.failed(11, f"{model} answered HTTP 502", "see its log"))


def feed(state: PeerState, *steps: tuple[float, Observation]) -> PeerState:
    for now, observation in steps:
        state = state.observe(observation, now)
    return state


# --- debounce: down_after failures mark a peer down, one success marks it up ---------------

DEBOUNCE = [
    ("one passing check", [check_ok()], True),
    ("one failure keeps it up", [check_ok(), check_failed()], True),
    ("two failures mark it down", [check_ok(), check_failed(), check_failed()], False),
    ("one success brings it back", [check_ok(), check_failed(), check_failed(), check_ok()],
     True),
    ("a success resets the count", [check_ok(), check_failed(), check_ok(), check_failed()],
     True),
    ("failed real requests count", [check_ok(), RealRequest(M, False), RealRequest(M, False)],
     False),
    ("mixed failures count", [check_ok(), RealRequest(M, False), check_failed()], False),
    ("a streamed request is a success", [check_ok(), check_failed(), RealRequest(M, True),
                                         check_failed()], True),
    ("never passed is never up", [check_failed()], False),
    ("an engine down (layer 10) is not a path failure",
     [check_ok(), check_failed(10), check_failed(10)], True),
]


@pytest.mark.parametrize(("steps", "usable"), [(s, u) for _, s, u in DEBOUNCE],
                         ids=[name for name, _, _ in DEBOUNCE])
def test_debounce(steps: list[Observation], usable: bool) -> None:
    state = feed(PeerState(Policy(fresh_s=LONG)), *enumerate(steps))
    assert state.usable(M, len(steps)) is usable


def test_down_after_one_takes_a_single_failure() -> None:
    state = feed(PeerState(Policy(down_after=1, fresh_s=LONG)), (0, check_ok()),
                 (1, check_failed()))
    assert not state.usable(M, 1)


def test_never_checked_is_not_usable() -> None:
    state = PeerState()
    assert not state.usable(M, 0) and state.why_not(M, 0) == "not checked yet"
    assert state.report(0)["ok"] is None
    # Real traffic alone is not a check: routing needs the data plane proven first.
    assert not state.observe(RealRequest(M, True), 0).usable(M, 0)


@pytest.mark.parametrize(("age", "usable"), [(0.0, True), (6.9, True), (7.0, False),
                                             (100.0, False)])
def test_a_stale_check_is_not_usable(age: float, usable: bool) -> None:
    state = PeerState(Policy(fresh_s=7.0)).observe(check_ok(), 100.0)
    assert state.usable(M, 100.0 + age) is usable
    if not usable:
        assert state.why_not(M, 100.0 + age) == "checks are out of date"


# --- suppression: the first broken layer is the one named ----------------------------------

def test_a_lower_failure_silences_the_layers_above() -> None:
    policy = Policy(down_after=1, fresh_s=LONG)
    state = feed(PeerState(policy), (0, check_ok()), (1, token_failed()), (2, check_failed(6)))
    assert state.why_not(M, 2) == "layer 6 (TCP connect): layer 6 broke"
    report = state.report(2)
    assert report["ok"] is False and report["first_failure"]["layer"] == 6
    assert [layer["ok"] for layer in report["layers"]] == [True, False] + [None] * 5
    assert "layer 6 (TCP connect) failed" in report["layers"][-1]["detail"]


def test_report_shows_a_removed_model_at_layer_11() -> None:
    state = feed(PeerState(Policy(down_after=1, fresh_s=LONG)), (0, check_ok()),
                 (10, token_failed()))
    report = state.report(11)
    assert report["ok"] is False and report["first_failure"]["layer"] == 11
    assert "HTTP 502" in report["first_failure"]["detail"]
    assert "next try in 1s" in report["first_failure"]["detail"]
    assert state.why_not(M, 11) == f"layer 11 (one token back): {M} answered HTTP 502"


def test_report_shows_the_newest_proof() -> None:
    state = feed(PeerState(Policy(fresh_s=LONG)), (0, check_ok()), (5, token_ok()))
    report = state.report(8)
    assert report["ok"] is True and report["checked_at"] == 0
    assert report["layers"][-1]["detail"] == "a token came back 3s ago"


# --- the one-token hole: a failed probe is re-probed with backoff and comes back ------------

@pytest.mark.parametrize("down_after", [1, 2, 3])
def test_failed_token_probe_is_reprobed_after_backoff_and_restored(down_after: int) -> None:
    policy = Policy(down_after=down_after, fresh_s=LONG, backoff_s=2.0, backoff_max_s=60.0)
    state = feed(PeerState(policy), (0, check_ok()))
    assert state.usable(M, 0) and state.wants_token_probe(M, 0)  # no proof yet
    now = 0.0
    for failure in range(1, down_after + 1):
        state = state.observe(token_failed(), now)
        wait = 2.0 * 2 ** (failure - 1)
        # Removed only once `down_after` probes in a row have failed.
        assert state.usable(M, now) is (failure < down_after)
        assert not state.wants_token_probe(M, now + wait - 0.01)  # not before the backoff
        assert state.wants_token_probe(M, now + wait)
        now += wait
    assert not state.usable(M, now)  # still out until a token comes back
    assert state.failing_models() == [M]
    state = state.observe(token_ok(), now)
    assert state.usable(M, now) and state.failing_models() == []
    assert not state.wants_token_probe(M, now)  # a fresh proof: no probe needed


def test_backoff_doubles_and_is_capped() -> None:
    policy = Policy(down_after=1, fresh_s=LONG, backoff_s=2.0, backoff_max_s=60.0)
    state = feed(PeerState(policy), (0, check_ok()))
    waits = []
    now = 0.0
    for _ in range(8):
        state = state.observe(token_failed(), now)
        retry_at = state.models[M].retry_at
        assert retry_at is not None
        waits.append(retry_at - now)
        now = retry_at
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.backoff(10**6) == 60  # no overflow after days of failures


@pytest.mark.parametrize("restore", [RealRequest(M, True), token_ok()],
                         ids=["real request", "token probe"])
def test_a_success_restores_a_removed_model(restore: Observation) -> None:
    state = feed(PeerState(Policy(down_after=1, fresh_s=LONG)), (0, check_ok()),
                 (1, token_failed()))
    assert not state.usable(M, 1)
    state = state.observe(restore, 1.5)  # before the backoff: traffic proves it anyway
    assert state.usable(M, 1.5) and state.models[M].retry_at is None


def test_token_failures_are_per_model() -> None:
    state = feed(PeerState(Policy(down_after=1, fresh_s=LONG)), (0, check_ok()),
                 (1, token_failed("a")))
    assert not state.usable("a", 1) and state.usable("b", 1)


def test_failed_real_requests_do_not_remove_the_model() -> None:
    # A busy peer refuses real requests; that may mark the path down until the next check,
    # but must not hold the model out for a token backoff.
    state = feed(PeerState(Policy(fresh_s=LONG)), (0, check_ok()), (1, RealRequest(M, False)),
                 (2, RealRequest(M, False)), (3, check_ok()))
    assert state.usable(M, 3) and not state.removed(M)


@pytest.mark.parametrize(("steps", "at", "wants"), [
    ([(0, token_ok())], 60.0, False),  # proof 60 s old: still fresh
    ([(0, token_ok())], 60.5, True),  # stale
    ([], 0.0, True),  # never proved
    ([(0, check_failed()), (0, check_failed())], 100.0, False),  # path down: not the model
])
def test_wants_token_probe(steps: list[tuple[float, Observation]], at: float,
                           wants: bool) -> None:
    state = feed(PeerState(Policy(fresh_s=LONG, token_stale_s=60.0)), (0, check_ok()), *steps)
    assert state.wants_token_probe(M, at) is wants


def test_forget_models_drops_what_the_peer_no_longer_serves() -> None:
    state = feed(PeerState(Policy(down_after=1, fresh_s=LONG)), (0, check_ok()),
                 (1, token_failed("a")), (1, token_failed("b")))
    state = state.forget_models({"b"})
    assert state.failing_models() == ["b"]


# -- the large probe, sent when due ---------------------------------------------------------

def test_the_large_probe_runs_first_after_a_failure_and_every_nth_check() -> None:
    """Simulates a peer's cheap checks: which send the 64 KiB probe. Before the rule every
    check did (32 KiB/s per peer each way at the default 2 s)."""
    policy = Policy(large_every=5)
    kept: tuple[L.LayerResult, int] | None = None
    sent = []
    for n in range(1, 23):
        last, since = kept or (None, 0)
        due = large_probe_due(last, since, policy)
        sent.append(due)
        if n == 12:  # a check that fails at the small probe (layer 8)
            kept = large_kept(check_failed(8).results, due, since)
        else:
            kept = large_kept(check_ok().results, due, since)
    # First check; every 5th while all passes; the one after the failure at 12; then every 5th.
    assert [n for n, due in enumerate(sent, start=1) if due] == [1, 6, 11, 13, 18]


def test_a_failed_large_probe_is_never_reused() -> None:
    failing = (*check_ok().results[:4], L.failed(9, "a 64 KiB probe timed out", "MTU"))
    assert large_kept(failing, True, 0) is None
    assert large_probe_due(L.failed(9, "x", "y"), 1, Policy())
    # A check that stopped before layer 9 (the path broke lower) keeps nothing either.
    assert large_kept(check_ok().results[:3], True, 0) is None


def test_an_engine_down_keeps_the_large_pass() -> None:
    """Layer 10 is the peer's engine, not the path: a model stuck failing there must not
    bring the 64 KiB probe back every round."""
    engine_down = (*check_ok().results[:5], L.failed(10, "engine for m is failed", "see it"))
    assert large_kept(engine_down, False, 3) == (engine_down[4], 4)


def test_a_reused_pass_counts_the_checks_it_stood_for() -> None:
    results = check_ok().results
    assert large_kept(results, True, 7) == (results[4], 1)
    assert large_kept(results, False, 3) == (results[4], 4)
    assert results[4].layer == 9
