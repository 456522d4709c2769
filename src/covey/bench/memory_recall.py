"""Recall of a memory embedder on a labelled set: paraphrased queries over stored facts.

    python -m covey.bench.memory_recall --url http://127.0.0.1:PORT/v1 --model MODEL [--json]
    python -m covey.bench.memory_recall --lexical [--json]

The set (tests/data/memory_recall/, see its README) holds facts of the kind machines and
coding agents store as memories, and queries a user would type later, each labelled with the
one fact it asks for. Every fact and query is embedded through an OpenAI-compatible
`/v1/embeddings` endpoint (batches of at most 64 inputs); queries are ranked against all
facts by exact cosine; recall@k is the share of queries whose fact is among the first k.

`--lexical` ranks with BM25 over words instead, no model: a floor for an embedder and a
measure of how much the queries avoid their facts' wording (the more they share, the closer
BM25 gets to 1.0 and the less the set says about meaning).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_SET = Path(__file__).resolve().parents[3] / "tests" / "data" / "memory_recall"
MAX_BATCH = 64  # inputs per /v1/embeddings request
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # 64 inputs x a few thousand dims of JSON floats fit
MAX_DIM = 16_384  # an embedding longer than this is not a sentence embedder's
MAX_SET_LINES = 100_000


@dataclass(frozen=True)
class Fact:
    id: str
    project: str
    tags: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Query:
    q: str
    fact: str  # the id of the one fact this query asks for


def load_set(folder: Path) -> tuple[list[Fact], list[Query]]:
    """Read facts.jsonl and queries.jsonl from `folder`. Raises ValueError naming the file and
    line of a malformed record, a repeated fact id, or a query whose fact does not exist."""
    facts: list[Fact] = []
    seen: set[str] = set()
    for where, obj in _jsonl(folder / "facts.jsonl"):
        fid, project, text = obj.get("id"), obj.get("project"), obj.get("text")
        tags = obj.get("tags", [])
        if not (isinstance(fid, str) and isinstance(project, str) and isinstance(text, str)):
            raise ValueError(f"{where}: id, project and text must be strings")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}: tags must be a list of strings")
        if fid in seen:
            raise ValueError(f"{where}: fact id {fid!r} repeated")
        seen.add(fid)
        facts.append(Fact(fid, project, tuple(tags), text))
    queries: list[Query] = []
    for where, obj in _jsonl(folder / "queries.jsonl"):
        q, fact = obj.get("q"), obj.get("fact")
        if not (isinstance(q, str) and isinstance(fact, str)):
            raise ValueError(f"{where}: q and fact must be strings")
        if fact not in seen:
            raise ValueError(f"{where}: no fact {fact!r}")
        queries.append(Query(q, fact))
    return facts, queries


def _jsonl(path: Path) -> list[tuple[str, dict[str, object]]]:
    rows: list[tuple[str, dict[str, object]]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if n > MAX_SET_LINES:
                raise ValueError(f"{path.name}: more than {MAX_SET_LINES} lines")
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"{path.name}:{n}: not a JSON object")
            rows.append((f"{path.name}:{n}", obj))
    return rows


def recall_at_k(ranked: list[list[str]], truth: list[str], k: int) -> float:
    """Share of queries whose true id is among the first `k` of its ranking (0.0 for none)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if len(ranked) != len(truth):
        raise ValueError(f"{len(ranked)} rankings for {len(truth)} labels")
    if not truth:
        return 0.0
    return sum(t in r[:k] for r, t in zip(ranked, truth, strict=True)) / len(truth)


def rank(scores: np.ndarray, ids: Sequence[str], depth: int) -> list[list[str]]:
    """Per row of `scores` (queries x facts), the `depth` fact ids best first; ties keep the
    facts' order, so a scorer that cannot tell two facts apart does not get lucky."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return [[ids[j] for j in row] for row in order]


def evaluate(
    embed: Callable[[list[str]], np.ndarray],
    facts: Sequence[Fact],
    queries: Sequence[Query],
    ks: Sequence[int] = (1, 5, 10),
    batch: int = MAX_BATCH,
) -> dict[str, float | int]:
    """Embed facts and queries with `embed` (texts -> (n, dim) array) in batches of `batch`,
    rank every query against all facts by exact cosine, and report recall@k for each k with
    the hit counts. Raises ValueError for an embedder that returns the wrong shape or
    non-finite numbers."""
    fact_vectors = _embed_all(embed, [f.text for f in facts], batch)
    query_vectors = _embed_all(embed, [q.q for q in queries], batch)
    if fact_vectors.shape[1] != query_vectors.shape[1]:
        raise ValueError("facts and queries were embedded with different dimensions")
    scores = _unit(query_vectors) @ _unit(fact_vectors).T
    result = _report(scores, facts, queries, ks)
    result["dim"] = int(fact_vectors.shape[1])
    return result


def evaluate_lexical(
    facts: Sequence[Fact], queries: Sequence[Query], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float | int]:
    """The same report with BM25 over words in place of an embedder."""
    scores = bm25_scores([f.text for f in facts], [q.q for q in queries])
    return _report(scores, facts, queries, ks)


def _report(
    scores: np.ndarray, facts: Sequence[Fact], queries: Sequence[Query], ks: Sequence[int]
) -> dict[str, float | int]:
    ranked = rank(scores, [f.id for f in facts], max(ks))
    truth = [q.fact for q in queries]
    result: dict[str, float | int] = {"facts": len(facts), "queries": len(queries)}
    for k in ks:
        r = recall_at_k(ranked, truth, k)
        result[f"recall@{k}"] = round(r, 4)
        result[f"hits@{k}"] = round(r * len(truth))
    return result


def _embed_all(
    embed: Callable[[list[str]], np.ndarray], texts: list[str], batch: int
) -> np.ndarray:
    parts = []
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        vectors = np.asarray(embed(chunk), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(chunk):
            raise ValueError(f"embedder returned shape {vectors.shape} for {len(chunk)} texts")
        if not np.isfinite(vectors).all():
            raise ValueError("embedder returned non-finite numbers")
        parts.append(vectors)
    return np.concatenate(parts)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0.0, 1.0, norms)  # a zero vector scores 0 with all


_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lowercased runs of letters and digits: no stemming, no stop list (BM25's idf weighs
    the common words down)."""
    return _WORD.findall(text.lower())


