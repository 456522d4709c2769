"""Issue 15: receipts for work served between three "machines" (network namespaces), made and
countersigned by real nodes started with the README's flags, kept by both parties and by the
keeper (the mesh's creator), and kept across a restart.

    A: creates the mesh (the keeper), serves nothing
    B: joins, serves Gemma 3 270M (the provider)
    C: joins, serves nothing
Clients on A and C ask for Gemma, streamed and whole: B answers every one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from covey.ledger.chain import Ledger
from tests.conftest import wait_for
from tests.netns import Host, NsNode, lan, ns_run, running, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")

README_MESH = ["--mesh-host", "0.0.0.0"]

# Asks a node N times (alternating streamed and whole); prints who served each answer.
ASK = """
import json, sys, urllib.request
out = []
for i in range(int(sys.argv[3])):
    stream = i % 2 == 1
    body = json.dumps({"model": sys.argv[2], "max_tokens": 6, "stream": stream,
                       "messages": [{"role": "user", "content": "Say hi."}]}).encode()
    req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        out.append(r.headers["x-covey-served-by"].split()[0])
print(json.dumps(out))
"""


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(3, subnet="10.80.0") as made:
        yield made


def ledger_of(node: NsNode) -> dict[str, object]:
    """What a node's ledger holds (read beside the running node: SQLite WAL)."""
    with Ledger(node.data_dir / "ledger.sqlite3") as ledger:
        entries = ledger.entries()
        return {"earn": sorted(e.request_id for e in entries if e.kind == "earn"),
                "spend": sorted(e.request_id for e in entries if e.kind == "spend"),
                "balances": {n: round(b.balance, 6) for n, b in ledger.balances().items()},
                "unconfirmed": len(ledger.unconfirmed()), "ok": ledger.verify().ok}


def join_provider_and_entry(a: NsNode, hb: Host, hc: Host, tmp_path: Path, model_path: Path,
                            nodes: list[NsNode], *flags: str) -> tuple[NsNode, NsNode, str]:
    """B joins A's mesh serving the model, C joins serving nothing (both with `flags`);
    returns (b, c, the model's id) once A and C see B's model ready."""
    a.wait_listening()
    invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
    b = NsNode(hb.ns, tmp_path / "b", "--join", invite, *README_MESH, "--model",
               str(model_path), "--no-default-model", *flags)
    nodes.append(b)
    invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
    c = NsNode(hc.ns, tmp_path / "c", "--join", invite, *README_MESH, "--no-default-model",
               *flags)
    nodes.append(c)
    b.wait_listening()
    c.wait_listening()
    model = b.wait_ready_model()
    for entry in (a, c):
        wait_for(lambda e=entry: any(m["id"] == model and m["state"] == "ready"
                                     for p in e.status()["peers"] for m in p["models"]),
                 90, "the entry to see B's model")
    return b, c, model


def ask(host: Host, node: NsNode, model: str, n: int) -> list[str]:
    """`n` chats through `node` from its namespace: the node id that served each."""
    out = ns_run(host.ns, sys.executable, "-c", ASK, node.wait_listening()["url"], model,
                 str(n), timeout=120)
    assert out.returncode == 0, out.stderr
    served: list[str] = json.loads(out.stdout)
    return served


