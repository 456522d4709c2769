"""records.py: hostile input is refused with the field named; good input round-trips."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from covey.memory.records import (
    MAX_K,
    MAX_TAGS,
    MAX_TEXT_CHARS,
    Filters,
    MemoryInputError,
    NewMemory,
    check_k,
    check_min_score,
    is_memory_id,
    parse_filters,
    parse_new,
)


def test_a_full_memory_parses() -> None:
    got = parse_new(
        {
            "text": "  the build uses uv  ",
            "project": "covey-1.x",
            "tags": ["build", "tooling", "build"],
            "source": "agent",
            "confidence": 0.75,
            "pinned": True,
            "unknown": "ignored",
        }
    )
    assert got == NewMemory(
        "the build uses uv", "covey-1.x", ("build", "tooling"), "agent", 0.75, True
    )


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([], "memory"),
        ({}, "text"),
        ({"text": 5}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text"),
        ({"text": "bad \ud800 surrogate"}, "text"),
        ({"text": "t", "project": ""}, "project"),
        ({"text": "t", "project": "a b"}, "project"),
        ({"text": "t", "project": "../etc"}, "project"),  # '/' is not allowed
        ({"text": "t", "project": "p" * 65}, "project"),
        ({"text": "t", "project": ["p"]}, "project"),
        ({"text": "t", "tags": "one"}, "tags"),
        ({"text": "t", "tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, "tags"),
        ({"text": "t", "tags": [1]}, "tags"),
        ({"text": "t", "tags": [["nested"]]}, "tags"),
        ({"text": "t", "tags": [""]}, "tags"),
        ({"text": "t", "tags": ["x" * 65]}, "tags"),
        ({"text": "t", "tags": ["line\nbreak"]}, "tags"),
        ({"text": "t", "source": "s" * 257}, "source"),
        ({"text": "t", "source": None}, "source"),
        ({"text": "t", "confidence": math.nan}, "confidence"),
        ({"text": "t", "confidence": math.inf}, "confidence"),
        ({"text": "t", "confidence": 1.5}, "confidence"),
        ({"text": "t", "confidence": -0.1}, "confidence"),
        ({"text": "t", "confidence": "0.5"}, "confidence"),
        ({"text": "t", "confidence": True}, "confidence"),
        ({"text": "t", "pinned": "yes"}, "pinned"),
        ({"text": "t", "pinned": 1}, "pinned"),
    ],
)
def test_bad_memories_name_the_field(obj: Any, field: str) -> None:
    with pytest.raises(MemoryInputError) as err:
        parse_new(obj)
    assert err.value.field == field
    # The message never echoes the (possibly private, possibly huge) content.
    assert len(str(err.value)) < 200


def test_new_memory_checks_when_built_in_code_too() -> None:
    with pytest.raises(MemoryInputError):
        NewMemory("t", confidence=math.nan)
    with pytest.raises(MemoryInputError):
        NewMemory("t", tags=["list"])  # type: ignore[arg-type]


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=40),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=8,
    )
)
def test_any_json_object_parses_or_is_refused_cleanly(obj: dict[str, Any]) -> None:
    for parse in (parse_new, parse_filters):
        try:
            parse(obj)
        except MemoryInputError:
            pass


@given(
    text=st.text(min_size=1, max_size=200).filter(lambda t: t.strip() != ""),
    confidence=st.floats(min_value=0, max_value=1),
    tags=st.lists(st.text(alphabet="abcxyz-_", min_size=1, max_size=8), max_size=MAX_TAGS),
)
def test_valid_memories_parse(text: str, confidence: float, tags: list[str]) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        return
    got = parse_new({"text": text, "confidence": confidence, "tags": tags})
    assert got.text == text.strip()
    assert got.confidence == confidence
    assert got.tags == tuple(dict.fromkeys(tags))


def test_filters_parse() -> None:
    assert parse_filters({}) == Filters()
    assert parse_filters({"project": "a", "query": "ignored"}).projects == ("a",)
    got = parse_filters(
        {"project": ["a", "b", "a"], "tags": ["x"], "min_confidence": 0.5, "since": 1000}
    )
    assert got == Filters(("a", "b"), ("x",), 0.5, 1000.0)


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"project": 3}, "project"),
        ({"project": []}, "project"),
        ({"project": ["ok", "not ok"]}, "project"),
        ({"project": [f"p{i}" for i in range(65)]}, "project"),
        ({"tags": "x"}, "tags"),
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, "tags"),
        ({"min_confidence": math.nan}, "min_confidence"),
        ({"min_confidence": 2}, "min_confidence"),
        ({"since": -1}, "since"),
        ({"since": math.inf}, "since"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_filters_name_the_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(MemoryInputError) as err:
        parse_filters(obj)
    assert err.value.field == field


def test_k_min_score_and_ids() -> None:
    assert check_k(10) == 10
    for bad in (0, MAX_K + 1, True, 2.0, "3"):
        with pytest.raises(MemoryInputError):
            check_k(bad)
    assert check_min_score(0.2) == 0.2
    for bad_score in (math.nan, 1.5, None):
        with pytest.raises(MemoryInputError):
            check_min_score(bad_score)
    assert is_memory_id("mem_" + "0" * 24)
    assert not is_memory_id("mem_" + "0" * 23)
    assert not is_memory_id("mem_" + "G" * 24)
    assert not is_memory_id(7)
