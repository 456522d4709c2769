"""A new keeper's ledger, rebuilt from the members' copies.

The mesh's creator keeps the mesh ledger unless its signed mesh policy designates another
member (`covey serve --ledger-keeper NODE_ID` on the creator; mesh/policy.py). When the keeper
a node knows changes (the policy named another member, or this node first learns who keeps
it), the node sends the new keeper every countersigned receipt it holds as a party, the same
POST a receipt takes when it is made. The keeper takes a receipt only from its provider or
consumer, checks both signatures and keeps one entry per request, so the union of the
members' copies rebuilds the mesh's history there, and a resend it already holds is a
duplicate, not a second entry.

What the old keeper alone held does not move: its grants (adjust entries) and receipts of
members that are gone. It keeps them in its own ledger, where `covey ledger verify` and its
checkpoints still vouch for them.

The keeper this node last synced with is kept in `<data dir>/ledger_keeper`, so a restart does
not send everything again, and a node that was offline during a change catches up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from covey.ledger.entries import Entry
from covey.ledger.receipts import SignedReceipt
from covey.mesh.peer_transport import PeerError
from covey.mesh.records import NodeRecord

log = logging.getLogger(__name__)

SYNCED_FILE = "ledger_keeper"  # in the data dir: the keeper this node's receipts reached
LATER_ROUNDS = 30  # rounds a receipt the keeper could not check yet is sent again
UNHEARD_ROUNDS = 12  # rounds without the keeper's record before this node says so


def party_receipts(entries: Sequence[Entry], node_id: str) -> list[bytes]:
    """The countersigned receipts (wire form) in `entries` that `node_id` is a party to,
    oldest first: the ones a keeper takes from it."""
    out: list[bytes] = []
    for e in entries:
        if e.kind != "earn" or not e.request_id:
            continue
        signed = SignedReceipt.model_validate(json.loads(e.body)["receipt"])
        r = signed.receipt
        if node_id in (r.provider, r.consumer) and signed.consumer_sig is not None:
            out.append(signed.to_wire())
    return out


class Handover:
    """Follows who keeps the mesh ledger and sends a new keeper this node's receipts.
    `post(record, wire)` sends one receipt (PeerError when the keeper did not take it)."""

    def __init__(self, node_id: str, data_dir: Path,
                 keeper_id: Callable[[], str | None],
                 keeper_record: Callable[[], NodeRecord | None],
                 entries: Callable[[], list[Entry]],
                 post: Callable[[NodeRecord, bytes], Awaitable[object]]) -> None:
        self.node_id = node_id
        self.path = data_dir / SYNCED_FILE
        self.keeper_id = keeper_id
        self.keeper_record = keeper_record
        self.entries = entries
        self.post = post
        self.synced: str | None = None
        self.later: list[bytes] = []  # receipts the keeper could not check yet
        self.later_rounds = 0
        self.unheard_rounds: dict[str, int] = {}  # keeper → rounds its record was missing

    def load(self) -> None:
        try:
            self.synced = self.path.read_text().strip() or None
        except OSError:
            self.synced = None

    async def run(self, interval_s: float) -> None:
        await asyncio.to_thread(self.load)
        while True:
            await self.step()
            await asyncio.sleep(interval_s)

    async def step(self) -> bool:
        """One look at the keeper; True when this node's receipts are with the current one."""
        keeper = self.keeper_id()
        if keeper is None:
            return False
        if keeper == self.synced:
            await self._send_later()
            return True
        if keeper != self.node_id:  # a keeper needs no copy of its own ledger
            record = self.keeper_record()
            if record is None or record.node_id != keeper:
                self._unheard(keeper)
                return False  # not reachable yet: asked again next round
            wires = party_receipts(await asyncio.to_thread(self.entries), self.node_id)
            later = await self._send(record, wires)
            if later is None:
                return False
            if wires:
                log.info("ledger: sent %d receipts to keeper %s (%d to send again)",
                         len(wires), record.name or keeper, len(later))
            self.later, self.later_rounds = later, LATER_ROUNDS
        previous, self.synced = self.synced, keeper
        await asyncio.to_thread(self.path.write_text, keeper)
        if previous is not None:
            log.info("ledger: the mesh ledger is kept by %s now (was %s)",
                     record_name(keeper, self.node_id), record_name(previous, self.node_id))
        return True

    def _unheard(self, keeper: str) -> None:
        """Say once when the keeper stays unheard: a creator's typo in --ledger-keeper, or a
        member that left, would otherwise keep every receipt on its two parties silently."""
        self.unheard_rounds[keeper] = rounds = self.unheard_rounds.get(keeper, 0) + 1
        if rounds == UNHEARD_ROUNDS:
            log.warning("ledger: the keeper %s is not among the members this node hears "
                        "from; receipts stay with their parties until it is (check the "
                        "creator's --ledger-keeper)", keeper)

    async def _send_later(self) -> None:
        """Receipts the keeper could not check yet (it did not know a party's key), again
        for a few rounds; after that they are left to the other party."""
        if not self.later:
            return
        record = self.keeper_record()
        if record is None:
            return
        later = await self._send(record, self.later)
        self.later_rounds -= 1
        if later is not None:
            self.later = later
        if self.later and self.later_rounds <= 0:
            log.info("ledger: keeper %s did not take %d receipts (a party unknown to it)",
                     record.name or record.node_id, len(self.later))
            self.later = []

    async def _send(self, record: NodeRecord, wires: list[bytes]) -> list[bytes] | None:
        """Send each receipt; those to send again later, or None when the keeper could not
        be reached (all of them again next round)."""
        later: list[bytes] = []
        for wire in wires:
            try:
                await self.post(record, wire)
            except PeerError as exc:
                if _unreachable(exc):
                    log.info("ledger: keeper %s did not take receipts yet (%s); sent again "
                             "next round", record.name or record.node_id, exc)
                    return None
                if exc.code == "unconfirmed":
                    later.append(wire)
                # anything else is refused for good (another mesh's, a conflict): not resent
            except TimeoutError:
                log.info("ledger: keeper %s timed out taking receipts; sent again next round",
                         record.name or record.node_id)
                return None
        return later


def _unreachable(exc: PeerError) -> bool:
    """No answer, a busy or failing keeper, or one that has not heard yet that it keeps the
    ledger (gossip reaches it a round after this node)."""
    return (exc.status is None or exc.status >= 500 or exc.status == 429
            or exc.code == "not_keeper")


def record_name(node_id: str, own: str) -> str:
    return "this node" if node_id == own else node_id
