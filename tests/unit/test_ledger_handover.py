"""A new keeper of the mesh ledger gets each member's receipts (ledger/handover.py): sent once
per keeper, kept across a restart, again when the keeper was not ready, and receipts the
keeper could not check yet retried for a while, then left to the other party.

The keeper is a real LedgerService; `post` calls its `accept` as the peer API would."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from covey.ledger.handover import (
    LATER_ROUNDS,
    SYNCED_FILE,
    UNHEARD_ROUNDS,
    Handover,
    party_receipts,
)
from covey.ledger.receipts import ReceiptRejected, new_request_id
from covey.ledger.service import LedgerService
from covey.mesh.peer_transport import PeerError
from covey.mesh.records import NodeRecord
from tests.unit.test_ledger_service import (
    CONSUMER,
    IDS,
    PROVIDER,
    STRANGER,
    receipt_wire,
    record,
    service,
)


async def _countersigned(consumer: LedgerService, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        rid = new_request_id()
        consumer.expect(rid, IDS[PROVIDER], "m")
        consumer.relayed(rid, IDS[PROVIDER], "m", 9, 6, 100)
        await consumer.countersign(receipt_wire(rid), IDS[PROVIDER])
        ids.append(rid)
    return ids


class Keeper:
    """STRANGER keeping the mesh ledger; `refuse` answers the next posts with an error code."""

    def __init__(self, tmp_path: Path) -> None:
        self.service = service(STRANGER, tmp_path / "keeper", keeper=True)
        self.posts = 0
        self.refuse: list[tuple[int, str]] = []

    async def post(self, target: NodeRecord, wire: bytes) -> None:
        assert target.node_id == IDS[STRANGER]
        self.posts += 1
        if self.refuse:
            status, code = self.refuse.pop(0)
            raise PeerError("http", f"HTTP {status}", status=status, code=code,
                            answer={"error": {"code": code, "message": "no"}})
        try:
            await asyncio.to_thread(self.service.accept, wire, IDS[CONSUMER])
        except ReceiptRejected as exc:
            raise PeerError("http", "HTTP 400", status=400, code=exc.reason,
                            answer={"error": {"code": exc.reason, "message": str(exc)}}
                            ) from exc

    def earned(self) -> int:
        return sum(1 for e in self.service.ledger.entries() if e.kind == "earn")


def _handover(consumer: LedgerService, keeper: Keeper, tmp_path: Path,
              keeper_id: list[str | None]) -> Handover:
    return Handover(IDS[CONSUMER], tmp_path, lambda: keeper_id[0],
                    lambda: record(STRANGER) if keeper_id[0] == IDS[STRANGER] else None,
                    consumer.ledger.entries, keeper.post)


async def test_a_new_keeper_gets_every_receipt_once_and_a_restart_sends_none(
        tmp_path: Path) -> None:
    (tmp_path / "keeper").mkdir()
    consumer, keeper = service(CONSUMER, tmp_path), Keeper(tmp_path)
    ids = await _countersigned(consumer, 3)
    who: list[str | None] = [None]
    handover = _handover(consumer, keeper, tmp_path, who)
    assert not await handover.step()  # nobody known to keep it yet
    who[0] = IDS[STRANGER]
    assert await handover.step()
    assert keeper.earned() == 3 and keeper.posts == 3
    assert sorted(e.request_id for e in keeper.service.ledger.entries()
                  if e.kind == "earn") == sorted(ids)
    assert (tmp_path / SYNCED_FILE).read_text() == IDS[STRANGER]
    assert await handover.step() and keeper.posts == 3  # synced: nothing sent again
    again = _handover(consumer, keeper, tmp_path, who)
    again.load()
    assert await again.step() and keeper.posts == 3  # a restart remembers the keeper
    # Back to this node keeping it: nothing to send to itself.
    who[0] = IDS[CONSUMER]
    assert await again.step() and keeper.posts == 3
    assert (tmp_path / SYNCED_FILE).read_text() == IDS[CONSUMER]


async def test_a_keeper_not_ready_gets_them_next_round(tmp_path: Path) -> None:
    (tmp_path / "keeper").mkdir()
    consumer, keeper = service(CONSUMER, tmp_path), Keeper(tmp_path)
    await _countersigned(consumer, 2)
    handover = _handover(consumer, keeper, tmp_path, [IDS[STRANGER]])
    keeper.refuse = [(400, "not_keeper")]  # it has not heard the policy yet
    assert not await handover.step()
    assert not (tmp_path / SYNCED_FILE).exists() and keeper.earned() == 0
    keeper.refuse = [(503, "busy")]
    assert not await handover.step()
    assert await handover.step() and keeper.earned() == 2


async def test_receipts_the_keeper_cannot_check_yet_are_retried_then_left(
        tmp_path: Path) -> None:
    (tmp_path / "keeper").mkdir()
    consumer, keeper = service(CONSUMER, tmp_path), Keeper(tmp_path)
    await _countersigned(consumer, 2)
    handover = _handover(consumer, keeper, tmp_path, [IDS[STRANGER]])
    keeper.refuse = [(400, "unconfirmed")]  # it does not know a party's key yet
    assert await handover.step()
    assert keeper.earned() == 1 and len(handover.later) == 1
    await handover.step()
    assert keeper.earned() == 2 and handover.later == []
    # One it never takes is sent for LATER_ROUNDS rounds, then left to the other party.
    await _countersigned(consumer, 1)
    handover.synced = None
    keeper.refuse = [(400, "duplicate")] * 2 + [(400, "unconfirmed")] * (LATER_ROUNDS + 1)
    assert await handover.step()
    posts = keeper.posts
    for _ in range(LATER_ROUNDS + 5):
        await handover.step()
    assert handover.later == [] and keeper.posts == posts + LATER_ROUNDS


async def test_only_receipts_this_node_is_a_party_to(tmp_path: Path) -> None:
    (tmp_path / "keeper").mkdir()
    consumer, keeper = service(CONSUMER, tmp_path), Keeper(tmp_path)
    await _countersigned(consumer, 2)
    await _handover(consumer, keeper, tmp_path, [IDS[STRANGER]]).step()
    entries = keeper.service.ledger.entries()
    assert len(party_receipts(entries, IDS[CONSUMER])) == 2
    assert len(party_receipts(entries, IDS[PROVIDER])) == 2
    assert party_receipts(entries, IDS[STRANGER]) == []  # the keeper holds them, party to none


async def test_a_keeper_never_heard_from_is_named_once(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A typo in the creator's --ledger-keeper: no such member ever shows up."""
    (tmp_path / "keeper").mkdir()
    consumer, keeper = service(CONSUMER, tmp_path), Keeper(tmp_path)
    handover = Handover(IDS[CONSUMER], tmp_path, lambda: "b" * 16, lambda: None,
                        consumer.ledger.entries, keeper.post)
    with caplog.at_level(logging.WARNING, logger="covey.ledger.handover"):
        for _ in range(UNHEARD_ROUNDS * 2):
            assert not await handover.step()
    named = [r for r in caplog.records if "b" * 16 in r.getMessage()]
    assert len(named) == 1 and "--ledger-keeper" in named[0].getMessage()
