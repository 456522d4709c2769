"""This node's audit verdicts on its peers' models, for the terminal (pure rendering).

The input is the `verification` section of `/api/status` (verify/verdicts.py); it lists only
the (peer, model) pairs this node has audited, so a model a peer claims but this node never
audited reads `unverified` with no audits. `covey status` shows one compact cell per peer,
`covey doctor` a line per model with the evidence (and the same rows in its JSON).

Verdicts are this node's own: nothing here comes from the peer about itself, and nothing is
gossiped. Model ids are the peer's words: callers print them as text, never as markup.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.markup import escape

STATUSES = ("verified", "unverified", "inconclusive", "suspect")
MAX_EVIDENCE = 300  # characters shown; the evidence is this node's own, but bounded anyway
DAY_S = 86400.0
_MARK = {"verified": "[green]✓[/]", "suspect": "[red]✗[/]"}


def _count(entry: dict[str, Any], key: str) -> int:
    value = entry.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _time(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def verdict_rows(verification: dict[str, Any] | None, peer_id: str,
                 claimed: list[str]) -> list[dict[str, Any]]:
    """Pure: one row per model of `peer_id`: the models it claims (in its order), then any
    others this node audited it for. Each row has the status and the audit counts; a model
    never audited is `unverified` with no audits."""
    entries = [e for e in (verification or {}).get("peers") or []
               if isinstance(e, dict) and e.get("node_id") == peer_id
               and isinstance(e.get("model"), str)]
    by_model = {e["model"]: e for e in entries}
    models = list(dict.fromkeys([*claimed, *by_model]))
    rows = []
    for model in models:
        e = by_model.get(model, {})
        status = e.get("status") if e.get("status") in STATUSES else "unverified"
        evidence = e.get("evidence")
        rows.append({"model": model, "status": status, "audits": _count(e, "audits"),
                     "passes": _count(e, "passes"), "fails": _count(e, "fails"),
                     "fails_in_row": _count(e, "fails_in_row"),
                     "inconclusive": _count(e, "inconclusive"),
                     "evidence": evidence[:MAX_EVIDENCE] if isinstance(evidence, str) else "",
                     "last_audit_at": _time(e.get("last_audit_at")),
                     "demoted_until": _time(e.get("demoted_until")),
                     "demotions": _count(e, "demotions")})
    return rows


def until(t: float, now: float) -> str:
    """A wall time in this machine's zone: `14:05`, or `Dec 02 14:05` a day or more away."""
    return time.strftime("%H:%M" if t - now < DAY_S else "%b %d %H:%M", time.localtime(t))


def demoted_text(row: dict[str, Any], now: float) -> str:
    t = row["demoted_until"]
    return f"demoted until {until(t, now)}" if t is not None and t > now else ""


def compact(row: dict[str, Any], now: float) -> str:
    """One model's verdict in a few words: `verified 5/5`, `suspect 0/3, demoted until 14:05`
    (passes/audits), `unverified` with no audit."""
    text = row["status"] + (f" {row['passes']}/{row['audits']}" if row["audits"] else "")
    demoted = demoted_text(row, now)
    return f"{text}, {demoted}" if demoted else text


def status_cell(rows: list[dict[str, Any]], mode: str | None, now: float) -> str:
    """The `verified` cell of `covey status`'s peers table (plain text, one line a model)."""
    if mode in (None, "off"):
        return "not audited (verify off)"
    if not rows:
        return "-"
    return "\n".join(f"{r['model']}: {compact(r, now)}" for r in rows)


def doctor_lines(rows: list[dict[str, Any]], mode: str | None, now: float) -> list[str]:
    """`covey doctor`'s verification lines under one peer (rich markup; the peer's words are
    escaped): the status, the audits and the last audit's evidence, per model."""
    if mode in (None, "off"):
        return ["  [dim]·[/] verification  off on this node (--verify off): no audits"]
    lines = [f"  verification ({mode}; this node's own audits, never gossiped)"]
    if not rows:
        lines.append("    [dim]·[/] this peer claims no models")
    for r in rows:
        mark = _MARK.get(r["status"], "[dim]·[/]")
        if r["audits"]:
            counts = (f"{r['audits']} audit{'s' * (r['audits'] != 1)}: {r['passes']} passed, "
                      f"{r['fails']} failed, {r['inconclusive']} inconclusive")
        else:
            counts = "no audit yet (this node audits the models it serves itself)"
        extra = [x for x in (demoted_text(r, now),
                             f"last: {escape(r['evidence'])}" if r["evidence"] else "") if x]
        lines.append(f"    {mark} {escape(r['model'])}  {r['status']}  {counts}"
                     + "".join(f"\n        {x}" for x in extra))
    return lines


def with_verification(report: dict[str, Any], snap: dict[str, Any] | None) -> dict[str, Any]:
    """Pure: the doctor's report with this node's verdicts (from its /api/status `snap`):
    `verification` {mode, fails_to_suspect} at the top (None without `snap`), and per peer a
    `verification` list, one row per model it claims or was audited for."""
    if snap is None:
        return {**report, "verification": None}
    section = snap.get("verification") if isinstance(snap.get("verification"), dict) else None
    claimed = {p.get("id"): [m["id"] for m in p.get("models") or [] if isinstance(m, dict)
                             and isinstance(m.get("id"), str)]
               for p in snap.get("peers") or [] if isinstance(p, dict)}
    peers = [{**p, "verification": verdict_rows(section, p.get("id") or "",
                                                claimed.get(p.get("id"), []))}
             for p in report["peers"]]
    mode = section.get("mode") if section else "off"
    return {**report, "peers": peers, "verification": {
        "mode": mode, "fails_to_suspect": section.get("fails_to_suspect") if section else None}}
