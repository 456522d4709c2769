"""The ledger on a node: what the consumer countersigns and what the keeper accepts.

Both ends are driven directly (no network: the transport is never called on these paths)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.ledger.chain import Ledger
from covey.ledger.receipts import (
    PROVIDER_DOMAIN,
    ReceiptRejected,
    SignedReceipt,
    new_receipt,
    new_request_id,
    provider_sign,
)
from covey.ledger.service import LedgerService
from covey.mesh.identity import Identity, node_id_for
from covey.mesh.records import NodeRecord
from covey.mesh.sealed import b64e, public_bytes
from covey.metrics.export import registry_for, render
from covey.router.table import ModelTable

MESH = "mtestmesh0000000"
T0 = 1_800_000_000.0
KEYS = [Ed25519PrivateKey.generate() for _ in range(3)]
IDS = [node_id_for(public_bytes(k)) for k in KEYS]
CONSUMER, PROVIDER, STRANGER = 0, 1, 2


def record(i: int) -> NodeRecord:
    return NodeRecord.model_validate({
        "protocol": 1, "mesh_id": MESH, "node_id": IDS[i],
        "public_key": b64e(public_bytes(KEYS[i])), "seq": 1, "issued_at": T0,
        "expires_at": T0 + 60})


def service(i: int, tmp_path: Path, keeper: bool = False) -> LedgerService:
    return LedgerService(Ledger(tmp_path / f"{i}.sqlite3"), MESH, Identity(KEYS[i], IDS[i]),
                         transport=None,  # type: ignore[arg-type]
                         records=lambda: [record(j) for j in range(3) if j != i],
                         keeper=keeper, keeper_record=lambda: None,
                         facts=lambda _m: (None, 0.27), clock=lambda: T0)


def receipt_wire(request_id: str, completion: int = 6, provider: int = PROVIDER,
                 key: int | None = None, **kw: Any) -> bytes:
    receipt = new_receipt(mesh_id=kw.get("mesh", MESH), request_id=request_id, model_id="m",
                          model_sha256=None, consumer=IDS[CONSUMER], provider=IDS[provider],
                          prompt_tokens=9, completion_tokens=completion, parameters_b=0.27,
                          started_at=T0, ended_at=T0 + 1)
    if key is not None:  # signed by another key than the named provider's: a forgery
        sig = KEYS[key].sign(PROVIDER_DOMAIN + b"\x00" + receipt.signing_bytes())
        return SignedReceipt(receipt=receipt, provider_sig=b64e(sig)).to_wire()
    return provider_sign(receipt, KEYS[provider]).to_wire()


@pytest.fixture
def consumer(tmp_path: Path) -> Iterator[LedgerService]:
    s = service(CONSUMER, tmp_path)
    yield s
    s.ledger.close()


async def test_a_relayed_request_is_countersigned_once(consumer: LedgerService) -> None:
    rid = new_request_id()
    consumer.expect(rid, IDS[PROVIDER], "m")
    # The provider may ask before the answer's end reached the consumer: it waits for it.
    ask = asyncio.ensure_future(consumer.countersign(receipt_wire(rid), IDS[PROVIDER]))
    await asyncio.sleep(0)
    assert not ask.done()
    consumer.relayed(rid, IDS[PROVIDER], "m", 9, 6, 100)
    wire = await ask
    assert b"consumer_sig" in wire
    assert consumer.ledger.balance(IDS[CONSUMER]).used > 0
    with pytest.raises(ReceiptRejected) as replay:  # a replayed receipt finds nothing
        await consumer.countersign(receipt_wire(rid), IDS[PROVIDER])
    assert replay.value.reason == "unknown_request"


async def test_a_provider_held_suspect_earns_nothing_from_this_node(tmp_path: Path) -> None:
    consumer = service(CONSUMER, tmp_path)
    consumer.suspect = lambda node, model: node == IDS[PROVIDER] and model == "m"
    rid = new_request_id()
    consumer.expect(rid, IDS[PROVIDER], "m")
    consumer.relayed(rid, IDS[PROVIDER], "m", 9, 6, 100)
    with pytest.raises(ReceiptRejected) as refused:
        await consumer.countersign(receipt_wire(rid), IDS[PROVIDER])
    assert refused.value.reason == "suspect" and consumer.ledger.entries() == []
    consumer.ledger.close()


@pytest.mark.parametrize(("case", "reason"), [
    ("never relayed", "unknown_request"),
    ("other caller", "unknown_request"),
    ("more tokens than seen", "count_mismatch"),
    ("forged signature", "bad_signature"),
    ("other mesh", "mismatch"),
])
async def test_receipts_the_consumer_refuses(consumer: LedgerService, case: str,
                                             reason: str) -> None:
    rid = new_request_id()
    if case != "never relayed":
        consumer.expect(rid, IDS[PROVIDER], "m")
        consumer.relayed(rid, IDS[PROVIDER], "m", 9, 6, 100)
    wire = receipt_wire(rid, completion=60 if case == "more tokens than seen" else 6,
                        key=STRANGER if case == "forged signature" else None,
                        mesh="mothermesh000000" if case == "other mesh" else MESH)
    caller = IDS[STRANGER] if case == "other caller" else IDS[PROVIDER]
    with pytest.raises(ReceiptRejected) as refused:
        await consumer.countersign(wire, caller)
    assert refused.value.reason == reason
    assert consumer.ledger.entries() == []


async def test_the_keeper_takes_countersigned_receipts_from_a_party_once(
        consumer: LedgerService, tmp_path: Path) -> None:
    keeper = service(STRANGER, tmp_path, keeper=True)
    rid = new_request_id()
    with pytest.raises(ReceiptRejected) as unconfirmed:  # provider-signed only
        keeper.accept(receipt_wire(rid), IDS[PROVIDER])
    assert unconfirmed.value.reason == "unconfirmed"
    consumer.expect(rid, IDS[PROVIDER], "m")
    consumer.relayed(rid, IDS[PROVIDER], "m", 9, 6, 100)
    wire = await consumer.countersign(receipt_wire(rid), IDS[PROVIDER])
    with pytest.raises(ReceiptRejected) as outsider:
        keeper.accept(wire, IDS[STRANGER])
    assert outsider.value.reason == "not_party"
    assert keeper.accept(wire, IDS[PROVIDER]) == "confirmed"
    assert keeper.accept(wire, IDS[CONSUMER]) == "duplicate"  # both parties may send it
    balances = keeper.published_balances()
    assert balances[IDS[PROVIDER]] == -balances[IDS[CONSUMER]] > 0
    assert keeper.standing(IDS[PROVIDER]) == pytest.approx(balances[IDS[PROVIDER]])
    # /metrics shows them too.
    text = render(registry_for(ModelTable(), None, lambda: keeper)).decode()
    assert f'covey_ledger_credits{{kind="given",node="{IDS[PROVIDER]}"}}' in text
    keeper.ledger.close()


def countersigned_by(consumer: LedgerService, provider: LedgerService) -> list[float]:
    """`provider`'s calls go straight to `consumer`'s countersigning; the loop times of its
    calls (a list that grows)."""
    loop = asyncio.get_running_loop()
    asked_at: list[float] = []

    async def post(_record: NodeRecord, path: str, body: bytes) -> bytes:
        asked_at.append(loop.time())
        assert path == "/mesh/ledger/countersign"
        return await consumer.countersign(body, IDS[PROVIDER])

    provider._post = post  # type: ignore[method-assign]
    return asked_at


def relayed_and_served(consumer: LedgerService, provider: LedgerService) -> None:
    rid = new_request_id()
    consumer.expect(rid, IDS[PROVIDER], "m")
    consumer.relayed(rid, IDS[PROVIDER], "m", 9, 6, 100)
    provider.served(rid, IDS[CONSUMER], "m", 9, 6, T0, T0 + 1)


async def test_a_receipt_is_settled_a_moment_after_its_answer_ended(
        consumer: LedgerService, tmp_path: Path) -> None:
    """Settling costs both nodes a few ms of CPU: not in the instant the answer's last bytes
    are on their way to the client (docs/bench.md, "The receipt, a moment later")."""
    provider = service(PROVIDER, tmp_path)
    asked_at = countersigned_by(consumer, provider)
    ended = asyncio.get_running_loop().time()
    relayed_and_served(consumer, provider)
    for _ in range(10):  # the settling task's first steps, had it not waited
        await asyncio.sleep(0)
    assert asked_at == []
    async with asyncio.timeout(10):  # the settling task: the wait, the call, both writes
        await asyncio.gather(*provider._tasks)
    assert asked_at[0] - ended >= provider.settle_after_s - 0.001
    assert provider.ledger.unconfirmed() == []  # countersigned, in both ledgers
    assert provider.ledger.balance(IDS[PROVIDER]).given > 0
    assert consumer.ledger.balance(IDS[CONSUMER]).used > 0
    provider.ledger.close()


async def test_a_stopping_node_settles_its_waiting_receipts_at_once(
        consumer: LedgerService, tmp_path: Path) -> None:
    provider = service(PROVIDER, tmp_path)
    provider.settle_after_s = 3600.0  # the wait alone would outlast the test
    asked_at = countersigned_by(consumer, provider)
    relayed_and_served(consumer, provider)
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await provider.flush(10)
    assert len(asked_at) == 1
    assert provider.ledger.balance(IDS[PROVIDER]).given > 0
    provider.ledger.close()
