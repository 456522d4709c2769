"""A member that lies about a model file, as a real process for the namespace tests: it joins
the mesh with an invite, publishes a record saying it serves MODEL with the honest file's
sha256, and answers chunk requests from that file with one byte flipped in every chunk
(under the honest manifest, so only the per-chunk check can catch it).

    python -m tests.liar_peer DATA_DIR INVITE HOST MODEL FILE

Prints "ready" once its record reached the inviting member, then gossips until killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from pathlib import Path

from aiohttp import web

from covey.fetch.serve import FileShare
from covey.mesh import identity
from covey.mesh.client import exchange, redeem, signer_for
from covey.mesh.membership import parse_invite
from covey.mesh.peer_api import build_peer_app
from covey.mesh.peer_transport import HttpPeerTransport, Peer
from covey.mesh.transport import tls_identity


class Corrupting(FileShare):
    async def send_chunk(self, request: web.Request, sha256: str, index: int,
                         peer: str) -> web.StreamResponse:
        offset, length = (await self.manifest(sha256)).span(index)
        path = self.shared()[sha256]
        with path.open("rb") as f:
            f.seek(offset)
            data = bytearray(f.read(length))
        data[length // 2] ^= 0xFF
        return web.Response(body=bytes(data), content_type="application/octet-stream")


async def main(data_dir: Path, token: str, host: str, model: str, file: Path, sha: str,
               size: int) -> None:
    ident = identity.load_or_create(data_dir)
    invite = parse_invite(token)
    async with HttpPeerTransport(lambda *_: {}) as joining:
        state, _ = await redeem(joining, invite, ident, data_dir, time.time())
    tls = tls_identity(ident.key, data_dir)
    context = tls.server_context()
    files = Corrupting()
    files.register(sha, file)
    runner = web.AppRunner(build_peer_app(state, tls.fingerprint, files=files),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=context)
    await site.start()
    address = f"{host}:{runner.addresses[0][1]}"
    first = invite.reachable()[0]
    inviter = Peer(first.fingerprint, (first.address,))
    told = False
    async with HttpPeerTransport(signer_for(state)) as transport:
        while True:
            state.publish(time.time(), name="liar", addresses=[address],
                          tls_fingerprint=tls.fingerprint,
                          models=[{"id": model, "sha256": sha, "state": "ready",
                                   "size_bytes": size, "slots": 1}])
            await exchange(transport, state, inviter)
            if not told:
                print("ready", flush=True)
                told = True
            await asyncio.sleep(1.0)


if __name__ == "__main__":
    folder, served = Path(sys.argv[1]), Path(sys.argv[5])
    folder.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(folder, sys.argv[2], sys.argv[3], sys.argv[4], served,
                     hashlib.sha256(served.read_bytes()).hexdigest(), served.stat().st_size))
