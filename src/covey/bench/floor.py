"""The cheapest possible relay: a TCP byte pipe between client and engine, for calibration.

`covey bench` runs it beside the node so that the node's CPU per relayed chunk can be read
against what any relay process costs on the same machine (on virtual machines, waking a
process once per token costs far more than the few microseconds of work it then does).

    python -m covey.bench.floor --upstream 127.0.0.1:PORT   → prints `FLOOR-LISTENING <port>`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from covey import event_loop


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # either side hung up: the other direction's close ends the pair
    finally:
        with contextlib.suppress(ConnectionError):
            writer.close()


async def _serve(upstream_host: str, upstream_port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(upstream_host, upstream_port)
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"FLOOR-LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True, help="host:port of the engine")
    host, port = p.parse_args().upstream.rsplit(":", 1)
    # The node's loop, so that the floor is what a relay on that loop costs at the least.
    event_loop.run(_serve(host, int(port)))


if __name__ == "__main__":
    main()
