"""covey.event_loop: uvloop when installed, the standard loop otherwise; the bench's ratio."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import pytest

from covey import event_loop
from covey.bench.relay import cpu_floor_ratio, goals


async def _loop_type() -> str:
    loop = type(asyncio.get_running_loop())
    return "uvloop" if any(c.__module__.startswith("uvloop") for c in loop.__mro__) \
        else loop.__module__.split(".")[0]


def test_runs_on_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.name() == "uvloop"
    assert event_loop.run(_loop_type()) == "uvloop"


def test_falls_back_to_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets when absent
    assert event_loop.name() == "asyncio"
    assert event_loop.run(_loop_type()) == "asyncio"


@pytest.mark.parametrize(("node_us", "floor_us", "ratio"), [
    (120.0, 100.0, 1.2), (50.0, 100.0, 0.5), (100.0, 0.0, None),
])
def test_cpu_floor_ratio(node_us: float, floor_us: float, ratio: float | None) -> None:
    assert cpu_floor_ratio(node_us, floor_us) == (pytest.approx(ratio) if ratio else None)


def test_goals_leave_an_unmeasured_figure_unjudged() -> None:
    result = {"ratio_1_stream": 1.0, "ratio_4_streams": 0.9, "ttft_added_ms_p50": 1.0,
              "cpu_us_per_chunk": 60.0, "cpu_floor_ratio": None, "mesh_ratio_1_stream": 1.0,
              "mesh_ratio_4_streams": 1.0, "mesh_ttft_added_ms_p50": 3.0}
    judged = goals(result)
    assert judged["cpu_floor_ratio"] == {"goal": 1.2, "met": None}
    assert judged["cpu_us_per_chunk"]["met"] is False
    assert judged["ratio_4_streams"]["met"] is False and judged["ratio_1_stream"]["met"] is True


def test_cpu_seconds_counts_this_process_finely() -> None:
    """No timing assertion: only that work shows up and the clock never runs backwards."""
    from covey.bench.relay import cpu_seconds

    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    assert cpu_seconds(os.getpid()) > before > 0


async def _connects(host: str) -> tuple[bytes, int]:
    """Connect an aiohttp-style non-blocking socket to a local server by `host`; (what the
    server said, how many times the loop's resolver was asked)."""
    loop = asyncio.get_running_loop()
    asked = 0
    resolve = loop.getaddrinfo

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal asked
        asked += 1
        return await resolve(*args, **kwargs)

    loop.getaddrinfo = counted  # type: ignore[method-assign]

    async def hello(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello")
        await w.drain()
        w.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with sock:
            await loop.sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock.dup())
            said = await reader.read()
            writer.close()
    return said, asked


def test_connecting_to_an_ip_address_asks_no_resolver() -> None:
    """uvloop would resolve even 127.0.0.1 in its thread pool (a thread round trip per
    engine connection); the node's loop connects to an IP address directly."""
    pytest.importorskip("uvloop")
    assert event_loop.run(_connects("127.0.0.1")) == (b"hello", 0)
    said, _ = event_loop.run(_connects("localhost"))  # a name is still resolved
    assert said == b"hello"


async def _refused() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with sock:
            await asyncio.get_running_loop().sock_connect(sock, probe.getsockname())


def test_a_refused_connection_raises_as_on_the_standard_loop() -> None:
    with pytest.raises(ConnectionRefusedError):
        event_loop.run(_refused())
