"""Members witness the keeper's checkpoints, so a keeper cannot quietly rewrite the mesh
ledger or show two histories (C2SP tlog-witness, cut to the size of a mesh).

The keeper (the mesh's creator, or the member its mesh policy designates) publishes its
newest signed checkpoint of the mesh ledger in its record (`ledger_checkpoint`). Every other
member:

1. checks the keeper's signature on it (the keeper's node key, origin
   `covey.mesh/<mesh id>/ledger`);
2. asks the keeper for a consistency proof from the checkpoint it witnessed last
   (POST /mesh/ledger/consistency) and checks it (RFC 9162): a keeper that rewrote history
   cannot give one;
3. co-signs it (C2SP tlog-cosignature, cosignature/v1) and sends the line to the keeper
   (POST /mesh/ledger/cosign), which keeps it on that checkpoint in its sink;
4. publishes the checkpoint it witnessed in its own record (`ledger_witnessed`).

A member that meets another member's witnessed checkpoint in gossip compares the two: the
same size with another root, or two sizes the keeper cannot prove consistent, means the
keeper showed two histories (a split view). That is logged as an error, named in
/api/status, and never resolved silently. The judgments are pure (`judge`, `compare`); the
calls are the thin `Witness` below.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from covey.ledger import audit, merkle
from covey.ledger.checkpoint import (
    Checkpoint,
    cosign,
    verify_checkpoint,
    verify_cosignature,
)
from covey.ledger.checkpoints import write_note
from covey.mesh.peer_transport import PeerError, PeerTransport, call_json, peer_of
from covey.mesh.records import NodeRecord
from covey.mesh.sealed import SealError, b64d

log = logging.getLogger(__name__)

CONSISTENCY_PATH = "/mesh/ledger/consistency"
INCLUSION_PATH = "/mesh/ledger/inclusion"
COSIGN_PATH = "/mesh/ledger/cosign"
WITNESSED_FILE = "witnessed.note"  # in <data dir>/checkpoints: the last one this node checked
MAX_NOTE = 4096
MAX_PROOF = 64  # hashes in a consistency proof: 2·log2(size) is far below this
CALL_TIMEOUT_S = 10.0

Verdict = Literal["first", "same", "older", "consistent", "fork", "inconsistent",
                  "need_proof"]


def mesh_origin(mesh_id: str) -> str:
    """The mesh ledger's log name (checkpoints.default_origin on the keeper)."""
    return f"covey.mesh/{mesh_id}/ledger"


def witness_name(mesh_id: str, node_id: str) -> str:
    """The key name a member's cosignatures carry."""
    return f"covey.mesh/{mesh_id}/witness/{node_id}"


def judge(last: Checkpoint | None, new: Checkpoint, proof: Sequence[bytes] | None
          ) -> Verdict:
    """What the keeper's `new` checkpoint is, against the `last` one this member witnessed
    (`proof`: the keeper's consistency proof from last to new, once asked for)."""
    if last is None or last.size == 0:  # every tree extends the empty one
        return "first"
    if new.size == last.size:
        return "same" if new.root == last.root else "fork"
    if new.size < last.size:
        return "older"  # a record from before the last one: gossip is not ordered
    if proof is None:
        return "need_proof"
    return ("consistent" if merkle.verify_consistency(last.size, new.size, last.root,
                                                      new.root, proof) else "inconsistent")


def compare(mine: Checkpoint, theirs: Checkpoint, proof: Sequence[bytes] | None
            ) -> Literal["agree", "fork", "need_proof"]:
    """Two members' witnessed checkpoints: one history, or two? (`proof`: the keeper's
    consistency proof from the smaller to the larger.)"""
    if mine.size == theirs.size:
        return "agree" if mine.root == theirs.root else "fork"
    if min(mine.size, theirs.size) == 0:
        return "agree"
    if proof is None:
        return "need_proof"
    small, large = sorted((mine, theirs), key=lambda c: c.size)
    return ("agree" if merkle.verify_consistency(small.size, large.size, small.root,
                                                 large.root, proof) else "fork")


def parse_proof(answer: object) -> list[bytes] | None:
    """The keeper's `{"proof": [base64, ...]}`, bounded; None when malformed."""
    raw = answer.get("proof") if isinstance(answer, dict) else None
    if not isinstance(raw, list) or len(raw) > MAX_PROOF:
        return None
    try:
        out = [base64.b64decode(h, validate=True) for h in raw if isinstance(h, str)]
    except ValueError:
        return None
    return out if len(out) == len(raw) and all(len(h) == 32 for h in out) else None


@dataclass
class View:
    text: str
    checkpoint: Checkpoint


