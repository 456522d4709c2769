"""`covey status` and `covey doctor` show this node's audit verdicts per peer and model."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rich.console import Console

from covey.console import _peers_table
from covey.console_verdicts import (
    compact,
    doctor_lines,
    status_cell,
    until,
    verdict_rows,
    with_verification,
)

NOW = 1_800_000_000.0
PEER, OTHER = "p" * 52, "q" * 52
GEMMA, SMOL = "gemma-3-270m-q4_k_m", "smollm2-135m-instruct-q4_1"
FAILED = "top-1 differs at step 1 (no local tie); top-1 0/1; mean |dlogprob| n/a"


def _entry(node_id: str, model: str, status: str, **kw: Any) -> dict[str, Any]:
    return {"node_id": node_id, "model": model, "status": status, "audits": 0, "passes": 0,
            "fails": 0, "fails_in_row": 0, "inconclusive": 0, "evidence": "",
            "last_audit_at": NOW - 30, "demoted_until": None, "demotions": 0, **kw}


VERIFICATION = {"mode": "enforce", "fails_to_suspect": 3, "peers": [
    _entry(PEER, GEMMA, "suspect", audits=3, fails=3, fails_in_row=3,
           evidence=FAILED,
           demoted_until=NOW + 600, demotions=1),
    _entry(PEER, "retired-model", "verified", audits=2, passes=2,
           evidence="matches; top-1 12/12; mean |dlogprob| 0.002"),
    _entry(OTHER, GEMMA, "verified", audits=5, passes=5,
           evidence="matches; top-1 12/12; mean |dlogprob| 0.001"),
]}


def _text(renderable: object) -> str:
    console = Console(record=True, width=220)
    console.print(renderable, soft_wrap=True)
    return console.export_text()


def test_rows_cover_claimed_models_then_audited_ones() -> None:
    rows = verdict_rows(VERIFICATION, PEER, [SMOL, GEMMA])
    assert [(r["model"], r["status"], r["audits"]) for r in rows] == [
        (SMOL, "unverified", 0), (GEMMA, "suspect", 3), ("retired-model", "verified", 2)]
    assert rows[1]["evidence"] == FAILED
    assert rows[1]["demoted_until"] == NOW + 600
    assert verdict_rows(None, PEER, [GEMMA])[0]["status"] == "unverified"


@pytest.mark.parametrize("bad", [
    {"node_id": PEER, "model": GEMMA, "status": "trusted", "audits": -1, "passes": "3",
     "evidence": 7, "demoted_until": float("inf")},
    {"node_id": PEER, "model": GEMMA, "status": None, "audits": True},
])
def test_odd_fields_read_as_unverified_with_no_counts(bad: dict[str, Any]) -> None:
    (row,) = verdict_rows({"mode": "observe", "peers": [bad, "junk", None]}, PEER, [])
    assert row["status"] == "unverified" and row["audits"] == 0 and row["passes"] == 0
    assert row["evidence"] == "" and row["demoted_until"] is None


def test_compact_form() -> None:
    gemma, retired = verdict_rows(VERIFICATION, PEER, [GEMMA])
    assert compact(gemma, NOW) == f"suspect 0/3, demoted until {until(NOW + 600, NOW)}"
    assert compact(gemma, NOW + 601) == "suspect 0/3"  # the demotion ran out
    assert compact(retired, NOW) == "verified 2/2"
    assert until(NOW + 600, NOW) == time.strftime("%H:%M", time.localtime(NOW + 600))
    assert until(NOW + 2 * 86400, NOW) == time.strftime("%b %d %H:%M",
                                                        time.localtime(NOW + 2 * 86400))
    assert status_cell([], "off", NOW) == "not audited (verify off)"
    assert status_cell([], None, NOW) == "not audited (verify off)"


def test_status_peers_table_has_a_verified_column() -> None:
    peers = [{"id": PEER, "name": "[red]mallory", "addresses": ["10.0.0.2:7070"],
              "last_seen": NOW - 3, "health": None,
              "models": [{"id": GEMMA, "state": "ready", "tokens_per_s_p50": 40.0}]},
             {"id": OTHER, "name": "honest", "addresses": [], "last_seen": NOW, "health": None,
              "models": [{"id": GEMMA, "state": "ready"}]}]
    text = _text(_peers_table(peers, VERIFICATION, now=NOW))
    assert "verified" in text.splitlines()[2]  # the header
    assert f"{GEMMA}: suspect 0/3, demoted until" in text
    assert "retired-model: verified 2/2" in text
    assert f"{GEMMA}: verified 5/5" in text
    assert "[red]mallory" in text  # a peer's name is text, never markup
    off = _text(_peers_table(peers, {"mode": "off", "peers": []}, now=NOW))
    assert "not audited (verify off)" in off


def test_doctor_lines_give_status_audits_evidence_and_demotion() -> None:
    text = _text("\n".join(doctor_lines(verdict_rows(VERIFICATION, PEER, [SMOL, GEMMA]),
                                        "enforce", NOW)))
    assert "verification (enforce; this node's own audits, never gossiped)" in text
    assert f"· {SMOL}  unverified  no audit yet" in text
    assert (f"✗ {GEMMA}  suspect  3 audits: 0 passed, 3 failed, 0 inconclusive") in text
    assert f"last: {FAILED}" in text
    assert f"demoted until {until(NOW + 600, NOW)}" in text
    assert "✓ retired-model  verified  2 audits: 2 passed, 0 failed, 0 inconclusive" in text
    assert "off on this node" in _text("\n".join(doctor_lines([], "off", NOW)))
    hostile = doctor_lines(verdict_rows({"mode": "observe", "peers": [
        _entry(PEER, "[bold]x", "inconclusive", audits=1, inconclusive=1,
               evidence="peer answered [link=x]HTTP 500")]}, PEER, []), "observe", NOW)
    text = _text("\n".join(hostile))
    assert "[bold]x  inconclusive" in text and "peer answered [link=x]HTTP 500" in text


def test_doctor_report_gains_verification_per_peer() -> None:
    report = {"ok": True, "node": {}, "peers": [
        {"id": PEER, "name": "mallory", "layers": [], "first_failure": None},
        {"id": "gone", "name": "", "layers": [], "first_failure": None}]}
    snap = {"verification": VERIFICATION,
            "peers": [{"id": PEER, "models": [{"id": SMOL}, {"id": GEMMA}]}]}
    out = with_verification(report, snap)
    assert out["verification"] == {"mode": "enforce", "fails_to_suspect": 3}
    mallory, gone = out["peers"]
    assert [(r["model"], r["status"]) for r in mallory["verification"]] == [
        (SMOL, "unverified"), (GEMMA, "suspect"), ("retired-model", "verified")]
    assert mallory["verification"][1]["evidence"] == FAILED
    assert gone["verification"] == []
    assert with_verification(report, None)["verification"] is None
    older = with_verification(report, {"peers": []})  # a node without the section
    assert older["verification"] == {"mode": "off", "fails_to_suspect": None}
    assert "verification" not in report  # the input is left alone
