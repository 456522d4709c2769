"""The ledger on a running node: receipts made, countersigned, kept and sent to the keeper.

The flow for one request node C relays to node P (the effects; the rules live in
receipts.py and chain.py):

1. C's relay gives the request a random id (`x-covey-request-id`) and, when the answer
   ended, remembers what it relayed: provider, model, token counts (`relayed`).
2. P's relay, when its answer to C ended, makes the receipt and signs it (`served`), then
   asks C to countersign it (POST /mesh/ledger/countersign). C countersigns only a receipt
   for a request it relayed to P, with the counts it saw, once.
3. Both keep the countersigned receipt in their own ledger; P sends it to the keeper (the
   mesh's creator, or the member its signed mesh policy designates; POST
   /mesh/ledger/receipts), which checks both signatures against the members' keys and keeps
   the mesh ledger. The keeper publishes balances in its record. When the keeper changes,
   every member sends the new one its receipts (handover.py).

A receipt C would not countersign stays `unconfirmed` at P and counts nowhere. Audits and
health probes make no receipt: probes are not measured, and an auditor never countersigns
(it relays nothing it would remember).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from covey.ledger.audit import inclusion_answer, receipts_of
from covey.ledger.chain import Ledger
from covey.ledger.checkpoint import parse_checkpoint
from covey.ledger.checkpoints import (
    CheckpointError,
    default_origin,
    leaf_hashes,
    load_checkpoint,
    replace_checkpoint,
    write_checkpoint,
)
from covey.ledger.receipts import (
    MAX_WIRE_BYTES,
    Observed,
    ReceiptRejected,
    SignedReceipt,
    consumer_countersign,
    new_receipt,
    provider_sign,
)
from covey.ledger.witness import Witness, accept_cosignature, consistency_answer
from covey.mesh.peer_transport import PeerError, PeerTransport, peer_of
from covey.mesh.records import NodeRecord
from covey.mesh.sealed import SealError, b64d, b64e

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.sqlite3"  # in the data dir
H_REQUEST_ID = "x-covey-request-id"
COUNTERSIGN_PATH = "/mesh/ledger/countersign"
KEEPER_PATH = "/mesh/ledger/receipts"
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_PENDING = 10_000  # relayed requests remembered for countersigning, at most
PENDING_S = 600.0  # ... and for this long
MAX_BALANCES = 1024  # members' balances in the keeper's record, at most
CALL_TIMEOUT_S = 10.0
# A receipt is settled this long after its answer ended, not in the same instant: that
# instant is when the answer's last bytes are still on their way to the client (all of a
# one-token answer), and settling costs both nodes ~2.5 ms of CPU (signatures and their
# checks, a signed call, two ledger writes). On the 2-core bench it made a one-token
# answer's time to first token through the mesh 0.5–0.9 ms longer (docs/bench.md, "The
# receipt, a moment later").
SETTLE_AFTER_S = 0.05


@dataclass
class Relayed:
    """A request this node (the consumer) relayed to a peer: `observed` is set when the
    answer has ended here (the provider may ask to countersign a moment before that)."""

    provider: str
    model_id: str
    at: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    observed: Observed | None = None


def request_id_of(headers: Any) -> str | None:
    """The request id a relaying peer sent, if it is well formed."""
    value = headers.get(H_REQUEST_ID, "")
    return value if isinstance(value, str) and REQUEST_ID.match(value) else None


class LedgerService:
    """This node's part in the ledger. `keeper` says whether this node keeps the mesh
    ledger now (the creator, or the member its mesh policy designates): a bool, or a
    callable asked each time; `facts(model_id)` gives a local model's (sha256, parameters in
    billions)."""

    def __init__(self, ledger: Ledger, mesh_id: str, identity: Any, transport: PeerTransport,
                 records: Callable[[], list[NodeRecord]], keeper: bool | Callable[[], bool],
                 keeper_record: Callable[[], NodeRecord | None],
                 facts: Callable[[str], tuple[str | None, float | None]],
                 clock: Callable[[], float] = time.time,
                 suspect: Callable[[str, str], bool] = lambda _node, _model: False,
                 data_dir: Path | None = None) -> None:
        self.ledger = ledger
        self.mesh_id = mesh_id
        self.identity = identity
        self.transport = transport
        self.records = records
        self._keeper = keeper if callable(keeper) else (lambda: keeper)
        self.keeper_record = keeper_record
        self.facts = facts
        self.clock = clock
        # This node's verification verdict (verify/): a provider it holds suspect for a
        # model earns nothing for it from this node while suspect.
        self.suspect = suspect
        self._pending: OrderedDict[str, Relayed] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        # The keeper's newest signed checkpoint (its record carries it to the witnesses);
        # on a member, its witness of the keeper's checkpoints (witness.py).
        self.latest_checkpoint = ""
        self.witness: Witness | None = None
        self.data_dir = data_dir  # where the checkpoint sink is (checkpoints.py)
        self.settle_after_s = SETTLE_AFTER_S
        self._stopping = asyncio.Event()  # set by `flush`: settle what waits, at once

    @property
    def keeper(self) -> bool:
        return self._keeper()

    async def send_receipt(self, record: NodeRecord, wire: bytes) -> None:
        """One countersigned receipt to the keeper `record` (PeerError if not taken)."""
        await self._post(record, KEEPER_PATH, wire)

    # --- the consumer's side -------------------------------------------------------------

    def expect(self, request_id: str, provider: str, model_id: str) -> None:
        """A request is about to be relayed to `provider` under this id."""
        now = self.clock()
        self._pending[request_id] = Relayed(provider, model_id, now)
        while self._pending and (len(self._pending) > MAX_PENDING
                                 or next(iter(self._pending.values())).at < now - PENDING_S):
            self._pending.popitem(last=False)

    def relayed(self, request_id: str, provider: str, model_id: str,
                prompt_tokens: int | None, completion_tokens: int, prompt_bytes: int) -> None:
        """Its answer has ended here: what was seen, to check the provider's receipt by."""
        pending = self._pending.get(request_id)
        if pending is None or pending.provider != provider:
            return
        if prompt_tokens is not None:
            pending.observed = Observed.from_usage(request_id, model_id, prompt_tokens,
                                                   completion_tokens)
        else:  # no usage: a token is at least one byte of the prompt, plus a template
            pending.observed = Observed.counted(request_id, model_id, completion_tokens,
                                                prompt_bytes + 256)
        pending.done.set()

    async def countersign(self, raw: bytes, caller: str) -> bytes:
        """The countersigned receipt for a provider's request (raises ReceiptRejected)."""
        signed = SignedReceipt.from_wire(raw)
        r = signed.receipt
        pending = self._pending.get(r.request_id)
        if pending is None or pending.provider != caller or r.provider != caller:
            raise ReceiptRejected("unknown_request", "no request with this id was relayed to "
                                                     "the caller (or it was settled already)")
        if r.mesh_id != self.mesh_id:
            raise ReceiptRejected("mismatch", "receipt is for another mesh")
        if self.suspect(caller, r.model_id):
            self._pending.pop(r.request_id, None)
            raise ReceiptRejected("suspect", "this node's audits hold the provider suspect "
                                             "for this model: no credits while they do")
        provider = self._record(caller)
        if provider is None:
            raise ReceiptRejected("unknown_provider", "no live record of the provider")
        # The provider asks as soon as its answer ended; ours may still be on its way here.
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await pending.done.wait()
        except TimeoutError:
            raise ReceiptRejected("not_received", "the answer did not reach this node "
                                                  "whole") from None
        assert pending.observed is not None
        if self._pending.pop(r.request_id, None) is None:  # once: a replay finds nothing
            raise ReceiptRejected("unknown_request", "settled already")
        out = consumer_countersign(signed, self.identity.key, pending.observed,
                                   provider.public_key)
        await asyncio.to_thread(self.ledger.add_receipt, out, provider_key=provider.public_key,
                                consumer_key=self._own_key(), now=self.clock())
        log.info("ledger: countersigned request %s… from %s (%.4f credits)",
                 r.request_id[:8], caller[:12], r.credits)
        return out.to_wire()

    # --- the provider's side -------------------------------------------------------------

    def served(self, request_id: str, consumer: str, model_id: str, prompt_tokens: int,
               completion_tokens: int, started_at: float, ended_at: float) -> None:
        """An answer for a peer ended: settle its receipt in the background, a moment later
        (SETTLE_AFTER_S)."""
        task = asyncio.get_running_loop().create_task(self._settle(
            request_id, consumer, model_id, prompt_tokens, completion_tokens, started_at,
            ended_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, request_id: str, consumer: str, model_id: str,
                      prompt_tokens: int, completion_tokens: int, started_at: float,
                      ended_at: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settle_after_s):
                await self._stopping.wait()
        sha, parameters = self.facts(model_id)
        receipt = new_receipt(mesh_id=self.mesh_id, request_id=request_id, model_id=model_id,
                              model_sha256=sha, consumer=consumer,
                              provider=self.identity.node_id, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, parameters_b=parameters,
                              started_at=started_at, ended_at=max(started_at, ended_at))
        signed = provider_sign(receipt, self.identity.key)
        record = self._record(consumer)
        confirmed = None
        if record is not None:
            try:
                answer = await self._post(record, COUNTERSIGN_PATH, signed.to_wire())
                confirmed = SignedReceipt.from_wire(answer)
                if confirmed.receipt != receipt:
                    raise ReceiptRejected("mismatch", "the consumer changed the receipt")
                await asyncio.to_thread(self.ledger.add_receipt, confirmed,
                                        provider_key=self._own_key(),
                                        consumer_key=record.public_key, now=self.clock())
            except (PeerError, ReceiptRejected, TimeoutError) as exc:
                log.info("ledger: request %s… not countersigned by %s (%s)", request_id[:8],
                         consumer[:12], getattr(exc, "reason", type(exc).__name__))
                confirmed = None
        if confirmed is None:  # kept, never counted
            await asyncio.to_thread(self.ledger.add_receipt, signed,
                                    provider_key=self._own_key(), now=self.clock())
            return
        await self.submit(confirmed)

    async def flush(self, timeout_s: float) -> None:
        """The node is stopping: settle the receipts still waiting their moment now, and
        wait up to `timeout_s` for every settling to end (before the ledger closes)."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def submit(self, signed: SignedReceipt) -> None:
        """Send a countersigned receipt to the keeper (or keep it, on the keeper)."""
        if self.keeper:
            return  # this node's own ledger is the mesh ledger: add_receipt did it
        record = self.keeper_record()
        if record is None:
            log.info("ledger: keeper unknown; receipt %s… kept here only",
                     signed.receipt.request_id[:8])
            return
        try:
            await self._post(record, KEEPER_PATH, signed.to_wire())
        except (PeerError, TimeoutError) as exc:
            log.info("ledger: keeper did not take receipt %s… (%s)",
                     signed.receipt.request_id[:8], type(exc).__name__)

    # --- the keeper's side ---------------------------------------------------------------

    def accept(self, raw: bytes, caller: str) -> str:
        """A member's countersigned receipt for the mesh ledger: both signatures checked
        against the members' published keys. Returns confirmed or duplicate."""
        if not self.keeper:
            raise ReceiptRejected("not_keeper", "this node does not keep the mesh ledger")
        signed = SignedReceipt.from_wire(raw)
        r = signed.receipt
        if caller not in (r.provider, r.consumer):
            raise ReceiptRejected("not_party", "only the provider or consumer may submit")
        if r.mesh_id != self.mesh_id:
            raise ReceiptRejected("mismatch", "receipt is for another mesh")
        provider, consumer = self._key_of(r.provider), self._key_of(r.consumer)
        if provider is None or consumer is None or signed.consumer_sig is None:
            raise ReceiptRejected("unconfirmed", "the keeper takes countersigned receipts "
                                                 "of live members only")
        added = self.ledger.add_receipt(signed, provider_key=provider, consumer_key=consumer,
                                        now=self.clock())
        return added.status

    def published_balances(self) -> dict[str, float]:
        """For the keeper's record: each member's balance (the most active first)."""
        if not self.keeper:
            return {}
        rows = sorted(self.ledger.balances().items(),
                      key=lambda kv: -(kv[1].given + kv[1].used))[:MAX_BALANCES]
        return {node: round(b.balance, 6) for node, b in rows}

    def standing(self, node_id: str) -> float | None:
        """A member's balance as the keeper published it (None when unknown)."""
        if self.keeper:
            b = self.ledger.balances().get(node_id)
            return b.balance if b is not None else None
        record = self.keeper_record()
        return record.ledger.get(node_id) if record is not None else None

    # --- checkpoints ---------------------------------------------------------------------

    async def checkpoints(self, data_dir: Path, interval_s: float,
                          sink_url: str | None = None) -> None:
        """Every `interval_s` (a day by default), a signed checkpoint of this node's ledger
        in data_dir/checkpoints when it grew (checkpoints.py), and POSTed to `sink_url` when
        one is set; runs until cancelled."""
        done = -1
        if self.keeper:
            with contextlib.suppress(CheckpointError):
                self.latest_checkpoint = await asyncio.to_thread(load_checkpoint, data_dir)
        while True:
            await asyncio.sleep(interval_s)
            size = (await asyncio.to_thread(self.ledger.head))[0]
            if size in (done, 0):  # nothing new, or nothing yet
                continue
            # The mesh ledger's name on the keeper, this node's own log's elsewhere; asked
            # each time, as the mesh policy may move the keeper.
            origin = await asyncio.to_thread(default_origin, data_dir, self.identity.node_id,
                                             keeper=self.keeper)
            try:
                text = await asyncio.to_thread(write_checkpoint, self.ledger, data_dir,
                                               self.identity.key, origin)
                if self.keeper:
                    self.latest_checkpoint = text
            except CheckpointError as exc:
                log.error("ledger: no checkpoint: %s", exc)
                continue
            done = size
            log.info("ledger: checkpoint of %d entries signed (%s)", size, origin)
            if sink_url:
                await send_checkpoint(sink_url, text)

    def consistency(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the keeper: a consistency proof between two of its tree sizes, for a witness.
        Blocking (reads every entry). Raises ReceiptRejected (400)."""
        if not self.keeper:
            raise ReceiptRejected("not_keeper", "this node does not keep the mesh ledger")
        try:
            return consistency_answer(leaf_hashes(self.ledger.entries()), body)
        except (ValueError, CheckpointError) as exc:
            raise ReceiptRejected("bad_sizes", str(exc)) from exc

    def inclusion(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the keeper: entries of the asked receipts with inclusion proofs, for a member
        auditing it (audit.py). Blocking (reads every entry). Raises ReceiptRejected."""
        if not self.keeper:
            raise ReceiptRejected("not_keeper", "this node does not keep the mesh ledger")
        entries = self.ledger.entries()
        try:
            return inclusion_answer(entries, leaf_hashes(entries), body.get("size"),
                                    body.get("request_ids"))
        except (ValueError, CheckpointError) as exc:
            raise ReceiptRejected("bad_request", str(exc)) from exc

    def own_receipts(self) -> dict[str, dict[str, Any]]:
        """This node's countersigned receipts (request id → receipt), for its audits."""
        return receipts_of(self.ledger.entries())

    def take_cosignature(self, body: dict[str, Any], caller: str) -> str:
        """On the keeper: a member's cosignature of one of its checkpoints, checked against
        the member's key and kept on that checkpoint in the sink. Blocking (files)."""
        if not self.keeper:
            raise ReceiptRejected("not_keeper", "this node does not keep the mesh ledger")
        size, line = body.get("size"), body.get("cosignature")
        key = self._key_of(caller)
        if not isinstance(size, int) or isinstance(size, bool) or key is None \
                or self.data_dir is None:
            raise ReceiptRejected("malformed", "body must be {\"size\", \"cosignature\"} "
                                               "from a live member")
        try:
            note = load_checkpoint(self.data_dir, size)
            raw_key = b64d(key)
        except (CheckpointError, SealError) as exc:
            raise ReceiptRejected("unknown_checkpoint", f"no checkpoint of {size} entries "
                                                        "here") from exc
        signed = accept_cosignature(note, line, self.mesh_id, caller, raw_key)
        if signed is None:
            raise ReceiptRejected("bad_cosignature", "not a cosignature of this checkpoint "
                                                     "by the caller's key")
        replace_checkpoint(self.data_dir, size, signed)
        if self.latest_checkpoint and size == _size_of(self.latest_checkpoint):
            self.latest_checkpoint = signed
        log.info("ledger: checkpoint of %d entries co-signed by %s", size, caller[:12])
        return "cosigned"

    # --- helpers -------------------------------------------------------------------------

    def _record(self, node_id: str) -> NodeRecord | None:
        return next((r for r in self.records() if r.node_id == node_id), None)

    def _key_of(self, node_id: str) -> str | None:
        if node_id == self.identity.node_id:
            return self._own_key()
        record = self._record(node_id)
        return record.public_key if record is not None else None

    def _own_key(self) -> str:
        return b64e(self.identity.public_bytes)

    async def _post(self, record: NodeRecord, path: str, body: bytes) -> bytes:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async with await self.transport.post(peer_of(record), path, body,
                                                 timeout_s=CALL_TIMEOUT_S,
                                                 max_bytes=MAX_WIRE_BYTES * 2) as r:
                answer = _json(await r.read())
                if r.status != 200:
                    error = answer.get("error")
                    code = error.get("code") if isinstance(error, dict) else None
                    raise PeerError("http", f"HTTP {r.status}", status=r.status,
                                    code=code[:64] if isinstance(code, str) else None,
                                    answer=answer)
                wire = answer.get("receipt")
                if not isinstance(wire, str):
                    return b""
                return wire.encode()


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


async def send_checkpoint(url: str, text: str, timeout_s: float = CALL_TIMEOUT_S) -> bool:
    """POST a checkpoint note to an HTTP sink. A failure is logged, never raised: the file
    sink has it, and the next checkpoint (which extends this one) is sent again."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, \
                s.post(url, data=text.encode(),
                       headers={"Content-Type": "text/plain; charset=utf-8"}) as r:
            if r.status < 300:
                return True
            log.warning("ledger: the checkpoint sink %s answered HTTP %d", url, r.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("ledger: the checkpoint sink %s did not take the checkpoint (%s)", url,
                    type(exc).__name__)
    return False


def _size_of(note: str) -> int | None:
    checkpoint = parse_checkpoint(note)
    return checkpoint.size if checkpoint else None


def ledger_status(service: object) -> dict[str, Any] | None:
    """The `ledger` section of /api/status: this node's ledger (on the keeper, the mesh's)
    and the balances the keeper publishes. None when this node keeps no ledger."""
    if not isinstance(service, LedgerService):
        return None
    record = None if service.keeper else service.keeper_record()
    return {"keeper": service.identity.node_id if service.keeper
            else (record.node_id if record else None),
            "local": {node: {"given": round(b.given, 6), "used": round(b.used, 6),
                             "balance": round(b.balance, 6)}
                      for node, b in service.ledger.balances().items()},
            "published": (service.published_balances() if service.keeper
                          else dict(record.ledger) if record else {}),
            "witness": (service.witness.status() if service.witness and not service.keeper
                        else None)}
