"""An idle node's own record is signed again only when it changed or ages, a member
certificate's signature is checked once per envelope, and a peer holding all this node
holds is not called (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from covey.engine import catalog
from covey.health.monitor import HealthMonitor
from covey.mesh import identity, state
from covey.mesh.gossip import quiet_peers
from covey.mesh.membership import MembershipError, revoke
from covey.mesh.records import RecordRejected, republish_due
from covey.mesh.runtime import QUIET_ROUNDS, REFRESH_ROUNDS, MeshRuntime
from covey.mesh.state import MeshState

NOW = 1_700_000_000.0


def _mesh(tmp_path: Path, cert_s: float = 3600) -> tuple[MeshState, MeshState]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = MeshState.load_or_create(tmp_path / "a", identity.load_or_create(tmp_path / "a"),
                                 NOW, cert_validity_s=cert_s)
    assert a.authority is not None
    b_id = identity.load_or_create(tmp_path / "b")
    b = MeshState.save(tmp_path / "b", b_id, a.info,
                       state.issue_cert(a.authority, b_id.public_bytes, NOW, cert_s))
    return a, b


def _publish(s: MeshState, now: float, **fields: object) -> bytes:
    return s.publish(now, ttl_s=30, refresh_s=6, **{"name": "x", **fields})


def test_unchanged_record_is_not_signed_again(tmp_path: Path) -> None:
    a, _ = _mesh(tmp_path)
    first = _publish(a, NOW)
    seq_file = a.data_dir / "seq"
    written = seq_file.stat().st_mtime_ns, seq_file.read_text()
    assert _publish(a, NOW + 2) == first and _publish(a, NOW + 5.9) == first
    assert (seq_file.stat().st_mtime_ns, seq_file.read_text()) == written


def test_changed_record_is_signed_at_once(tmp_path: Path) -> None:
    a, _ = _mesh(tmp_path)
    first = _publish(a, NOW, models=[{"id": "m", "queue_depth": 0}])
    seq = a.table.get(a.identity.node_id).record.seq  # type: ignore[union-attr]
    second = _publish(a, NOW + 0.5, models=[{"id": "m", "queue_depth": 1}])
    held = a.table.get(a.identity.node_id)
    assert second != first and held is not None and held.envelope == second
    assert held.record.seq > seq and held.record.models[0].queue_depth == 1


def test_a_change_of_measurements_alone_waits_for_the_refresh(tmp_path: Path) -> None:
    """Traffic changes the figures every round: re-signing for them each round made every
    peer take the record again each round under load."""
    a, _ = _mesh(tmp_path)
    first = _publish(a, NOW, metrics={"m": {"samples": 1}}, ledger={"n": 1.0})
    assert _publish(a, NOW + 2, metrics={"m": {"samples": 9}}, ledger={"n": 3.0}) == first
    refreshed = _publish(a, NOW + 6, metrics={"m": {"samples": 12}}, ledger={"n": 3.0})
    held = a.table.get(a.identity.node_id)
    assert refreshed != first and held is not None and held.envelope == refreshed
    assert held.record.metrics["m"].samples == 12
    # Anything else that changes beside them is signed at once, figures and all.
    moved = _publish(a, NOW + 7, metrics={"m": {"samples": 13}}, ledger={"n": 3.0},
                     models=[{"id": "m", "queue_depth": 1}])
    held = a.table.get(a.identity.node_id)
    assert moved != refreshed and held is not None and held.record.metrics["m"].samples == 13


def test_record_is_signed_again_when_it_ages(tmp_path: Path) -> None:
    a, _ = _mesh(tmp_path)
    first = _publish(a, NOW)
    assert _publish(a, NOW + 6) != first  # peers call a record stale by its age
    # Without a refresh age: again once half its life is gone, so it reaches every peer.
    second = a.publish(NOW + 6.5, ttl_s=30, refresh_s=1e9, name="x")
    assert a.publish(NOW + 20, ttl_s=30, refresh_s=1e9, name="x") == second
    assert a.publish(NOW + 21.5, ttl_s=30, refresh_s=1e9, name="x") != second


@pytest.mark.parametrize("interval_s", [0.2, 0.5, 2.0, 5.0])
def test_an_idle_record_is_re_signed_well_before_peers_call_it_stale(interval_s: float) -> None:
    """Re-signing every sixth round, not every third, cut an idle pair's CPU by a fifth; a
    peer must still see each refresh (gossip takes up to a few rounds) before its health
    checks call the record stale, and a stale record must show before it expires."""
    refresh_s = REFRESH_ROUNDS * interval_s
    ttl_s = max(30.0, 10 * interval_s)  # as MeshRuntime.publish signs it
    stale_s = HealthMonitor(SimpleNamespace(interval_s=interval_s),  # type: ignore[arg-type]
                            interval_s=2.0, timeout_s=5.0).fresh_s
    assert min(refresh_s, ttl_s / 2) + 3 * interval_s <= stale_s < ttl_s
    # A quiet peer is called again once a refresh is due anyway, not sooner.
    assert QUIET_ROUNDS == REFRESH_ROUNDS


def test_without_a_refresh_age_every_publish_signs(tmp_path: Path) -> None:
    a, _ = _mesh(tmp_path)
    assert a.publish(NOW, name="x") != a.publish(NOW + 0.001, name="x")


def test_a_new_revocation_list_is_published_at_once(tmp_path: Path) -> None:
    a, b = _mesh(tmp_path)
    assert a.authority is not None
    first = _publish(a, NOW)
    _, env = revoke(a.authority, None, b.identity.node_id, NOW)
    assert a.learn_revocations(env)
    assert _publish(a, NOW + 1) != first


def test_measurements_are_summed_up_only_when_a_record_is_signed(tmp_path: Path) -> None:
    """An idle node asked its meters for percentiles and its ledger for balances every
    round, to compare figures that alone never re-sign the record."""
    a, _ = _mesh(tmp_path)
    asked: list[float] = []

    def measured() -> dict[str, object]:
        asked.append(len(asked) + 1.0)
        return {"metrics": {"m": {"samples": len(asked)}}, "ledger": {"n": asked[-1]}}

    def publish(now: float, **fields: object) -> bytes:
        return a.publish(now, ttl_s=30, refresh_s=6, measured=measured, name="x", **fields)

    first = publish(NOW)
    assert [publish(NOW + s) for s in (1, 2, 5.9)] == [first] * 3 and len(asked) == 1
    held = a.table.get(a.identity.node_id)
    assert held is not None and held.record.metrics["m"].samples == 1
    refreshed = publish(NOW + 6)
    held = a.table.get(a.identity.node_id)
    assert refreshed != first and len(asked) == 2 and held is not None
    assert held.record.metrics["m"].samples == 2 and held.record.ledger == {"n": 2.0}
    # A change of anything else signs at once, with the figures of that moment.
    publish(NOW + 7, models=[{"id": "m", "queue_depth": 1}])
    held = a.table.get(a.identity.node_id)
    assert len(asked) == 3 and held is not None and held.record.metrics["m"].samples == 3
    assert publish(NOW + 8, models=[{"id": "m", "queue_depth": 1}]) == held.envelope


def test_a_renewed_certificate_is_published_at_once(tmp_path: Path) -> None:
    """The certificate's base64 is kept between rounds: a new one must still show."""
    a, _ = _mesh(tmp_path)
    assert a.authority is not None
    first = _publish(a, NOW + 1)
    renewed = state.issue_cert(a.authority, a.identity.public_bytes, NOW + 1, 3600)
    a.set_cert(renewed, NOW + 1)
    second = _publish(a, NOW + 2)
    held = a.table.get(a.identity.node_id)
    assert second != first and held is not None
    assert held.record.member_cert == state.b64e(renewed)


