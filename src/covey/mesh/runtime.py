"""The mesh inside a running node: publish our record, gossip with peers, sign peer calls.

`run()` loops every `interval_s`: publish a fresh record (models, load, measurements) when it
changed or every sixth round, drop expired records, push-pull with a few random peers that may
lack something (gossip.quiet_peers) plus any bootstrap address (the invite's contacts), and
renew this node's certificate when a third of its validity is left. On the mesh's creator, every
sixth round also picks up a revocation list `covey revoke` wrote. The peer transport tries a
peer's addresses in order and remembers the one that answers. A failed exchange is logged
once per peer state change, never fatal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from covey.mesh import remembered
from covey.mesh.authority import AuthorityLink, AuthorityOffline
from covey.mesh.client import exchange, request_renewal, signer_for
from covey.mesh.gossip import choose_peers, heard_from, quiet_peers
from covey.mesh.membership import MembershipError
from covey.mesh.peer_transport import Peer, PeerError, PeerTransport, peer_of
from covey.mesh.records import NodeRecord
from covey.mesh.remembered import Bootstrap
from covey.mesh.renewal import needs_renewal, renew_locally, renewal_request
from covey.mesh.state import MeshState
from covey.mesh.transport import TlsIdentity

log = logging.getLogger(__name__)
FANOUT = 3
# A peer that began an exchange with this node within this many rounds is not called back:
# an exchange swaps digests and records both ways, so a second one started from this side
# would repeat it (two nodes that both call each other every round did the work twice).
# Over one round, so that a peer on a slightly longer period is still counted as calling.
HEARD_ROUNDS = 1.5
# An unchanged record is re-signed after this many rounds, and a peer's record older than
# STALE_ROUNDS is stale (health/monitor.py): three rounds for gossip to carry it. Each
# re-signed record costs its node a signature and a seq write, and every peer an exchange:
# every third round instead, an idle pair spent a fifth more CPU (docs/bench.md).
REFRESH_ROUNDS = 6
STALE_ROUNDS = REFRESH_ROUNDS + 3
# A peer that holds every record this node holds is called again after this many rounds
# even if nothing changed here (gossip.quiet_peers): as often as records are re-signed.
QUIET_ROUNDS = REFRESH_ROUNDS


class MeshRuntime:
    def __init__(self, state: MeshState, tls: TlsIdentity, addresses: list[str],
                 describe: Callable[[], dict[str, Any]], interval_s: float,
                 bootstrap: list[Bootstrap], rng: random.Random | None = None,
                 measure: Callable[[], dict[str, Any]] = dict) -> None:
        self.state = state
        self.tls = tls
        self.addresses = addresses  # where peers reach this node, best first
        self.describe = describe  # the node's models, state and hardware as record fields
        self.measure = measure  # its traffic measurements (state.MEASURED), when signing
        self.interval_s = interval_s
        self.bootstrap = bootstrap
        self.rng = rng or random.Random()
        self.transport: PeerTransport | None = None  # set by the node before run()
        self._signer = signer_for(state)
        self._failing: set[str] = set()
        self._problem: str | None = None
        self.authority: AuthorityLink | None = None  # reaches the mesh's creator (members)
        self._renewing: asyncio.Task[None] | None = None
        self._renew_failing = False

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

    def sign(self, audience: str, path: str, body: bytes) -> dict[str, str]:
        """The transport's signer (see `client.signer_for`)."""
        return self._signer(audience, path, body)

    def publish(self) -> None:
        problem = self.problem()
        if problem != self._problem:
            if problem:
                log.error("mesh: %s", problem)
            self._problem = problem
        # Re-signed when it changes, else every REFRESH_ROUNDS: signing an unchanged record
        # each round costs an idle node for nothing. Changed measurements alone also wait
        # for the refresh (MeshState.publish).
        self.state.publish(time.time(), ttl_s=max(30.0, 10 * self.interval_s),
                           refresh_s=REFRESH_ROUNDS * self.interval_s, addresses=self.addresses,
                           tls_fingerprint=self.tls.fingerprint, measured=self.measure,
                           **self.describe())

    async def run(self) -> None:
        assert self.transport is not None, "the node sets the transport before run()"
        transport = self.transport
        for round_ in itertools.count():
            if round_ % REFRESH_ROUNDS == 0:
                # A stat of the file every round cost the creator's idle node ~0.2 ms of
                # cold CPU each time; a revocation waits at most one refresh for it.
                self.state.reload_revocations()
            self.publish()
            self.state.table.expire(time.time())
            targets = self._targets()
            # A node gone from the roster (and not remembered) keeps no pool of connections.
            await transport.forget({r.tls_fingerprint for r in self.peers(time.time())}
                                   | {t.fingerprint for t in targets})
            await asyncio.gather(*(self._exchange(transport, t) for t in targets))
            self._remember()
            if (self._renewing is None or self._renewing.done()) and self._renewal_due():
                self._renewing = asyncio.create_task(self.renew(transport))
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

    def _renewal_due(self) -> bool:
        """Whether `renew` has work: asked every round, a task for it each round was an idle
        node's cost for nothing."""
        now = time.time()
        try:
            return needs_renewal(self.state.own_cert(now), now)
        except MembershipError:
            return True  # renew() says why, and what to do

    async def renew(self, transport: PeerTransport) -> None:
        """Renew this node's certificate if a third or less of its validity is left: the
        creator locally; a member at the creator, or through any peer that forwards."""
        now = time.time()
        try:
            cert = self.state.own_cert(now)
        except MembershipError as exc:
            log.error("mesh: this node's certificate is unusable (%s); join again with a new "
                      "invite", exc)
            return
        if not needs_renewal(cert, now):
            return
        try:
            if self.state.authority is not None:
                fresh = renew_locally(self.state, now)
            else:
                fresh = self.state.set_cert(await self._ask_renewal(transport), time.time())
        except (AuthorityOffline, PeerError, MembershipError) as exc:
            # Retried every round; said once per streak of failures, not every round.
            if not self._renew_failing:
                log.warning("mesh: could not renew this node's certificate (expires in "
                            "%.0fs), retrying every round: %s", cert.expires_at - now, exc)
            self._renew_failing = True
            return
        self._renew_failing = False
        log.info("mesh: certificate renewed until %.0f", fresh.expires_at)

    async def _ask_renewal(self, transport: PeerTransport) -> bytes:
        request = renewal_request(self.state, time.time())
        if self.authority is None:
            raise AuthorityOffline("this node has no way to reach the mesh's creator")
        try:
            return await self.authority.renew(request)
        except AuthorityOffline as offline:
            # The creator may be reachable from a peer though not from here: ask one.
            creator = self.state.authority_record(time.time())
            for record in self.peers(time.time()):
                if creator is not None and record.node_id == creator.node_id:
                    continue
                try:
                    return await request_renewal(transport, peer_of(record), request)
                except PeerError:
                    continue
            raise offline

    def _remember(self) -> None:
        """Keep peers.json current, so a restart (even on new ports) finds the mesh again."""
        reached = self.transport.address if self.transport else (lambda _fp: None)
        live = [Bootstrap(address, r.tls_fingerprint) for r in self.peers(time.time())
                if r.tls_fingerprint and r.addresses
                and (address := reached(r.tls_fingerprint) or r.addresses[0])]
        merged = remembered.merge(live, self.bootstrap)
        if merged != self.bootstrap and live:
            self.bootstrap = merged
            try:
                remembered.save(self.state.data_dir, merged)
            except OSError as exc:
                log.warning("could not remember peers in %s: %s", self.state.data_dir, exc)

    def _targets(self) -> list[Peer]:
        now = time.time()
        by_id = {r.node_id: r for r in self.peers(now) if r.addresses and r.tls_fingerprint}
        mono, began, synced = time.monotonic(), self.state.gossiped_in, self.state.synced
        recent = heard_from(began, mono, HEARD_ROUNDS * self.interval_s)
        for gone in set(began) - recent:
            del began[gone]
        quiet_s = QUIET_ROUNDS * self.interval_s
        for gone in [nid for nid, (_, at) in synced.items() if not 0 <= mono - at < quiet_s]:
            del synced[gone]
        # Peers with nothing to gain from a call are skipped: an idle mesh makes one
        # exchange per record re-signed, not one every round.
        quiet = quiet_peers(synced, self.state.table.version, mono, quiet_s)
        chosen = choose_peers(sorted(set(by_id) - recent - quiet), self.node_id, FANOUT,
                              self.rng)
        targets = [peer_of(by_id[n]) for n in chosen]
        known = {r.tls_fingerprint for r in by_id.values()}
        # Remembered peers (the invite's contacts at first) until gossip has told us about
        # them: one target per node (TLS key), with all the addresses remembered for it.
        remembered_at: dict[str, list[str]] = {}
        for b in self.bootstrap:
            if b.fingerprint not in known:
                remembered_at.setdefault(b.fingerprint, []).append(b.address)
        return targets + [Peer(fp, tuple(addresses), name=addresses[0])
                          for fp, addresses in remembered_at.items()]

    async def _exchange(self, transport: PeerTransport, target: Peer) -> None:
        where = target.addresses[0]
        try:
            await exchange(transport, self.state, target,
                           timeout_s=max(5.0, 4 * self.interval_s))
        except PeerError as exc:
            if where not in self._failing:
                log.warning("gossip with %s failed: %s", target.label, exc)
                self._failing.add(where)
            return
        if where in self._failing:
            log.info("gossip with %s works again", target.label)
            self._failing.discard(where)
