"""`POST /api/ledger/grant`: the mesh's creator grants a member credits (an `adjust` entry
with reason `grant` in the mesh ledger, which only the creator keeps).

Body `{"node": NODE_ID, "credits": number, "note": text}`; a negative number takes credits
back. Like every client endpoint it is loopback-only or keyed; a member that is not the
creator answers 403, naming the node that can.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from aiohttp import web

from covey.errors import BadRequest, Forbidden
from covey.ledger.service import LedgerService

MAX_BODY = 4096
MAX_GRANT = 1e9  # credits in one grant


class LedgerRoutes:
    def __init__(self, service: LedgerService) -> None:
        self.service = service

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/api/ledger/grant", self.grant)

    async def grant(self, request: web.Request) -> web.Response:
        if not self.service.keeper:
            keeper = self.service.keeper_record()
            raise Forbidden("only the keeper of the mesh ledger (the mesh's creator, or the "
                            "member it designates) grants credits"
                            + (f": run this on {keeper.name or keeper.node_id}"
                               if keeper else ""), code="not_keeper")
        raw = await request.content.read(MAX_BODY + 1)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("body must be JSON: {\"node\", \"credits\", \"note\"}") from exc
        if not isinstance(data, dict) or len(raw) > MAX_BODY:
            raise BadRequest("body must be a JSON object of at most 4 KiB")
        node, credits, note = data.get("node"), data.get("credits"), data.get("note", "")
        known = {r.node_id for r in self.service.records()} | {
            self.service.identity.node_id}
        if not isinstance(node, str) or node not in known:
            raise BadRequest("node must be the id of a member this node knows (see `covey "
                             "status`)", param="node")
        if isinstance(credits, bool) or not isinstance(credits, int | float) \
                or not math.isfinite(credits) or credits == 0 or abs(credits) > MAX_GRANT:
            raise BadRequest(f"credits must be a non-zero number within ±{MAX_GRANT:g}",
                             param="credits")
        if not isinstance(note, str) or len(note) > 1024:
            raise BadRequest("note must be text of at most 1024 characters", param="note")
        entry = await asyncio.to_thread(self.service.ledger.adjust, node, float(credits),
                                        "grant", now=time.time(), note=note)
        balance = await asyncio.to_thread(self.service.ledger.balance, node)
        return web.json_response({"seq": entry.seq, "node": node, "credits": entry.credits,
                                  "balance": balance.balance})