async def test_the_creator_looks_for_a_revocation_list_once_per_refresh(
        tmp_path: Path) -> None:
    """`covey revoke` writes the list to the creator's data dir. A stat of that file every
    round cost the creator's idle node ~0.2 ms of cold CPU each time; it is looked at on
    the first round (a list written while the node was down) and then once per refresh."""
    a, b = _mesh(tmp_path)
    assert a.authority is not None
    _, env = revoke(a.authority, None, b.identity.node_id, NOW)
    (a.data_dir / state.REVOCATIONS_FILE).write_bytes(env)
    runtime = MeshRuntime(a, SimpleNamespace(fingerprint="ab" * 32),  # type: ignore[arg-type]
                          addresses=["127.0.0.1:1"], describe=lambda: {"name": "a"},
                          interval_s=0.001, bootstrap=[])
    runtime.transport = _NoPeers()  # type: ignore[assignment]
    looks: list[int] = []
    rounds: list[int] = []
    done = asyncio.Event()
    real_look, real_publish = a.reload_revocations, runtime.publish

    def look() -> None:
        looks.append(len(rounds))
        real_look()

    def publish() -> None:
        rounds.append(1)
        real_publish()
        if len(rounds) == 2 * REFRESH_ROUNDS + 1:
            done.set()

    a.reload_revocations = look  # type: ignore[method-assign]
    runtime.publish = publish  # type: ignore[method-assign]
    task = asyncio.create_task(runtime.run())
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert looks[:3] == [0, REFRESH_ROUNDS, 2 * REFRESH_ROUNDS]
    held = a.table.get(a.identity.node_id)
    assert held is not None and held.record.revocations == state.b64e(env)
    assert not a.is_member(b.identity.node_id, b.identity.public_bytes, NOW + 1)


