"""Issue 14: audits tell honest peers from impostors, with real engines.

One entry serves Gemma 3 270M from its own file (the ground truth) and audits, every ~0.3 s
here, three peers that all claim `gemma-3-270m-q4_k_m`:
- honest: the same file with other thread and slot counts (never flagged);
- impostor: SmolLM2's GGUF under Gemma's file name (model ids come from file names);
- canned: an attached fake backend that answers fixed text under Gemma's id.
Enforce mode, K=2: both cheats are suspect and demoted; the honest peer is verified.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeBackend, NodeProcess, http, mesh_invite, wait_for

GEMMA = "gemma-3-270m-q4_k_m"


@pytest.mark.timeout(400)
def test_audits_flag_impostors_never_the_honest_peer(
        start_node: Callable[..., NodeProcess], fake_backend: Callable[..., FakeBackend],
        model_path: Path, chat_model_path: Path, tmp_path: Path) -> None:
    entry = start_node("--model", str(model_path), "--no-default-model", "--verify", "enforce",
                       "--verify-interval-s", "0.3", "--verify-fails", "2", name="entry")
    entry.wait_listening()
    ids: dict[str, str] = {}
    honest = start_node("--model", str(model_path), "--no-default-model", "--threads", "1",
                        "--parallel", "1", "--join", mesh_invite(entry), name="honest")
    fake_dir = tmp_path / "impostor-file"
    fake_dir.mkdir()
    shutil.copyfile(chat_model_path, fake_dir / f"{GEMMA}.gguf")
    impostor = start_node("--model", str(fake_dir / f"{GEMMA}.gguf"), "--no-default-model",
                          "--join", mesh_invite(entry), name="impostor")
    canned = fake_backend(models=GEMMA, tokens=12, token_delay=0.0)
    canned_node = start_node("--no-default-model", "--no-baseline", "--backend", canned.url,
                             "--join", mesh_invite(entry), name="canned")
    for name, node in (("honest", honest), ("impostor", impostor), ("canned", canned_node)):
        node.wait_listening()
        ids[node.status()["node"]["id"]] = name

    def verdicts() -> dict[str, dict[str, Any]]:
        return {ids[v["node_id"]]: v for v in entry.status()["verification"]["peers"]
                if v["node_id"] in ids and v["model"] == GEMMA}

    def settled() -> bool:
        v = verdicts()
        return (v.get("honest", {}).get("passes", 0) >= 3
                and v.get("impostor", {}).get("status") == "suspect"
                and v.get("canned", {}).get("status") == "suspect")

    try:
        wait_for(settled, 150, "audits to verify the honest peer and flag both cheats")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; verdicts: {verdicts()}; entry log: "
                             f"{entry.log()[-3000:]}") from None
    v = verdicts()
    assert v["honest"]["fails"] == 0 and v["honest"]["status"] == "verified", v["honest"]
    for cheat in ("impostor", "canned"):
        assert v[cheat]["demoted_until"] is not None, v[cheat]
        assert v[cheat]["evidence"], v[cheat]
    # Demoted peers get no routes: every answer from the entry comes from itself or honest.
    for _ in range(4):
        code, headers, body = http("POST", entry.url + "/v1/chat/completions", {
            "model": GEMMA, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert code == 200, body
        served = headers["x-covey-served-by"].split()[0]
        assert ids.get(served) not in ("impostor", "canned"), served
        assert headers["x-covey-verified"] == "verified"
