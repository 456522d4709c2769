"""engine/remote.py: parsing an attached backend's `/models` answer (validated and capped)."""

from __future__ import annotations

import pytest

from covey.engine.remote import MAX_ID_LENGTH, MAX_MODELS, parse_model_list


def _ids(*ids: object) -> dict[str, object]:
    return {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}


@pytest.mark.parametrize(("body", "expected"), [
    (_ids("a", "b"), ("a", "b")),
    (_ids("b", "a"), ("b", "a")),  # order kept
    ({"data": []}, ()),
    (_ids("a", "a", "b", "a"), ("a", "b")),  # duplicates dropped
    (_ids("a", "x" * (MAX_ID_LENGTH + 1)), ("a",)),  # overlong id dropped
    (_ids("x" * MAX_ID_LENGTH), ("x" * MAX_ID_LENGTH,)),
    (_ids("", "a"), ("a",)),  # empty id dropped
    (_ids(3, None, "a"), ("a",)),  # non-string ids dropped
    ({"data": ["junk", None, {"name": "no id"}, {"id": "a"}]}, ("a",)),
    ({"data": [{"id": "a"}], "extra": 1}, ("a",)),
])
def test_model_list(body: object, expected: tuple[str, ...]) -> None:
    assert parse_model_list(body) == expected


@pytest.mark.parametrize("body", [None, [], "x", {}, {"data": "x"}, {"data": None},
                                  {"data": {"id": "a"}}])
def test_not_a_model_list(body: object) -> None:
    with pytest.raises(ValueError, match="did not return an OpenAI model list"):
        parse_model_list(body)


def test_capped_at_max_models() -> None:
    ids = parse_model_list(_ids(*(f"m{i}" for i in range(4 * MAX_MODELS))))
    assert ids == tuple(f"m{i}" for i in range(MAX_MODELS))