@pytest.mark.timeout(300)
def test_receipts_on_both_sides_and_at_the_keeper(hosts: list[Host], tmp_path: Path,
                                                  model_path: Path) -> None:
    ha, hb, hc = hosts
    # Checkpoints every second here (a day by default), so the witnesses have some to sign.
    a = NsNode(ha.ns, tmp_path / "a", *README_MESH, "--no-default-model",
               "--checkpoint-interval-s", "1")
    with running([a]) as nodes:
        b, c, model = join_provider_and_entry(a, hb, hc, tmp_path, model_path, nodes)
        served = ask(ha, a, model, 3) + ask(hc, c, model, 2)
        assert set(served) == {b.node_id}, served

        def settled() -> bool:
            return (len(ledger_of(b)["earn"]) == 5  # type: ignore[arg-type]
                    and len(ledger_of(a)["earn"]) == 5)  # type: ignore[arg-type]

        wait_for(settled, 60, "five countersigned receipts at the provider and the keeper")
        at_a, at_b, at_c = ledger_of(a), ledger_of(b), ledger_of(c)
        # Every request, once, on both sides; the keeper has all of them.
        assert at_b["earn"] == at_b["spend"] == at_a["earn"], (at_a, at_b)
        assert len(at_c["earn"]) == 2 and set(at_c["earn"]) <= set(at_b["earn"])  # type: ignore[arg-type]
        assert at_a["unconfirmed"] == at_b["unconfirmed"] == 0
        assert at_a["ok"] and at_b["ok"] and at_c["ok"]
        # Balances agree between the keeper and the provider; they sum to zero.
        assert at_a["balances"] == at_b["balances"], (at_a, at_b)
        balances = at_a["balances"]
        assert isinstance(balances, dict) and balances[b.node_id] > 0
        assert abs(sum(balances.values())) < 1e-6
        # B and C witness the keeper's checkpoints: each checked its consistency and co-signed
        # it; the keeper keeps their cosignatures on the checkpoint in its sink.
        def witnessed() -> bool:
            note = a.data_dir / "checkpoints" / "latest.note"
            size = int(note.read_text().split("\n")[1]) if note.exists() else -1
            views = [n.status()["ledger"]["witness"] for n in (b, c)]
            return all(v and v["witnessed"] and v["witnessed"]["size"] == size
                       and v["cosigned"] for v in views)

        wait_for(witnessed, 60, "B and C to witness the keeper's newest checkpoint")
        assert all(n.status()["ledger"]["witness"]["problem"] is None for n in (b, c))
        # ... and audited the keeper against their own receipts: every one is in the tree
        # they co-signed, as both parties signed it.
        wait_for(lambda: b.status()["ledger"]["witness"]["audit"] == {"included": 5}
                 and c.status()["ledger"]["witness"]["audit"] == {"included": 2}, 60,
                 "B and C to find their receipts in the keeper's tree")
        latest = (a.data_dir / "checkpoints" / "latest.note").read_text()
        for member in (b, c):
            assert f"/witness/{member.node_id} " in latest, latest
        assert a.status()["ledger"]["witness"] is None  # the keeper witnesses nobody

        # The keeper publishes them in its record: C reads B's standing from it.
        wait_for(lambda: c.status()["ledger"]["published"] == balances, 30,
                 "the keeper's balances to reach C in its record")
        assert c.status()["ledger"]["keeper"] == a.node_id

        # The README's ledger commands on the keeper: verify, checkpoint, a proof checked
        # offline against the checkpoint's key.
        data = ["--data-dir", str(a.data_dir)]
        assert "intact" in a.covey("ledger", "verify", *data)
        shown = json.loads(a.covey("ledger", "balance", "--json", *data))
        assert json.dumps(shown).count(b.node_id) >= 1
        a.covey("ledger", "checkpoint", *data)
        proof_file = tmp_path / "proof.json"
        proof_file.write_text(a.covey("ledger", "proof", "3", *data))
        key = json.loads(proof_file.read_text())["verifier_key"]
        assert "proof holds" in a.covey("ledger", "verify-proof", str(proof_file), "--key", key)

        # The creator grants C credits (an adjust entry, reason grant); the balance it
        # publishes moves; a member that is not the creator cannot grant.
        before = ledger_of(a)["balances"].get(c.node_id, 0.0)  # type: ignore[union-attr]
        granted = a.covey("ledger", "grant", c.node_id, "2.5", "--note", "welcome", *data)
        assert "+2.5 credits" in granted, granted
        wait_for(lambda: c.status()["ledger"]["published"].get(c.node_id) == round(
            before + 2.5, 6), 30, "the grant to reach C in the keeper's record")
        refused = ns_run(hb.ns, sys.executable, "-m", "covey", "ledger", "grant", c.node_id,
                         "1", "--data-dir", str(b.data_dir))
        assert refused.returncode == 1 and "keeper" in refused.stderr, refused.stderr

        # A restart loses nothing.
        b.stop()
        nodes.remove(b)
        b = NsNode(hb.ns, tmp_path / "b", *README_MESH, "--model", str(model_path),
                   "--no-default-model")
        nodes.append(b)
        b.wait_listening()
        assert ledger_of(b) == at_b