class _NoPeers:
    """A transport for a node alone: nothing to forget, nobody to call."""

    async def forget(self, keep: set[str]) -> None:
        return None

    def address(self, fingerprint: str) -> str | None:
        return None


@pytest.mark.parametrize(("same", "age", "expected"), [
    (True, 0.0, False), (True, 5.9, False), (True, 6.0, True), (False, 0.0, True),
    (True, -1.0, True)])  # a clock stepped back: sign anew rather than trust the old one
def test_republish_due(tmp_path: Path, same: bool, age: float, expected: bool) -> None:
    a, _ = _mesh(tmp_path)
    _publish(a, NOW)
    held = a.table.get(a.identity.node_id)
    assert held is not None
    assert republish_due(held.record, same, NOW + age, 30, 6) is expected


def test_certificate_signature_is_checked_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _mesh(tmp_path)
    calls = []
    real = state.verify_cert
    monkeypatch.setattr(state, "verify_cert", lambda *x, **k: calls.append(1) or real(*x, **k))
    for i in range(5):
        assert a.admit_cert(b.cert, NOW + i)
    assert len(calls) == 1
    assert not a.admit_cert(b.cert[:-3] + b"AAA", NOW)  # a forged one is not a cached one
    assert a.authority is not None
    _, env = revoke(a.authority, None, "someone-else", NOW)
    assert a.learn_revocations(env)
    calls.clear()
    assert a.admit_cert(b.cert, NOW)  # a new list: checked afresh
    assert len(calls) == 1