class Witness:
    """A member's witness: checks the keeper's checkpoints and compares views in gossip."""

    def __init__(self, mesh_id: str, identity: Any, transport: PeerTransport,
                 keeper_record: Callable[[], NodeRecord | None],
                 records: Callable[[], list[NodeRecord]], data_dir: Path,
                 clock: Callable[[], float] = time.time,
                 own_receipts: Callable[[], dict[str, dict[str, Any]]] = dict) -> None:
        self.mesh_id = mesh_id
        self.identity = identity
        self.transport = transport
        self.keeper_record = keeper_record
        self.records = records
        self.path = data_dir / "checkpoints" / WITNESSED_FILE
        self.clock = clock
        self.keeper_id: str | None = None  # the keeper `last` is a checkpoint of
        self.last: View | None = None
        self.cosigned = 0
        self.unsent = False  # the last witnessed checkpoint's cosignature is yet to reach it
        self.problem: str | None = None
        self._compared: dict[str, tuple[int, bytes]] = {}  # peer → the view found to agree
        # Auditing the keeper against this member's own receipts (audit.py); blocking reads.
        self.own_receipts = own_receipts
        self.findings: dict[str, audit.Finding] = {}
        self._audited_at = -1  # the witnessed size the last audit ran against

    def load(self, keeper: NodeRecord) -> None:
        """Start witnessing `keeper`: the checkpoint this node witnessed last, kept across
        restarts, if that keeper signed it. Another keeper's (the mesh policy designated a
        new one), or a damaged file, is set aside: the new keeper's first checkpoint starts
        afresh. Blocking (reads the file)."""
        self.keeper_id = keeper.node_id
        self.last, self.unsent, self._compared = None, False, {}
        self.findings, self._audited_at = {}, -1
        try:
            text = self.path.read_text()
        except OSError:
            return
        key = _key(keeper)
        checkpoint = (verify_checkpoint(text, mesh_origin(self.mesh_id), key)
                      if key is not None else None)
        if checkpoint is not None:
            self.last = View(text, checkpoint)

    def published(self) -> str:
        """For this member's record: the keeper checkpoint it witnessed last."""
        return self.last.text if self.last else ""

    def status(self) -> dict[str, Any]:
        c = self.last.checkpoint if self.last else None
        return {"witnessed": {"size": c.size, "root": base64.b64encode(c.root).decode()}
                if c else None, "cosigned": self.cosigned, "problem": self.problem,
                "audit": _count(self.findings.values())}

    async def run(self, interval_s: float) -> None:
        while True:
            await self.step()
            await asyncio.sleep(interval_s)

    async def step(self) -> None:
        record = self.keeper_record()  # None on the keeper itself: it witnesses nobody
        key = _key(record)
        if record is None or key is None:
            return
        if record.node_id != self.keeper_id:
            await asyncio.to_thread(self.load, record)
        if not record.ledger_checkpoint:
            return
        if self.last is None or record.ledger_checkpoint != self.last.text:
            await self._witness(record, key)
        if self.unsent and self.last is not None:
            await self._cosign(record, self.last.checkpoint)
        await self._compare_views(record, key)
        if self.last is not None and self.last.checkpoint.size != self._audited_at:
            await self._audit(record, self.last.checkpoint)

    async def _witness(self, keeper: NodeRecord, key: bytes) -> None:
        text = keeper.ledger_checkpoint
        new = verify_checkpoint(text, mesh_origin(self.mesh_id), key)
        if new is None:
            self._alarm(f"the keeper's record carries a checkpoint it did not sign for "
                        f"{mesh_origin(self.mesh_id)}")
            return
        last = self.last.checkpoint if self.last else None
        verdict = judge(last, new, None)
        if verdict == "need_proof" and last is not None:
            proof = await self._proof(keeper, last.size, new.size)
            if proof is None:
                return  # the keeper did not answer: asked again next round
            verdict = judge(last, new, proof)
        if verdict in ("fork", "inconsistent"):
            assert last is not None
            how = ("does not extend" if verdict == "inconsistent"
                   else "is another history than")
            self._alarm(f"the keeper rewrote the mesh ledger: its checkpoint of {new.size} "
                        f"entries {how} the one of {last.size} this node witnessed")
            return
        if verdict in ("older", "same"):
            return
        self.last = View(text, new)
        self.unsent = True
        await asyncio.to_thread(write_note, self.path, text)

    async def _cosign(self, keeper: NodeRecord, checkpoint: Checkpoint) -> None:
        """Send the keeper this member's cosignature of `checkpoint`; kept for the next round
        when the keeper does not take it (it may not know this member's record yet)."""
        line = cosign(checkpoint.body, witness_name(self.mesh_id, self.identity.node_id),
                      self.identity.key, int(self.clock()))
        try:
            await call_json(self.transport, peer_of(keeper), COSIGN_PATH,
                            {"size": checkpoint.size, "cosignature": line}, CALL_TIMEOUT_S)
        except PeerError as exc:
            log.info("ledger: the keeper took no cosignature yet: %s", exc)
            return
        self.unsent = False
        self.cosigned += 1
        log.info("ledger: witnessed and co-signed the keeper's checkpoint of %d entries",
                 checkpoint.size)

    async def _compare_views(self, keeper: NodeRecord, key: bytes) -> None:
        if self.last is None:
            return
        mine = self.last.checkpoint
        for record in self.records():
            text = record.ledger_witnessed
            if not text or record.node_id == keeper.node_id or text == self.last.text:
                continue
            theirs = verify_checkpoint(text, mesh_origin(self.mesh_id), key)
            if theirs is None or self._compared.get(record.node_id) == (theirs.size,
                                                                        theirs.root):
                continue
            verdict = compare(mine, theirs, None)
            if verdict == "need_proof":
                small, large = sorted((mine.size, theirs.size))
                proof = await self._proof(keeper, small, large)
                if proof is None:
                    continue
                verdict = compare(mine, theirs, proof)
            if verdict == "fork":
                self._alarm(f"split view: the keeper signed a checkpoint of {theirs.size} "
                            f"entries for {record.name or record.node_id[:12]} that is not "
                            f"the history of {mine.size} entries it showed this node")
                continue
            self._compared[record.node_id] = (theirs.size, theirs.root)

    async def _audit(self, keeper: NodeRecord, witnessed: Checkpoint) -> None:
        """Check some of this member's receipts in the keeper's tree it witnessed: those
        never checked first, then those missing or unproven before."""
        if witnessed.size == 0:
            return
        mine = await asyncio.to_thread(self.own_receipts)
        order = sorted(mine, key=lambda r: (r in self.findings, self.findings.get(r) != "missing"))
        batch = [r for r in order if self.findings.get(r) != "included"][:audit.MAX_IDS]
        self._audited_at = witnessed.size
        if not batch:
            return
        try:
            answer = await call_json(self.transport, peer_of(keeper), INCLUSION_PATH,
                                     {"size": witnessed.size, "request_ids": batch},
                                     CALL_TIMEOUT_S, max_bytes=4 * 1024 * 1024)
        except PeerError as exc:
            log.info("ledger: the keeper answered no audit: %s", exc)
            self._audited_at = -1  # asked again next round
            return
        found = audit.check({r: mine[r] for r in batch}, answer, witnessed.size,
                            witnessed.root)
        self.findings.update(found)
        altered = sorted(r for r, f in found.items() if f == "altered")
        if altered:
            self._alarm(f"the keeper's ledger holds {len(altered)} of this node's receipts "
                        f"altered (request {altered[0][:8]}… and others): not what both "
                        "parties signed")
        else:
            log.info("ledger: audited %d receipts in the keeper's tree of %d entries: %s",
                     len(found), witnessed.size,
                     ", ".join(f"{n} {f}" for f, n in _count(found.values()).items()))

    async def _proof(self, keeper: NodeRecord, old: int, new: int) -> list[bytes] | None:
        try:
            answer = await call_json(self.transport, peer_of(keeper), CONSISTENCY_PATH,
                                     {"old_size": old, "new_size": new}, CALL_TIMEOUT_S)
        except PeerError as exc:
            if exc.kind == "http" and exc.status == 409:
                self._alarm(f"the keeper cannot prove its checkpoint of {new} entries "
                            f"extends the one of {old}: {exc}")
            else:
                log.warning("ledger: no consistency proof from the keeper: %s", exc)
            return None
        proof = parse_proof(answer)
        if proof is None:
            self._alarm("the keeper answered a malformed consistency proof")
        return proof

    def _alarm(self, problem: str) -> None:
        if problem != self.problem:
            log.error("ledger: %s", problem)
        self.problem = problem


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _key(record: NodeRecord | None) -> bytes | None:
    if record is None:
        return None
    try:
        key = b64d(record.public_key)
    except SealError:
        return None
    return key if len(key) == 32 else None


