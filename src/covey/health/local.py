"""Layers 2–5: what this node can tell without touching the network."""

from __future__ import annotations

from covey.health.layers import LayerResult, failed, passed, skipped
from covey.mesh.membership import MembershipError
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime
from covey.router.table import ModelTable, unavailable_reason
from covey.types import EngineReady


def engines_layer(table: ModelTable) -> LayerResult:
    models = list(table.models.values())
    if not models:
        return passed(2, "serves no models here (an entry node)")
    down = [m for m in models if not isinstance(m.engine.state, EngineReady)]
    if down:
        return failed(2, "; ".join(unavailable_reason(m.id, m.engine.state) for m in down),
                      "see `covey status` here: a loading engine needs a moment, a crashed one "
                      "restarts by itself, a failed load names its cause")
    return passed(2, f"{len(models)} model(s) ready")


def membership_layer(mesh: MeshRuntime, now: float) -> LayerResult:
    problem = mesh.problem()
    if problem:
        return failed(3, problem.split(":")[0], problem)
    state = mesh.state
    try:
        cert = state.own_cert(now)
    except MembershipError as exc:
        return failed(3, f"this node's member certificate is not valid: {exc}",
                      "join again with a fresh invite: `covey serve --join <invite>`")
    days = (cert.expires_at - now) / 86400
    known = len(mesh.peers(now))
    if not known:
        return skipped(3, f"member of {state.info.mesh_id} (certificate valid {days:.0f} more "
                          "days), no other member known yet: invite one with `covey invite`")
    return passed(3, f"member of {state.info.mesh_id}, certificate valid {days:.0f} more days, "
                     f"{known} peer(s) known")


def discovery_layer(mesh: MeshRuntime, mdns: bool, now: float) -> LayerResult:
    live = mesh.peers(now)
    sources = [b.address for b in mesh.bootstrap]
    how = (f"remembered/invite addresses: {', '.join(sources[:4])}" if sources
           else "no remembered addresses") + ("; mDNS on" if mdns else "; mDNS off")
    if live:
        return passed(4, f"{len(live)} peer(s) found ({how})")
    if mesh.state.authority is not None and not sources:
        return skipped(4, f"this node created the mesh and nobody has joined yet ({how})")
    if sources and mesh.failing_addresses() >= set(sources):
        return failed(4, f"no remembered peer answers ({how})",
                      "start one of those members, or join again with a fresh invite: "
                      "`covey serve --join <invite>`")
    if not sources and not mdns:
        return failed(4, f"no way to find the mesh ({how})",
                      "join with an invite (`covey serve --join <invite>`), or let mDNS find "
                      "members on the LAN (--mesh-host 0.0.0.0 --mdns)")
    return skipped(4, f"looking for peers ({how})")


def roster_layer(record: NodeRecord | None, label: str, now: float,
                 fresh_s: float) -> LayerResult:
    if record is None or record.expires_at <= now:
        return failed(5, f"{label} is not present in the roster (no live record)",
                      "the peer is stopped, was revoked, or never joined: start it with "
                      "`covey serve` there, or invite it again")
    age = now - record.issued_at
    if age > fresh_s:
        return failed(5, f"the last record from {label} is {age:.0f}s old (expected every "
                         f"few seconds)",
                      f"the peer stopped gossiping: it is stopped, stalled, or cut off from "
                      f"this mesh; check `covey status` on {label}")
    return passed(5, f"record #{record.seq}, {age:.1f}s old")