def test_the_creator_s_authority_proof_is_checked_once(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A member looks for the ledger's keeper each round and for each request it serves or
    relays; each look verified the creator's proof again (~0.2 ms here)."""
    a, b = _mesh(tmp_path)
    b.accept(_publish(a, NOW), NOW)
    held = a.table.get(a.identity.node_id)
    assert held is not None and held.record.authority_proof
    # b's own record carries a copy of the creator's proof: it names another node.
    _publish(b, NOW, authority_proof=held.record.authority_proof)
    calls = []
    real = state.is_authority_node
    monkeypatch.setattr(state, "is_authority_node",
                        lambda *x, **k: calls.append(1) or real(*x, **k))
    for i in range(5):
        assert b.keeper_id(NOW + i) == a.identity.node_id
        keeper = b.keeper_record(NOW + i)
        assert keeper is not None and keeper.node_id == a.identity.node_id
    assert 1 <= len(calls) <= 2  # the creator's proof, and the copy if it came first
    assert b.keeper_record(NOW + 31) is None  # a cached proof does not outlive its record


def test_cached_certificate_still_expires(tmp_path: Path) -> None:
    a, b = _mesh(tmp_path, cert_s=60)
    assert a.admit_cert(b.cert, NOW)
    assert not a.admit_cert(b.cert, NOW + 60)
    with pytest.raises(MembershipError):
        a.own_cert(NOW + 61)


def test_revocation_refuses_a_cached_member_at_once(tmp_path: Path) -> None:
    a, b = _mesh(tmp_path)
    assert a.authority is not None
    record = b.publish(NOW, name="b")
    a.accept(record, NOW)
    assert a.is_member(b.identity.node_id, b.identity.public_bytes, NOW)
    _, env = revoke(a.authority, None, b.identity.node_id, NOW + 1)
    assert a.learn_revocations(env)
    assert not a.is_member(b.identity.node_id, b.identity.public_bytes, NOW + 1)
    with pytest.raises(RecordRejected) as info:
        a.accept(b.publish(NOW + 2, name="b"), NOW + 2)
    assert info.value.reason == "not_member"
    assert a.table.get(b.identity.node_id) is None


def test_published_available_memory_is_rounded(monkeypatch: pytest.MonkeyPatch) -> None:
    step = catalog.PUBLISHED_MEMORY_STEP
    memory = SimpleNamespace(available=5 * step + 7, total=8 * step)
    monkeypatch.setattr(catalog.psutil, "virtual_memory", lambda: memory)
    assert catalog.machine_hardware(None)["fast_memory_bytes"] == 5 * step
    assert catalog.machine_hardware(123)["fast_memory_bytes"] == 123  # a user's figure stands


def test_the_machine_s_memory_is_read_again_only_every_few_seconds() -> None:
    """Asked every gossip round; read (psutil parses /proc/meminfo) every `every_s`."""
    reads: list[int | None] = []

    def read(override: int | None) -> dict[str, int | None]:
        reads.append(override)
        return {"ram_bytes": 8 << 30, "gpu_bytes": None, "fast_memory_bytes": len(reads) << 28}

    reader = catalog.HardwareReader(None, cap=4 << 40, every_s=10.0, read=read)
    first = reader.read(100.0)
    assert [reader.read(100.0 + s) for s in (2, 4, 9.9)] == [first] * 3 and len(reads) == 1
    assert reader.read(110.0)["fast_memory_bytes"] == 2 << 28  # read again, at most 10 s old
    assert reader.read(50.0)["fast_memory_bytes"] == 3 << 28  # a clock that went back: read
    capped = catalog.HardwareReader(None, cap=1 << 30, read=read)
    assert capped.read(0.0)["ram_bytes"] is None  # above the record's cap


def test_a_peer_is_quiet_while_this_node_has_nothing_new_for_it(tmp_path: Path) -> None:
    """gossip.quiet_peers over what MeshState notes of each exchange."""
    a, b = _mesh(tmp_path)
    b_id = b.identity.node_id
    _publish(a, NOW)
    a.note_synced(b_id, now=100.0, complete=True)
    assert quiet_peers(a.synced, a.table.version, 105.9, quiet_s=6) == {b_id}
    assert quiet_peers(a.synced, a.table.version, 106.0, quiet_s=6) == set()  # a pull is due
    assert quiet_peers(a.synced, a.table.version, 99.0, quiet_s=6) == set()  # clock went back
    # Records B sent are not news for B; a record from anyone else is.
    before = a.table.version
    a.accept(b.publish(NOW, name="b"), NOW)
    a.took_from(b_id, before)
    assert quiet_peers(a.synced, a.table.version, 101.0, quiet_s=6) == {b_id}
    _publish(a, NOW + 1, name="renamed")
    assert quiet_peers(a.synced, a.table.version, 101.0, quiet_s=6) == set()
    a.took_from(b_id, a.table.version)  # stale news of a call: changes nothing
    assert quiet_peers(a.synced, a.table.version, 101.0, quiet_s=6) == set()
    # An exchange cut at a message's limit leaves B possibly short: called next round.
    a.note_synced(b_id, now=101.0, complete=True)
    a.note_synced(b_id, now=102.0, complete=False)
    assert quiet_peers(a.synced, a.table.version, 102.0, quiet_s=6) == set()