# --- the keeper's side ---------------------------------------------------------------------


def consistency_answer(leaves: Sequence[bytes], body: dict[str, Any]) -> dict[str, Any]:
    """The keeper's answer to `{"old_size", "new_size"}` over its ledger's leaf hashes.
    Raises ValueError (a 400) for sizes out of range."""
    old, new = body.get("old_size"), body.get("new_size")
    if not (isinstance(old, int) and isinstance(new, int) and not isinstance(old, bool)
            and not isinstance(new, bool) and 0 < old < new <= len(leaves)):
        raise ValueError(f"old_size and new_size must be 0 < old < new <= {len(leaves)}")
    proof = merkle.consistency_proof(list(leaves[:new]), old)
    return {"proof": [base64.b64encode(h).decode() for h in proof]}


def accept_cosignature(note: str, line: object, mesh_id: str, node_id: str,
                       public_key: bytes) -> str | None:
    """The keeper's checkpoint `note` with a member's cosignature `line` appended, when that
    line is a valid cosignature/v1 of this checkpoint by that member's key; else None."""
    if not isinstance(line, str) or len(line) > 512 or "\n" in line.rstrip("\n"):
        return None
    text = note if note.endswith("\n") else note + "\n"
    signed = text + line.rstrip("\n") + "\n"
    if verify_cosignature(signed, witness_name(mesh_id, node_id), public_key) is None:
        return None
    return signed
