"""Every request is measured, and efficiency compares like with like (issue 11).

A whole (non-streamed) answer adds a decode-speed sample and an end-to-end latency; the
catalog's efficiency reads only answers long enough to compare with the native baseline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from covey.metrics.efficiency import comparable
from covey.metrics.samples import Speed, median
from tests.conftest import FakeBackend, NodeProcess, http, wait_for

MODEL = "gemma-3-270m-q4_k_m"
# Half the default (128): the rule is relative to the baseline's length, and twenty chats of
# half the length on a one-thread engine take half as long (the test ran nearly 2 minutes).
BASELINE_TOKENS = 64


def _row(node: NodeProcess, model: str) -> dict[str, Any]:
    return next(r for r in node.status()["catalog"] if r["id"] == model)


def test_a_whole_answer_adds_a_speed_and_a_latency(
        start_node: Callable[..., NodeProcess], fake_backend: Callable[..., FakeBackend]) -> None:
    """Without timings in the body (not llama.cpp), the node's own clock measures it."""
    node = start_node("--backend", fake_backend(tokens=10, token_delay=0.01).url,
                      "--no-baseline", fast=False)
    node.wait_listening()
    node.wait_ready("fake-model")
    for _ in range(2):
        code, _, body = http("POST", node.url + "/v1/chat/completions", {
            "model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
        assert code == 200, body
    model = node.model("fake-model")
    assert model["tokens_per_s"]["count"] == 2 and model["tokens_per_s"]["p50"] > 0
    assert model["tokens_per_s_sources"] == {"stream": 0, "engine": 0, "clock": 2}
    assert model["latency_ms"]["count"] == 2 and model["latency_ms"]["p50"] > 0
    assert model["ttft_ms"]["count"] == 0  # a whole answer has no first token to time
    row = _row(node, "fake-model")
    assert row["tokens_per_s_p50"] > 0 and row["samples"] == 2 and row["source"] == "this node"
    assert row["ttft_ms_p50"] is None and row["latency_ms_p50"] > 0


def _first_in_line(node: NodeProcess) -> None:
    """Give the node and its engine the machine's CPU before other work on it. The test
    machine is shared with other test runs: a baseline measured in a quiet second and chats
    in a busy one would compare two different machines, which no efficiency rule can fix."""
    for proc in [psutil.Process(node.proc.pid), *psutil.Process(node.proc.pid).children(True)]:
        os.setpriority(os.PRIO_PROCESS, proc.pid, -10)


def _engine_rate(timings: Any) -> float:
    """llama.cpp's own decode rate for one answer, from the `timings` it sends with it."""
    assert isinstance(timings, dict), "llama.cpp sends its timings with every answer"
    return (timings["predicted_n"] - 1) / (timings["predicted_ms"] / 1000)


def _chats(client: openai.OpenAI, lengths: list[int], first: int = 0) -> list[tuple[int, float]]:
    """One chat per length, streamed and whole in turn, each decoding exactly that many.
    Returns (tokens, llama.cpp's own decode rate) per chat: the machine's speed at that very
    request, which the node's figure is judged beside."""
    rates = []
    for i, n in enumerate(lengths, start=first):
        args: dict[str, Any] = {
            "model": MODEL, "max_tokens": n, "temperature": 0,
            "messages": [{"role": "user", "content": f"Tell me about rivers ({i})"}],
            "extra_body": {"ignore_eos": True}}
        if i % 2:
            r = client.chat.completions.create(**args)
            assert r.usage is not None and r.usage.completion_tokens == n
            timings = (r.model_extra or {}).get("timings")
        else:
            chunks = list(client.chat.completions.create(**args, stream=True))
            assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) == n
            timings = (chunks[-1].model_extra or {}).get("timings")  # the stream's last event
        rates.append((n, _engine_rate(timings)))
    return rates


@pytest.mark.engine
@pytest.mark.timeout(420)
def test_efficiency_reads_an_idle_node_as_efficient_and_a_slowed_one_lower(
        start_node: Callable[..., NodeProcess], model_path: Path,
        openai_client: Callable[[str], openai.OpenAI]) -> None:
    # One engine thread: on a small shared machine a two-thread engine slows by half or more
    # whenever another process takes a core (its threads wait for each other), so the
    # baseline and the chats would see different machines (docs/bench.md).
    args = ["--model", str(model_path), "--baseline-max-tokens", str(BASELINE_TOKENS),
            "--parallel", "1", "--threads", "1", "--baseline-settle-s", "2"]
    node = start_node(*args)
    node.wait_listening()
    node.wait_ready(timeout=120)
    _first_in_line(node)  # within the 2 s before the baseline starts
    baseline = wait_for(lambda: node.model()["baseline"], 120, "the native baseline")
    # Mixed lengths, short chat answers among them; streamed and whole alternate, so each
    # length is asked once streamed and once whole (the second round starts on the other foot).
    one_round = [4, 64, 8, 32, 12, 48, 6, 100, 16, 80]
    lengths = one_round * 2
    client = openai_client(node.url)
    # Numbered one further in the second round: its parity, streamed or whole, flips.
    rates = _chats(client, one_round) + _chats(client, one_round, len(one_round) + 1)
    expected = sum(comparable(Speed(1.0, n, "stream"), BASELINE_TOKENS) for n in lengths)

    def settled() -> dict[str, Any] | None:  # the last stream's sample lands just after [DONE]
        row = _row(node, MODEL)
        return row if row["samples"] == len(lengths) else None

    row = wait_for(settled, 10, "every chat's sample")
    # The machine's speed while the chats ran, from llama.cpp's own timings of the same
    # comparable chats. A shared test machine drifts 10-15 % within a minute (seen in CI:
    # 34.4 tok/s at the baseline, 33.1 natively beside the chats, the node's samples 30 and
    # single answers here from 26 to 34 with nothing else running); that is the machine, not
    # the node, and it is allowed for, never more. What is left is the node's own share: a
    # relay that slowed a stream, or a clock that counted more than decode, reads below
    # llama.cpp's timings of the same answers.
    engine = median([rate for n, rate in rates
                     if comparable(Speed(rate, n, "engine"), BASELINE_TOKENS)])
    machine = engine / baseline["tokens_per_s"]
    figures = (f"efficiency {row['efficiency']:.3f} over {row['efficiency_samples']} samples; "
               f"tokens/s p50 {row['tokens_per_s_p50']:.1f}, native {baseline['tokens_per_s']:.1f}"
               f" at the baseline, llama.cpp's own {engine:.1f} for the same answers"
               f" ({machine:.3f})")
    print(f"idle node: {figures}")
    assert row["efficiency_samples"] == expected
    # Whole answers from llama.cpp carry its timings: the real body's shape is read.
    assert row["tokens_per_s_sources"] == {"stream": 10, "engine": 10, "clock": 0}, figures
    # Within noise of 100 %: at least 90 % of the slower of the baseline the page divides by
    # and the machine's speed while the chats ran.
    assert row["efficiency"] >= 0.9 * min(1.0, machine), figures

    # Slowed on purpose, deterministically: the node now serves at half the speed its
    # baseline claims (as if the baseline had come from a faster engine). The cached baseline
    # is doubled and the node restarted from the same data dir, which loads it.
    node.stop()
    cache = node.data_dir / "baselines.json"
    entries = json.loads(cache.read_text())
    for entry in entries.values():
        entry["tokens_per_s"] *= 2
    cache.write_text(json.dumps(entries))
    slow = start_node(*args, data_dir=node.data_dir)
    slow.wait_listening()
    slow.wait_ready(timeout=120)
    _first_in_line(slow)
    wait_for(lambda: (slow.model()["baseline"] or {}).get("tokens_per_s")
             == pytest.approx(2 * baseline["tokens_per_s"]), 30, "the cached baseline")
    # Two short chats first, too short to be compared: a restarted engine is slow at first.
    slow_rates = _chats(openai_client(slow.url), [8, 12, 32, 48, 64, 40])
    row = wait_for(lambda: (r := _row(slow, MODEL))["samples"] == 6 and r, 10,
                   "every chat's sample")
    # Judged beside the machine's speed while these chats ran, as above: ~0.5 of it, and a
    # machine running faster than at the baseline lifts the figure with it (0.59 was seen
    # with llama.cpp 18 % above its baseline).
    slow_engine = median([rate for n, rate in slow_rates
                          if comparable(Speed(rate, n, "engine"), BASELINE_TOKENS)])
    slow_machine = slow_engine / baseline["tokens_per_s"]
    print(f"slowed node: efficiency {row['efficiency']:.3f} over {row['efficiency_samples']}, "
          f"machine {slow_machine:.3f} of its baseline")
    assert row["efficiency_samples"] == 4
    assert row["efficiency"] <= 0.6 * max(1.0, slow_machine)
