"""Verdicts per (peer, model) from this node's own audits (pure; the clock is passed in).

Each node reaches its own verdicts; they are never gossiped. States:

    unverified    no conclusive audit yet, or failed audits in a row fewer than K
    verified      the last conclusive audit passed
    inconclusive  audits ran, none conclusive (too little aligned text, the peer did not answer)
    suspect       K or more failed audits in a row (K is at least 2: never one)

In enforce mode a peer that reaches K failed audits in a row is demoted for that model for
`demote_s`, doubled on each repeat (capped), expiring on its own; after it expires the count of
failures in a row starts again, so it takes K more to demote again. In observe mode (the
default) nothing is demoted: the verdicts are only logged and shown.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from covey.verify.compare import Outcome

Status = Literal["verified", "unverified", "inconclusive", "suspect"]
Mode = Literal["off", "observe", "enforce"]
MAX_DEMOTE_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Policy:
    mode: Mode = "observe"
    fails_to_suspect: int = 3  # K: failed audits in a row before suspect (and demotion)
    demote_s: float = 600.0  # first demotion; doubles on each repeat

    def __post_init__(self) -> None:
        if self.fails_to_suspect < 2:
            raise ValueError(f"fails_to_suspect must be at least 2 (one failed audit never "
                             f"convicts), got {self.fails_to_suspect}")


@dataclass(frozen=True)
class Record:
    """What this node concluded about one (peer, model)."""

    audits: int = 0
    passes: int = 0
    fails: int = 0
    fails_in_row: int = 0
    inconclusive: int = 0
    last_outcome: Outcome | None = None
    last_conclusive: Outcome | None = None  # the last pass or fail
    last_evidence: str = ""
    last_at: float | None = None
    demotions: int = 0
    demoted_until: float | None = None
    suspect_since: float | None = None
    checks: tuple[str, ...] = ()  # the cheap checks' problems (checks.py): notes, not proof


def apply(rec: Record, outcome: Outcome, evidence: str, now: float, policy: Policy) -> Record:
    """Pure: `rec` after one audit with `outcome`."""
    rec = replace(rec, audits=rec.audits + 1, last_outcome=outcome, last_evidence=evidence,
                  last_at=now)
    if outcome == "pass":
        return replace(rec, passes=rec.passes + 1, fails_in_row=0, suspect_since=None,
                       last_conclusive="pass")
    if outcome == "inconclusive":
        return replace(rec, inconclusive=rec.inconclusive + 1)
    rec = replace(rec, fails=rec.fails + 1, fails_in_row=rec.fails_in_row + 1,
                  last_conclusive="fail")
    if rec.fails_in_row >= policy.fails_to_suspect and rec.suspect_since is None:
        rec = replace(rec, suspect_since=now)
    if (policy.mode == "enforce" and rec.fails_in_row >= policy.fails_to_suspect
            and not demoted(rec, now)):
        period = min(policy.demote_s * 2 ** rec.demotions, MAX_DEMOTE_S)
        rec = replace(rec, demotions=rec.demotions + 1, demoted_until=now + period)
    return rec


def expire(rec: Record, now: float) -> Record:
    """Pure: a demotion that ran out ends, and the failures in a row start again."""
    if rec.demoted_until is not None and now >= rec.demoted_until:
        return replace(rec, demoted_until=None, fails_in_row=0, suspect_since=None)
    return rec


def demoted(rec: Record, now: float) -> bool:
    return rec.demoted_until is not None and now < rec.demoted_until


def status(rec: Record | None, policy: Policy) -> Status:
    if rec is None or rec.audits == 0:
        return "unverified"
    if rec.fails_in_row >= policy.fails_to_suspect:
        return "suspect"
    if rec.last_conclusive == "pass":
        return "verified"
    return "inconclusive" if rec.last_conclusive is None else "unverified"


class VerdictBook:
    """This node's verdicts, keyed by (peer node id, model id). The only mutable part."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._records: dict[tuple[str, str], Record] = {}

    def record(self, node_id: str, model_id: str, outcome: Outcome, evidence: str,
               now: float) -> Record:
        key = (node_id, model_id)
        rec = apply(expire(self._records.get(key, Record()), now), outcome, evidence, now,
                    self.policy)
        self._records[key] = rec
        return rec

    def note(self, node_id: str, model_id: str, problems: list[str]) -> None:
        """The cheap checks' latest problems with this claim (shown, never demoting)."""
        key = (node_id, model_id)
        rec = self._records.get(key)
        if rec is None and not problems:
            return
        self._records[key] = replace(rec or Record(), checks=tuple(problems[:8]))

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop verdicts on claims no longer made (a peer left or stopped serving the model),
        unless a demotion still runs: leaving and coming back must not clear it."""
        for key in [k for k, r in self._records.items() if k not in keep]:
            if self._records[key].demoted_until is None:
                del self._records[key]

    def get(self, node_id: str, model_id: str, now: float) -> Record | None:
        key = (node_id, model_id)
        rec = self._records.get(key)
        if rec is not None:
            rec = self._records[key] = expire(rec, now)
        return rec

    def status(self, node_id: str, model_id: str, now: float) -> Status:
        return status(self.get(node_id, model_id, now), self.policy)

    def routable(self, node_id: str, model_id: str, now: float) -> bool:
        """False while the peer is demoted for that model (enforce mode only)."""
        rec = self.get(node_id, model_id, now)
        return rec is None or not demoted(rec, now)

    def header(self, node_id: str, model_id: str, now: float) -> str:
        """`x-covey-verified`: verified, unverified or suspect (inconclusive reads unverified)."""
        s = self.status(node_id, model_id, now)
        return s if s in ("verified", "suspect") else "unverified"

    def snapshot(self, now: float) -> list[dict[str, object]]:
        """For /api/status: one entry per (peer, model) audited, with the evidence."""
        out: list[dict[str, object]] = []
        for (node_id, model_id) in list(self._records):
            rec = self.get(node_id, model_id, now)
            assert rec is not None
            out.append({"node_id": node_id, "model": model_id,
                        "status": status(rec, self.policy), "audits": rec.audits,
                        "passes": rec.passes, "fails": rec.fails,
                        "fails_in_row": rec.fails_in_row, "inconclusive": rec.inconclusive,
                        "evidence": rec.last_evidence, "last_audit_at": rec.last_at,
                        "demoted_until": rec.demoted_until, "demotions": rec.demotions,
                        "checks": list(rec.checks)})
        return out


def verification_status(book: VerdictBook | None, now: float) -> dict[str, object]:
    """The `verification` section of /api/status."""
    if book is None:
        return {"mode": "off", "peers": []}
    return {"mode": book.policy.mode, "fails_to_suspect": book.policy.fails_to_suspect,
            "peers": book.snapshot(now)}
