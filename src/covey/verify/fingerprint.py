"""The model fingerprint a node publishes in its signed record, taken with its native baseline.

The GGUF's sha256 and metadata (architecture, parameter count label, quantization) and, for a
few fixed synthetic prompts, the greedy output with its per-token top-k log-probabilities.
A node that does not hold the file can compare what peers claiming one model publish (a
cheap consistency check); audits (auditor.py) are the real proof, since a cheat can copy an
honest node's fingerprint.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from covey.engine import gguf
from covey.engine.catalog import sha256_file
from covey.router.table import ServedModel
from covey.types import EngineReady
from covey.verify.compare import Answer, parse_answer

PROMPTS = ("Name three colors.", "Count from one to five.", "Say hello in French.")
FINGERPRINT_TOKENS = 8
TOP_K = 5


def chat_body(model: str, prompt: str, max_tokens: int, top_k: int, seed: int) -> dict[str, Any]:
    """The one body shape for fingerprints and audits: greedy, seeded, with logprobs."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "seed": seed, "stream": False,
            "logprobs": True, "top_logprobs": top_k}


MAX_ENGINE_ANSWER = 4 * 1024 * 1024


async def ask(session: aiohttp.ClientSession, base_url: str, body: dict[str, Any]
              ) -> Answer | None:
    """One non-streamed chat on this node's own engine (`base_url` ends in /v1), parsed; None
    if it answered something other than a chat completion (or more than MAX_ENGINE_ANSWER).
    Raises aiohttp.ClientResponseError on a non-200 answer."""
    async with session.post(f"{base_url}/chat/completions", json=body) as r:
        r.raise_for_status()
        # Read to the end: one read() returns whatever arrived first, not the whole body.
        raw = bytearray()
        async for chunk in r.content.iter_any():
            raw += chunk
            if len(raw) > MAX_ENGINE_ANSWER:
                return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return parse_answer(data) if isinstance(data, dict) else None


def file_facts(path: Path) -> dict[str, Any]:
    """sha256 and header facts of a GGUF (blocking: run it in a thread)."""
    meta = gguf.read_metadata(path)
    arch = meta.get("general.architecture")
    label = meta.get("general.size_label")
    return {"sha256": sha256_file(path),
            "architecture": str(arch)[:64] if arch is not None else None,
            "parameters": str(label)[:32] if label is not None else None}


async def take(session: aiohttp.ClientSession, model: ServedModel) -> dict[str, Any] | None:
    """This node's fingerprint of `model` as a record field value; None when it has no file
    or its engine is not ready."""
    state = model.engine.state
    if model.card.path is None or not isinstance(state, EngineReady):
        return None
    facts = await asyncio.to_thread(file_facts, model.card.path)
    probes: list[dict[str, Any]] = []
    # An embedding model answers no chat: its fingerprint is its file alone.
    for prompt in () if model.card.embeddings_only else PROMPTS:
        answer = await ask(session, state.base_url,
                           chat_body(model.upstream_name, prompt, FINGERPRINT_TOKENS, TOP_K, 42))
        if answer is None:
            return None
        probes.append({"text": answer.text[:256],
                       "tokens": [s.token for s in answer.steps][:16],
                       "logprobs": [round(s.logprob, 4) for s in answer.steps][:16]})
    return {**facts, "quantization": model.card.quantization, "probes": probes}
