"""router/budget.py: per-client and per-provider sliding windows, on a hand-driven clock."""

from __future__ import annotations

from covey.router.budget import MAX_CLIENTS, Budget


def test_a_client_spends_its_budget_and_it_refills_as_the_window_slides() -> None:
    b = Budget(per_client=2, window_s=3600.0)
    assert b.wait_s("c", "p", 0.0) is None
    b.spend("c", "p", 0.0)
    b.spend("c", "p", 100.0)
    assert b.wait_s("c", "p", 200.0) == 3400.0  # the first spend leaves the window then
    assert b.wait_s("other", "p", 200.0) is None  # another client has its own budget
    assert b.wait_s("c", "p", 3600.0) is None  # refilled by one
    b.spend("c", "p", 3600.0)
    assert b.wait_s("c", "p", 3650.0) == 50.0  # the 100 s one goes next


def test_a_providers_cap_binds_every_client() -> None:
    b = Budget(per_client=5, window_s=60.0, provider_caps={"p": 1, "q": None})
    b.spend("a", "p", 0.0)
    assert b.wait_s("b", "p", 1.0) == 59.0
    assert b.wait_s("b", "q", 1.0) is None  # q has no cap
    assert b.used("p", 1.0) == 1 and b.used("p", 61.0) == 0


def test_zero_means_never() -> None:
    assert Budget(per_client=0, window_s=60.0).wait_s("c", "p", 0.0) == 60.0
    assert Budget(per_client=5, window_s=60.0, provider_caps={"p": 0}).wait_s(
        "c", "p", 0.0) == 60.0


def test_a_refund_gives_the_request_back() -> None:
    b = Budget(per_client=1, window_s=60.0, provider_caps={"p": 1})
    b.spend("c", "p", 5.0)
    b.refund("c", "p", 5.0)
    assert b.wait_s("c", "p", 6.0) is None and b.used("p", 6.0) == 0


def test_many_clients_do_not_grow_it_without_bound() -> None:
    b = Budget(per_client=1, window_s=60.0)
    for i in range(MAX_CLIENTS + 10):
        b.spend(f"c{i}", "p", float(i) / 1000)
    assert len(b._clients) <= MAX_CLIENTS
