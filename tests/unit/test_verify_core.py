"""The audit statistic, the verdict state machine and the prompt generator (pure)."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from covey.verify import verdicts as v
from covey.verify.compare import Answer, Step, Thresholds, compare, parse_answer
from covey.verify.fingerprint import ask, chat_body
from covey.verify.prompts import audit_prompt


def steps(*toks: tuple[str, float, dict[str, float]]) -> tuple[Step, ...]:
    return tuple(Step(t, lp, top) for t, lp, top in toks)


HONEST = steps(("The", -0.5, {"The": -0.5, "A": -1.5}),
               (" sky", -0.2, {" sky": -0.2, " sun": -2.0}),
               (" is", -0.1, {" is": -0.1, " was": -3.0}), (" blue", -0.3, {" blue": -0.3}))
NOISY = steps(("The", -0.51, {"The": -0.51, "A": -1.49}), (" sky", -0.21, {" sky": -0.21}),
              (" is", -0.11, {" is": -0.11}), (" blue", -0.29, {" blue": -0.29}))
SHIFTED = steps(("The", -1.2, {"The": -1.2, "A": -1.4}), (" sky", -0.9, {" sky": -0.9}),
                (" is", -0.6, {" is": -0.6}), (" blue", -1.0, {" blue": -1.0}))
OTHER = steps(("I", -0.4, {"I": -0.4}), (" am", -0.2, {" am": -0.2}))
# A near tie between "." and a longer token that starts with it (seen on an honest, loaded
# peer): the peer's ".<" matches our "." and parts only at our next token, or after our end.
DOT_TIE = steps(("The", -0.5, {"The": -0.5}), (" sky", -0.2, {" sky": -0.2}),
                (".", -0.87, {".": -0.87, ".<": -0.93}), (" It", -0.3, {" It": -0.3}))
DOT_SURE = steps(("The", -0.5, {"The": -0.5, "A": -0.6}), (" sky", -0.2, {" sky": -0.2}),
                 (".", -0.1, {".": -0.1, ".<": -3.0}), (" It", -0.3, {" It": -0.3}))
TIE_LOCAL = steps(("The", -0.5, {"The": -0.5, "A": -1.5}), (" sky", -0.2, {" sky": -0.2}),
                  (" is", -0.1, {" is": -0.1}), (" blue", -0.7, {" blue": -0.7, " grey": -0.8}))
TIE_PEER = steps(("The", -0.5, {"The": -0.5}), (" sky", -0.2, {" sky": -0.2}),
                 (" is", -0.1, {" is": -0.1}), (" grey", -0.69, {" grey": -0.69}))


def ans(text: str, st: tuple[Step, ...] = (), finish: str | None = None) -> Answer:
    return Answer(text, st, finish)


@pytest.mark.parametrize(("local", "peer", "outcome"), [
    (ans("The sky is blue", HONEST), ans("The sky is blue", HONEST), "pass"),
    (ans("The sky is blue", HONEST), ans("The sky is blue", NOISY), "pass"),  # tail noise
    (ans("The sky is blue", HONEST), ans("The sky is blue", SHIFTED), "fail"),  # perturbed
    (ans("The sky is blue", HONEST), ans("I am", OTHER), "fail"),  # another model
    (ans("The sky is blue", TIE_LOCAL), ans("The sky is grey", TIE_PEER), "pass"),  # a tie
    (ans("The sky is blue", HONEST[:2]), ans("The sky", HONEST[:2]), "inconclusive"),
    (ans("The sky is blue", ()), ans("The sky is blue", HONEST), "inconclusive"),
    # A backend without logprobs: text alone, which can fail but never pass an audit.
    (ans("The sky is blue", HONEST), ans("The sky is blue"), "inconclusive"),
    (ans("The sky is blue", HONEST), ans("Hello from a canned backend"), "fail"),
    (ans("The sky is blue", HONEST), ans("The"), "inconclusive"),
    (ans("The sky is blue", TIE_LOCAL), ans("The sky is grey"), "inconclusive"),
    (ans("The sky is blue", HONEST), ans("The sky is"), "fail"),  # stopped short, no tie
    # Runs on past the local text: max_tokens ended ours, so no honest engine says more (a
    # backend echoing the prompt does); ours stopped by itself: a tie with end-of-text.
    (ans("The sky is blue", HONEST, "length"), ans("The sky is blue today"), "fail"),
    (ans("The sky is blue", HONEST, "stop"), ans("The sky is blue today"), "inconclusive"),
    (ans("The sky is blue", HONEST, None), ans("The sky is blue today"), "inconclusive"),
    # The peer broke a local tie with a longer token: no blame, wherever the texts part...
    (ans("The sky.", DOT_TIE[:3], "length"), ans("The sky.<end"), "inconclusive"),
    (ans("The sky. It", DOT_TIE, "length"), ans("The sky.<end"), "inconclusive"),
    # ...but only when the tied token is what the peer's text goes on with.
    (ans("The sky.", DOT_SURE[:3], "length"), ans("The sky.<end"), "fail"),
    (ans("The sky. It", DOT_SURE, "length"), ans("The sky.<end"), "fail"),
])
def test_compare_table(local: Answer, peer: Answer, outcome: str) -> None:
    assert compare(local, peer).outcome == outcome


def test_mean_distance_is_reported_and_thresholded() -> None:
    c = compare(ans("x", HONEST), ans("x", NOISY))
    assert c.mean_nats is not None and 0 < c.mean_nats < 0.02
    strict = compare(ans("x", HONEST), ans("x", NOISY), Thresholds(max_mean_nats=0.001))
    assert strict.outcome == "fail"
    assert "top-1 4/4" in c.evidence()


def test_a_short_aligned_prefix_never_fails_on_distance() -> None:
    # One agreed step, then a tie: one step's distance is too noisy to blame.
    local = steps(("The", -0.5, {"The": -0.5}), (" sky", -0.6, {" sky": -0.6, " sun": -0.7}))
    peer = steps(("The", -1.5, {"The": -1.5}), (" sun", -0.6, {" sun": -0.6}))
    c = compare(ans("The sky", local), ans("The sun", peer))
    assert c.outcome == "inconclusive" and c.mean_nats is not None and c.mean_nats > 0.5


def test_finish_reason_is_read_and_bounded() -> None:
    a = parse_answer({"choices": [{"message": {"content": "hi"}, "finish_reason": "x" * 99}]})
    assert a is not None and a.finish == "x" * 16
    b = parse_answer({"choices": [{"message": {"content": "hi"}, "finish_reason": 7}]})
    assert b is not None and b.finish is None


async def test_ask_posts_under_the_engines_v1_root() -> None:
    # EngineReady.base_url ends in /v1: the answer comes from <base>/chat/completions.
    async def chat(request: web.Request) -> web.Response:
        return web.json_response(_choice([{"token": "a", "logprob": -0.1}]))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        got = await ask(session, str(server.make_url("/v1")), chat_body("m", "hi", 4, 5, 1))
    assert got is not None and [s.token for s in got.steps] == ["a"]


def _choice(content: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"content": "hi"}, "logprobs": {"content": content}}]}


def test_parse_answer_hostile_input() -> None:
    assert parse_answer({}) is None
    assert parse_answer({"choices": "x"}) is None
    a = parse_answer(_choice([{"token": "a", "logprob": float("-inf"),
                               "top_logprobs": [{"token": "a", "logprob": 1e300},
                                                {"token": 5, "logprob": 0}]},
                              {"token": "b", "logprob": "nan"}]))
    assert a is not None and len(a.steps) == 1  # the bad step ends the list
    assert a.steps[0].logprob == -100.0 and a.steps[0].top == {"a": 0.0}
    long = parse_answer(_choice([{"token": "t" * 1000, "logprob": -1}] * 1000))
    assert long is not None and len(long.steps) == 64 and len(long.steps[0].token) == 64
    nolp = parse_answer({"choices": [{"message": {"content": "hi"}}]})
    assert nolp == Answer("hi", ())


OBS = v.Policy(mode="observe", fails_to_suspect=3, demote_s=100)
ENF = v.Policy(mode="enforce", fails_to_suspect=3, demote_s=100)


def run(policy: v.Policy, outcomes: str, start: float = 0.0) -> list[tuple[str, bool]]:
    """Apply outcomes (p/f/i), one per second; (status, demoted) after each."""
    book = v.VerdictBook(policy)
    names = {"p": "pass", "f": "fail", "i": "inconclusive"}
    out = []
    for i, o in enumerate(outcomes):
        now = start + i
        book.record("n", "m", names[o], "", now)  # type: ignore[arg-type]
        out.append((book.status("n", "m", now), not book.routable("n", "m", now)))
    return out


@pytest.mark.parametrize(("policy", "outcomes", "last"), [
    (OBS, "", None),
    (OBS, "p", ("verified", False)),
    (OBS, "i", ("inconclusive", False)),
    (OBS, "pi", ("verified", False)),
    (OBS, "pf", ("unverified", False)),  # one fail never convicts
    (OBS, "ff", ("unverified", False)),
    (OBS, "fff", ("suspect", False)),  # observe: suspect, still routable
    (OBS, "ffip", ("verified", False)),
    (OBS, "fffif", ("suspect", False)),  # inconclusive neither clears nor adds
    (ENF, "ff", ("unverified", False)),
    (ENF, "fff", ("suspect", True)),
    (ENF, "fffp", ("verified", True)),  # a pass clears the suspicion, not the demotion
])
def test_verdict_table(policy: v.Policy, outcomes: str,
                       last: tuple[str, bool] | None) -> None:
    got = run(policy, outcomes)
    assert (got[-1] if got else None) == last
    if not outcomes:
        assert v.VerdictBook(policy).status("n", "m", 0) == "unverified"


def test_demotion_expires_and_doubles() -> None:
    book = v.VerdictBook(ENF)
    for t in range(3):
        book.record("n", "m", "fail", "x", float(t))
    rec = book.get("n", "m", 2)
    assert rec is not None and rec.demoted_until == 102 and rec.demotions == 1
    assert not book.routable("n", "m", 101.9)
    assert book.routable("n", "m", 102)  # expired on its own
    assert book.status("n", "m", 102) == "unverified"  # failures in a row start again
    for t in range(200, 202):
        book.record("n", "m", "fail", "x", float(t))
    assert book.routable("n", "m", 202)  # two fails: not yet
    book.record("n", "m", "fail", "x", 202)
    rec = book.get("n", "m", 202)
    assert rec is not None and rec.demoted_until == 402  # doubled
    assert book.header("n", "m", 202) == "suspect"
    assert book.routable("other", "m", 202) and book.routable("n", "other", 202)


def test_policy_refuses_single_fail_conviction() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        v.Policy(fails_to_suspect=1)


def test_snapshot_lists_evidence() -> None:
    book = v.VerdictBook(OBS)
    book.record("n", "m", "fail", "top-1 differs at step 1", 5.0)
    (entry,) = book.snapshot(6.0)
    assert entry["status"] == "unverified" and entry["evidence"] == "top-1 differs at step 1"
    assert book.header("n", "m", 6.0) == "unverified"


def test_prompts_are_fresh_and_bounded() -> None:
    rng = random.Random(7)
    prompts = [audit_prompt(rng) for _ in range(500)]
    assert all(0 < len(p) < 200 for p in prompts)
    assert len(set(prompts)) > 450  # not a fixed list
    assert audit_prompt(random.Random(1)) == audit_prompt(random.Random(1))
