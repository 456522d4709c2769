"""The mesh inside a running node: publish our record, gossip with peers, sign peer calls.

`run()` loops every `interval_s`: publish a fresh record (models, load, measurements), drop
expired records, and push-pull with a few random peers plus any bootstrap address (the
invite's inviter). A failed exchange is logged once per peer state change, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from covey.mesh import remembered
from covey.mesh.client import PeerUnreachable, exchange
from covey.mesh.gossip import choose_peers
from covey.mesh.records import NodeRecord
from covey.mesh.remembered import Bootstrap
from covey.mesh.sealed import b64e
from covey.mesh.state import MeshState
from covey.mesh.transport import H_CERT, TlsIdentity, sign_request

log = logging.getLogger(__name__)
FANOUT = 3


class MeshRuntime:
    def __init__(self, state: MeshState, tls: TlsIdentity, addresses: list[str],
                 describe: Callable[[], dict[str, Any]], interval_s: float,
                 bootstrap: list[Bootstrap], rng: random.Random | None = None) -> None:
        self.state = state
        self.tls = tls
        self.addresses = addresses  # where peers reach this node, best first
        self.describe = describe  # the node's models/metrics as record fields
        self.interval_s = interval_s
        self.bootstrap = bootstrap
        self.rng = rng or random.Random()
        self._failing: set[str] = set()
        self._problem: str | None = None

    @property
    def node_id(self) -> str:
        return self.state.identity.node_id

    def peers(self, now: float) -> list[NodeRecord]:
        """Live records of other members, newest knowledge first."""
        return [r for r in self.state.table.records()
                if r.node_id != self.node_id and r.expires_at > now]

    def problem(self) -> str | None:
        """A mesh problem a user must fix, with the fix; None when all is well."""
        state = self.state
        if state.duplicate_key_seen is not None:
            return ("another node uses this node's key (at "
                    f"{', '.join(state.duplicate_key_seen) or 'an unknown address'}): a data "
                    "dir was copied. Stop one of them, delete its node.key, member.cert and "
                    "mesh.json, and join it again with a new invite")
        revoked = state.members.revocations
        if revoked is not None and self.node_id in revoked.revoked:
            return "this node was revoked from the mesh; ask a member for a new invite"
        return None

    def sign(self, path: str, body: bytes) -> dict[str, str]:
        headers = sign_request(self.state.identity.key, mesh_id=self.state.info.mesh_id,
                               method="POST", path=path, body=body, now=time.time())
        return {**headers, H_CERT: b64e(self.state.cert)}

    def publish(self) -> None:
        problem = self.problem()
        if problem != self._problem:
            if problem:
                log.error("mesh: %s", problem)
            self._problem = problem
        self.state.publish(time.time(), ttl_s=max(30.0, 10 * self.interval_s),
                           addresses=self.addresses, tls_fingerprint=self.tls.fingerprint,
                           **self.describe())

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(5.0, 4 * self.interval_s))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self.publish()
                self.state.table.expire(time.time())
                await asyncio.gather(*(self._exchange(session, t) for t in self._targets()))
                self._remember()
                await asyncio.sleep(self.interval_s)

    def failing_addresses(self) -> set[str]:
        """Addresses whose last gossip exchange failed."""
        return set(self._failing)

    def found(self, peer: Bootstrap) -> None:
        """A member found outside gossip (mDNS): contact it from the next round on."""
        if all(b.address != peer.address for b in self.bootstrap):
            log.info("mesh: found member at %s on the LAN", peer.address)
            self.bootstrap = [peer, *(b for b in self.bootstrap
                                      if b.fingerprint != peer.fingerprint)]

    def _remember(self) -> None:
        """Keep peers.json current, so a restart (even on new ports) finds the mesh again."""
        live = [Bootstrap(r.addresses[0], r.tls_fingerprint) for r in self.peers(time.time())
                if r.addresses and r.tls_fingerprint]
        merged = remembered.merge(live, self.bootstrap)
        if merged != self.bootstrap and live:
            self.bootstrap = merged
            try:
                remembered.save(self.state.data_dir, merged)
            except OSError as exc:
                log.warning("could not remember peers in %s: %s", self.state.data_dir, exc)

    def _targets(self) -> list[Bootstrap]:
        now = time.time()
        by_id = {r.node_id: r for r in self.peers(now) if r.addresses and r.tls_fingerprint}
        chosen = choose_peers(sorted(by_id), self.node_id, FANOUT, self.rng)
        targets = [Bootstrap(by_id[n].addresses[0], by_id[n].tls_fingerprint) for n in chosen]
        known = {t.address for t in targets} | {a for r in by_id.values() for a in r.addresses}
        # Remembered peers (the inviter at first) until gossip has told us about them.
        return targets + [b for b in self.bootstrap if b.address not in known]

    async def _exchange(self, session: aiohttp.ClientSession, target: Bootstrap) -> None:
        try:
            await exchange(session, self.state, target.address, target.fingerprint)
        except PeerUnreachable as exc:
            if target.address not in self._failing:
                log.warning("gossip with %s failed: %s", target.address, exc)
                self._failing.add(target.address)
            return
        if target.address in self._failing:
            log.info("gossip with %s works again", target.address)
            self._failing.discard(target.address)
