"""A TCP proxy that stops forwarding a connection's uploads after `--limit` bytes: a path
that drops large packets (an MTU black hole) while small ones pass. For fault tests.

    python -m tests.stalling_proxy --target PORT --limit BYTES

Prints `PROXY-LISTENING <port>` once serving on 127.0.0.1. A process of its own, so that
stopping it closes every socket it holds, however a connection was caught mid-accept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
    sent = 0
    with contextlib.suppress(ConnectionError):
        while data := await src.read(65536):
            sent += len(data)
            if limit is not None and sent > limit:
                await asyncio.Event().wait()  # swallowed: the packets never arrive
            dst.write(data)
            await dst.drain()
    dst.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--limit", type=int, required=True)
    args = parser.parse_args()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", args.target)
        await asyncio.gather(_pipe(reader, up_w, args.limit), _pipe(up_r, writer, None))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"PROXY-LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
