"""The event loop `covey serve` (and the bench's floor relay) runs on: uvloop when installed.

A relay wakes once per token per stream; uvloop's libuv loop costs a fraction of the standard
loop's Python-level work per wake-up (issue 11: the node's CPU per relayed chunk against a bare
pipe's). The standard loop is the fallback, so a platform without a uvloop wheel still runs.
On uvloop, connecting to an IP address skips its resolver (see `_uvloop`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _numeric(host: object) -> bool:
    try:
        ipaddress.ip_address(host)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


async def connect_numeric(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                          address: tuple[Any, ...]) -> None:
    """Connect a non-blocking socket to an IP address, as the standard loop does: nothing
    to resolve, so no resolver call."""
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    ready: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_writer(fd, writable)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
    if error := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        raise OSError(error, f"Connect call failed {address}")


def factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(name, loop factory): uvloop's when it imports, else the standard loop's."""
    try:
        import uvloop
    # Not installed (or no wheel for this platform): the standard loop does the same work.
    except ImportError:
        return "asyncio", asyncio.new_event_loop
    return "uvloop", _uvloop(uvloop.Loop)


@functools.cache
def _uvloop(base: type[asyncio.AbstractEventLoop]) -> Callable[[], asyncio.AbstractEventLoop]:
    class Loop(base):  # type: ignore[valid-type,misc]  # a class known at run time
        """uvloop's `sock_connect` resolves even a numeric address in libuv's thread pool:
        a thread wake-up and back per connection, and aiohttp connects every client socket
        through it. An engine on loopback gets a new connection per request, so that was a
        cross-thread round trip (CPU, and time to first token) per prompt."""

        async def sock_connect(self, sock: socket.socket, address: Any) -> None:
            if (sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
                    and _numeric(address[0])):
                await connect_numeric(self, sock, address)
            else:
                await super().sock_connect(sock, address)

    return Loop


def name() -> str:
    return factory()[0]


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run, on the loop `factory` picks."""
    with asyncio.Runner(loop_factory=factory()[1]) as runner:
        return runner.run(main)