def bm25_scores(
    docs: Sequence[str], queries: Sequence[str], k1: float = 1.5, b: float = 0.75
) -> np.ndarray:
    """Okapi BM25 scores, queries x docs."""
    tokens = [words(d) for d in docs]
    vocab = {w: i for i, w in enumerate(sorted({w for t in tokens for w in t}))}
    tf = np.zeros((len(docs), len(vocab)))
    for row, t in enumerate(tokens):
        for w, c in Counter(t).items():
            tf[row, vocab[w]] = c
    df = (tf > 0).sum(axis=0)
    idf = np.log(1.0 + (len(docs) - df + 0.5) / (df + 0.5))
    lengths = tf.sum(axis=1, keepdims=True)
    norm = k1 * (1.0 - b + b * lengths / max(float(lengths.mean()), 1.0))
    weights = idf * tf * (k1 + 1.0) / (tf + norm)  # docs x vocab
    query_terms = np.zeros((len(queries), len(vocab)))
    for row, q in enumerate(queries):
        for w in set(words(q)):
            if w in vocab:
                query_terms[row, vocab[w]] = 1.0
    scores: np.ndarray = query_terms @ weights.T
    return scores


def http_embedder(
    url: str, model: str, api_key: str = "", timeout_s: float = 120.0
) -> Callable[[list[str]], np.ndarray]:
    """An `embed` for evaluate() over an OpenAI-compatible server: POST {url}/embeddings.
    Checks the answer: one finite vector per input, all of one dimension, put back in input
    order by their `index`."""
    endpoint = url.rstrip("/") + "/embeddings"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    def embed(texts: list[str]) -> np.ndarray:
        if len(texts) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} inputs per request, not {len(texts)}")
        body = json.dumps({"model": model, "input": texts}).encode()
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
        if len(raw) > MAX_RESPONSE_BYTES:
            raise ValueError(f"embeddings answer over {MAX_RESPONSE_BYTES} bytes")
        return parse_embeddings(json.loads(raw), len(texts))

    return embed


def parse_embeddings(answer: object, n: int) -> np.ndarray:
    """The (n, dim) array from an OpenAI embeddings answer; ValueError if it is not one."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or len(data) != n:
        raise ValueError(f"expected {n} embeddings in 'data'")
    rows: list[list[float] | None] = [None] * n
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < n or rows[index] is not None:
            raise ValueError(f"embedding {position}: bad or repeated index")
        if not isinstance(vector, list) or not 0 < len(vector) <= MAX_DIM:
            raise ValueError(f"embedding {position}: not a list of 1..{MAX_DIM} numbers")
        if not all(isinstance(x, int | float) and math.isfinite(x) for x in vector):
            raise ValueError(f"embedding {position}: non-numeric or non-finite value")
        rows[index] = vector
    if len({len(r) for r in rows if r is not None}) != 1:
        raise ValueError("embeddings of different dimensions in one answer")
    return np.array(rows, dtype=np.float64)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m covey.bench.memory_recall", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default="", help="model name sent with each request")
    parser.add_argument("--api-key", default="", help="bearer token, if the server wants one")
    parser.add_argument(
        "--lexical", action="store_true", help="rank with BM25 over words, no model"
    )
    parser.add_argument(
        "--set", type=Path, default=DEFAULT_SET, help="folder with facts.jsonl and queries.jsonl"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not args.lexical and not args.url:
        parser.error("give --url (and --model) or --lexical")
    facts, queries = load_set(args.set)
    if args.lexical:
        scorer = "lexical-bm25"
        result = evaluate_lexical(facts, queries)
    else:
        scorer = f"embeddings:{args.model or 'default'}"
        result = evaluate(http_embedder(args.url, args.model, args.api_key), facts, queries)
    if args.json:
        print(json.dumps({"scorer": scorer, **result}))
    else:
        print(f"{scorer}: {result['facts']} facts, {result['queries']} queries")
        for key, value in result.items():
            if key.startswith("recall@"):
                k = key.removeprefix("recall@")
                print(f"  recall@{k:<3} {value:.3f}  ({result[f'hits@{k}']}/{result['queries']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
