"""The memory recall set (tests/data/memory_recall) and bench/memory_recall.py: the set's
integrity, recall@k, ranking, evaluation with fake embedders, the lexical floor, and the
/v1/embeddings client against a fake server."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from covey.bench.memory_recall import (
    MAX_BATCH,
    Fact,
    Query,
    bm25_scores,
    evaluate,
    evaluate_lexical,
    load_set,
    main,
    parse_embeddings,
    rank,
    recall_at_k,
)

SET = Path(__file__).resolve().parents[1] / "data" / "memory_recall"


# -- the set ---------------------------------------------------------------------------------


def test_the_set_has_300_facts_and_a_query_for_each() -> None:
    facts, queries = load_set(SET)  # raises on a repeated id or a query for no fact
    assert len(facts) == 300
    assert len(queries) >= 300
    asked = Counter(q.fact for q in queries)
    assert {f.id for f in facts} == set(asked)
    assert any(n >= 2 for n in asked.values())


def test_the_set_has_no_duplicates_and_queries_do_not_copy_their_fact() -> None:
    facts, queries = load_set(SET)
    text = {f.id: f.text.lower() for f in facts}
    assert len(set(text.values())) == len(facts)
    assert len({q.q.lower() for q in queries}) == len(queries)
    copied = [q.q for q in queries if q.q.lower().rstrip("?") in text[q.fact]]
    assert copied == []


def test_the_set_spans_several_projects_with_tags() -> None:
    facts, _ = load_set(SET)
    projects = Counter(f.project for f in facts)
    assert 5 <= len(projects) <= 8
    assert all(f.tags and f.text.strip() for f in facts)


@pytest.mark.parametrize(
    ("facts", "queries", "message"),
    [
        (['{"id": "a", "project": "p", "text": "x"}'] * 2, [], "repeated"),
        (['{"id": "a", "project": "p", "text": "x"}'], ['{"q": "y", "fact": "b"}'], "no fact"),
        (['{"id": 1, "project": "p", "text": "x"}'], [], "strings"),
        (['{"id": "a", "project": "p", "text": "x", "tags": "t"}'], [], "tags"),
        (["[1, 2]"], [], "not a JSON object"),
    ],
)
def test_load_set_names_the_bad_line(
    tmp_path: Path, facts: list[str], queries: list[str], message: str
) -> None:
    (tmp_path / "facts.jsonl").write_text("\n".join(facts) + "\n")
    (tmp_path / "queries.jsonl").write_text("\n".join(queries) + "\n")
    with pytest.raises(ValueError, match=message):
        load_set(tmp_path)


# -- recall and ranking ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranked", "truth", "k", "expected"),
    [
        ([["a", "b"], ["b", "a"]], ["a", "a"], 1, 0.5),
        ([["a", "b"], ["b", "a"]], ["a", "a"], 2, 1.0),
        ([["c", "b", "a"]], ["a"], 2, 0.0),
        ([["c", "b", "a"]], ["a"], 5, 1.0),  # k past the ranking's end
        ([["a"], ["b"], ["c"], ["d"]], ["a", "x", "c", "x"], 1, 0.5),
        ([], [], 1, 0.0),
    ],
)
def test_recall_at_k(ranked: list[list[str]], truth: list[str], k: int, expected: float) -> None:
    assert recall_at_k(ranked, truth, k) == expected


def test_recall_at_k_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="k must"):
        recall_at_k([["a"]], ["a"], 0)
    with pytest.raises(ValueError, match="rankings"):
        recall_at_k([["a"]], ["a", "b"], 1)


def test_rank_is_best_first_and_ties_keep_fact_order() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    assert rank(scores, ["a", "b", "c"], 2) == [["b", "c"], ["a", "b"]]


# -- evaluate with fake embedders ------------------------------------------------------------


def one_hot_embedder(
    facts: list[Fact], queries: list[Query]
) -> tuple[Callable[[list[str]], np.ndarray], list[int]]:
    """An embedder that knows the answers: each text maps to the one-hot vector of its fact."""
    index = {f.id: i for i, f in enumerate(facts)}
    where = {f.text: index[f.id] for f in facts} | {q.q: index[q.fact] for q in queries}
    batches: list[int] = []

    def embed(texts: list[str]) -> np.ndarray:
        batches.append(len(texts))
        vectors = np.zeros((len(texts), len(facts)))
        for row, text in enumerate(texts):
            vectors[row, where[text]] = 3.0  # not unit length: evaluate() normalises
        return vectors

    return embed, batches


def test_an_embedder_that_knows_the_answers_scores_one() -> None:
    facts, queries = load_set(SET)
    embed, batches = one_hot_embedder(facts, queries)
    result = evaluate(embed, facts, queries)
    assert result["recall@1"] == result["recall@5"] == result["recall@10"] == 1.0
    assert result["hits@1"] == result["queries"] == len(queries)
    assert result["facts"] == result["dim"] == 300
    assert max(batches) <= MAX_BATCH
    assert sum(batches) == len(facts) + len(queries)


def test_a_constant_embedder_ranks_by_fact_order_only() -> None:
    facts = [Fact(f"f{i}", "p", (), f"fact {i}") for i in range(10)]
    queries = [Query(f"q{i}", f"f{i}") for i in range(10)]
    result = evaluate(lambda texts: np.ones((len(texts), 4)), facts, queries, ks=(1, 5))
    assert result["recall@1"] == 0.1
    assert result["recall@5"] == 0.5


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (lambda n: np.ones((n + 1, 4)), "shape"),
        (lambda n: np.ones(n), "shape"),
        (lambda n: np.full((n, 4), np.nan), "non-finite"),
    ],
)
def test_evaluate_refuses_a_broken_embedder(
    vectors: Callable[[int], np.ndarray], message: str
) -> None:
    facts = [Fact("f1", "p", (), "one")]
    queries = [Query("q1", "f1")]
    with pytest.raises(ValueError, match=message):
        evaluate(lambda texts: vectors(len(texts)), facts, queries)


# -- the lexical floor -----------------------------------------------------------------------


def test_bm25_finds_a_fact_by_its_own_words() -> None:
    docs = ["the router password is in the blue notebook", "the dog eats twice a day"]
    scores = bm25_scores(docs, ["blue notebook", "how often does the dog eat", "zebra"])
    assert scores.shape == (3, 2)
    assert scores[0].argmax() == 0 and scores[1].argmax() == 1
    assert not scores[2].any()  # no shared word, no score


def test_the_lexical_baseline_runs_on_the_set_and_stays_well_below_perfect() -> None:
    facts, queries = load_set(SET)
    result = evaluate_lexical(facts, queries)
    assert 0.0 < result["recall@1"] <= result["recall@5"] <= result["recall@10"] <= 1.0
    # The set's point is paraphrase: if word overlap alone found most facts, it would say
    # little about an embedder. (A property of the data, fixed by the files, not a timing.)
    assert result["recall@1"] < 0.6


# -- the /v1/embeddings client ---------------------------------------------------------------


def test_parse_embeddings_puts_vectors_back_in_input_order() -> None:
    answer = {"data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1.5, 0]}]}
    assert parse_embeddings(answer, 2).tolist() == [[1.5, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    "answer",
    [
        {"data": [{"index": 0, "embedding": [1.0]}]},  # one vector for two inputs
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": ["x"]}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": []}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 5, "embedding": [1.0]}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [float("inf")]}]},
        {"error": "no"},
        [1, 2],
    ],
)
def test_parse_embeddings_refuses_a_bad_answer(answer: object) -> None:
    with pytest.raises(ValueError):
        parse_embeddings(answer, 2)


@pytest.fixture
def fake_embeddings_server() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """An OpenAI-style /v1/embeddings that knows the set's answers (one-hot per fact) and
    records each request body. Answers in reverse order to exercise `index`."""
    facts, queries = load_set(SET)
    index = {f.id: i for i, f in enumerate(facts)}
    where = {f.text: index[f.id] for f in facts} | {q.q: index[q.fact] for q in queries}
    seen: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            data = []
            for i, text in enumerate(body["input"]):
                vector = [0.0] * len(facts)
                vector[where[text]] = 1.0
                data.append({"object": "embedding", "index": i, "embedding": vector})
            raw = json.dumps({"object": "list", "data": data[::-1]}).encode()
            self.send_response(200 if self.path == "/v1/embeddings" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output to pytest's

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_cli_scores_an_endpoint(
    fake_embeddings_server: tuple[str, list[dict[str, object]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, seen = fake_embeddings_server
    assert main(["--url", url, "--model", "fake-embedder", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scorer"] == "embeddings:fake-embedder"
    assert result["recall@1"] == 1.0
    assert all(body["model"] == "fake-embedder" for body in seen)
    sizes = [len(body["input"]) for body in seen if isinstance(body["input"], list)]
    assert len(sizes) == len(seen) and max(sizes) <= MAX_BATCH


def test_the_cli_lexical_needs_no_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lexical"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lexical-bm25: 300 facts")
    assert "recall@1" in out and "recall@5" in out
