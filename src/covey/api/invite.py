"""`POST /api/invite`: a single-use invite to this node's mesh, minted wherever it runs.

Body (optional) `{"ttl_s": seconds}`. On the mesh's creator the invite is minted here; on any
other member this node asks the creator over the mesh (which must be online). Either way the
invite's contacts are this node's addresses first, so the joiner redeems it here. Needs the
API key when the node has one, like every other API path.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from covey.errors import BadRequest, Unavailable, UpstreamFailed
from covey.mesh.authority import AuthorityLink, AuthorityOffline
from covey.mesh.membership import Contact, InviteBook
from covey.mesh.peer_transport import PeerError
from covey.mesh.runtime import MeshRuntime

MAX_TTL_S = 7 * 24 * 3600.0
MAX_BODY = 4096


class InviteRoutes:
    def __init__(self, mesh: MeshRuntime, link: AuthorityLink) -> None:
        self.mesh = mesh
        self.link = link

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/api/invite", self.invite)

    def contacts(self) -> list[Contact]:
        return [Contact(address=a, fingerprint=self.mesh.tls.fingerprint)
                for a in self.mesh.addresses]

    async def invite(self, request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_BODY + 1)
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("body must be JSON: {\"ttl_s\": seconds}") from exc
        ttl_s = data.get("ttl_s", 3600.0) if isinstance(data, dict) else None
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) \
                or not 0 < ttl_s <= MAX_TTL_S:
            raise BadRequest(f"ttl_s must be a number of seconds, 0..{MAX_TTL_S:.0f}",
                             param="ttl_s")
        state = self.mesh.state
        if state.authority is not None:
            token = await asyncio.to_thread(self._mint_here, float(ttl_s))
        else:
            try:
                token = await self.link.invite(float(ttl_s), self.contacts())
            except AuthorityOffline as exc:
                raise Unavailable(str(exc), code="creator_offline", retry_after=5) from exc
            except PeerError as exc:
                raise UpstreamFailed(f"the mesh's creator refused the invite: {exc}",
                                     code="creator_refused") from exc
        return web.json_response({"invite": token})

    def _mint_here(self, ttl_s: float) -> str:
        assert self.mesh.state.authority is not None
        book = InviteBook(self.mesh.state.data_dir / "invites.db")
        try:
            return book.mint(self.mesh.state.authority, self.contacts(), time.time(),
                             ttl_s).token()
        finally:
            book.close()
