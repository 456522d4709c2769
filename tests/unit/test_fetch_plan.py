"""The peer fetch's scheduling decisions, without any I/O."""

from __future__ import annotations

from covey.fetch.plan import Plan


def test_shared_queue_in_order_and_resume_skips_done() -> None:
    plan = Plan(5, ["a", "b"], done=[1, 3, 99])
    assert plan.done == {1, 3}
    assert [plan.next_for("a"), plan.next_for("b"), plan.next_for("a")] == [0, 2, 4]
    for i, s in ((0, "a"), (2, "b"), (4, "a")):
        assert plan.on_verified(i, s, 10)
    assert plan.finished and plan.next_for("a") is None
    assert plan.sources["a"].verified_bytes == 20


def test_bad_chunk_drops_source_and_requeues_first() -> None:
    plan = Plan(3, ["a", "b"])
    assert plan.next_for("a") == 0
    assert plan.next_for("b") == 1
    plan.on_bad(0, "a", "chunk 0 did not match")
    assert plan.dropped() == {"a": "chunk 0 did not match"}
    assert plan.next_for("a") is None  # dropped: nothing more for it
    assert plan.next_for("b") == 0  # the bad chunk comes back first
    assert plan.alive() == ["b"] and not plan.stuck


def test_errors_drop_after_max() -> None:
    plan = Plan(2, ["a", "b"], max_errors=2)
    i = plan.next_for("a")
    assert i is not None and not plan.on_error(i, "a", "timeout")
    i = plan.next_for("a")
    assert i == 0  # the failed chunk first
    assert plan.on_error(i, "a", "reset")
    assert "2 failures" in plan.dropped()["a"] and "reset" in plan.dropped()["a"]
    plan.drop("b", "refused")
    assert plan.stuck


def test_end_game_duplicates_one_slow_chunk_first_copy_wins() -> None:
    plan = Plan(2, ["a", "b", "c"])
    assert plan.next_for("a") == 0
    assert plan.next_for("b") == 1
    assert plan.on_verified(1, "b", 10)
    # Queue empty: b helps with a's chunk; c too; a fourth copy is not made.
    assert plan.next_for("b") == 0
    assert plan.next_for("c") is None  # at most two copies in flight
    assert plan.next_for("b") is None  # never the same chunk twice to one source
    assert plan.on_verified(0, "b", 10)
    assert not plan.on_verified(0, "a", 10)  # the late copy is ignored
    assert plan.finished
    assert plan.sources["a"].verified_bytes == 0


def test_failure_of_one_copy_does_not_requeue_while_another_is_in_flight() -> None:
    plan = Plan(1, ["a", "b"])
    assert plan.next_for("a") == 0
    assert plan.next_for("b") == 0  # end game copy
    plan.on_error(0, "a", "timeout")
    assert list(plan.queue) == []  # b still has it
    plan.on_error(0, "b", "timeout")
    assert list(plan.queue) == [0]


def test_no_sources_is_stuck_unless_finished() -> None:
    assert Plan(1, []).stuck
    assert not Plan(1, [], done=[0]).stuck
