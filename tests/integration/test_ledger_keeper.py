"""Issue 15: the creator designates another member to keep the mesh ledger (signed mesh
policy, `--ledger-keeper NODE_ID`), three "machines" (network namespaces), real nodes started
with the README's flags.

    A: creates the mesh (keeps the ledger first), serves nothing
    B: joins, serves Gemma 3 270M (the provider)
    C: joins, serves nothing; the keeper once A restarts with --ledger-keeper C

Before the change: three answers (two asked on C, one on A) whose receipts A keeps. After
it: every member agrees C keeps the ledger; C's ledger is rebuilt from the members' copies
(B and A send theirs, each receipt once); a new answer's receipt goes to C; C publishes the
balances, signs the mesh's checkpoints and A and B witness them; grants are made on C.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.test_ledger import README_MESH, ask, join_provider_and_entry, ledger_of
from tests.netns import Host, NsNode, lan, ns_run, running, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")

CHECKPOINTS = ["--checkpoint-interval-s", "1"]  # a day by default


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(3, subnet="10.81.0") as made:
        yield made


@pytest.mark.timeout(360)
def test_the_creator_moves_the_ledger_to_a_member(hosts: list[Host], tmp_path: Path,
                                                  model_path: Path) -> None:
    ha, hb, hc = hosts
    a = NsNode(ha.ns, tmp_path / "a", *README_MESH, "--no-default-model", *CHECKPOINTS)
    with running([a]) as nodes:
        b, c, model = join_provider_and_entry(a, hb, hc, tmp_path, model_path, nodes,
                                              *CHECKPOINTS)
        assert set(ask(hc, c, model, 2) + ask(ha, a, model, 1)) == {b.node_id}
        wait_for(lambda: len(ledger_of(a)["earn"]) == 3, 60,  # type: ignore[arg-type]
                 "three receipts at the creator, the keeper so far")
        assert c.status()["ledger"]["keeper"] == a.node_id
        before = ledger_of(a)

        # The creator designates C, with the README's flag.
        a.stop()
        nodes.remove(a)
        a = NsNode(ha.ns, tmp_path / "a", *README_MESH, "--no-default-model", *CHECKPOINTS,
                   "--ledger-keeper", c.node_id)
        nodes.append(a)
        a.wait_listening()
        wait_for(lambda: all(n.status()["ledger"]["keeper"] == c.node_id for n in (a, b, c)),
                 60, "every member to agree that C keeps the ledger")
        # C's ledger is rebuilt from the members' copies: each receipt once.
        wait_for(lambda: ledger_of(c)["earn"] == before["earn"], 60,
                 "the members' receipts to reach C")
        at_c = ledger_of(c)
        assert at_c["ok"] and at_c["spend"] == at_c["earn"] and at_c["unconfirmed"] == 0
        assert at_c["balances"] == before["balances"], (at_c, before)

        # A new answer's receipt goes to C, not to A.
        assert ask(ha, a, model, 1) == [b.node_id]
        wait_for(lambda: len(ledger_of(c)["earn"]) == 4, 60,  # type: ignore[arg-type]
                 "the new receipt at C")
        balances = ledger_of(c)["balances"]
        assert isinstance(balances, dict) and balances[b.node_id] > 0
        wait_for(lambda: all(n.status()["ledger"]["published"] == balances for n in (a, b)),
                 30, "C's balances to reach A and B in its record")

        # C signs the mesh's checkpoints now; A and B witness and co-sign them.
        mesh_id = json.loads((a.data_dir / "mesh.json").read_text())["mesh_id"]

        def witnessed() -> bool:
            note = c.data_dir / "checkpoints" / "latest.note"
            if not note.exists():
                return False
            origin, size = note.read_text().split("\n")[:2]
            views = [n.status()["ledger"]["witness"] for n in (a, b)]
            return origin == f"covey.mesh/{mesh_id}/ledger" and all(
                v and v["witnessed"] and v["witnessed"]["size"] == int(size)
                and v["cosigned"] for v in views)

        wait_for(witnessed, 90, "A and B to witness C's checkpoint of the mesh ledger")
        assert all(n.status()["ledger"]["witness"]["problem"] is None for n in (a, b))
        assert c.status()["ledger"]["witness"] is None  # the keeper witnesses nobody

        # Grants are the keeper's now: made on C, refused on the creator.
        granted = c.covey("ledger", "grant", b.node_id, "1.5", "--data-dir", str(c.data_dir))
        assert "+1.5 credits" in granted, granted
        refused = ns_run(ha.ns, sys.executable, "-m", "covey", "ledger", "grant", b.node_id,
                         "1", "--data-dir", str(a.data_dir))
        assert refused.returncode == 1 and "keeper" in refused.stderr, refused.stderr
