"""Checking the path to one peer, layer by layer (6–11).

The probes travel the way prompts do: through the peer transport's kept, pinned connection.
When they pass, that connection itself proved layers 6 (TCP) and 7 (TLS pinned to the signed
key), and no new connection or handshake is spent. Only when a probe fails are the lower
layers checked on their own fresh connections, to name where the path breaks.

Every check has a deadline and turns each way of failing into a named layer with a fix.
The one-token probe uses a fixed synthetic prompt, never a user's, and is marked so the
peer does not count it as real traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil

from covey.health.layers import LayerResult, failed, passed
from covey.mesh.addresses import split_address
from covey.mesh.peer_stream import client_context
from covey.mesh.peer_transport import Peer, PeerError, PeerTransport

LARGE_PROBE_BYTES = 64 * 1024
PROBE_HEADER = "x-covey-probe"  # on a one-token probe: not real traffic, do not measure it
TOKEN_PROMPT = "Reply with one word: ready."
VPN_PREFIXES = ("tailscale", "wg", "tun", "utun", "zt", "ppp", "ipsec", "nordlynx", "proton")



@dataclass(frozen=True)
class Target:
    """A peer to check, and how long ago its record was signed."""

    peer: Peer
    gossiped_s_ago: float | None = None

    @property
    def label(self) -> str:
        return self.peer.label

    @property
    def address(self) -> str:
        """The address to diagnose: the one that answered last, else the first."""
        return self.peer.addresses[0] if self.peer.addresses else "?"

    def at(self, address: str) -> Target:
        """The same peer, diagnosed at `address`."""
        return Target(Peer(self.peer.fingerprint, (address,), self.peer.name,
                           self.peer.node_id), self.gossiped_s_ago)


def token_timeout(timeout_s: float) -> float:
    """A token needs the prompt processed first, on an engine that may be busy."""
    return max(10.0, 3 * timeout_s)


def vpn_interfaces() -> list[str]:
    """Interface names that suggest a VPN or tunnel (they often carry kill switches)."""
    return sorted(n for n in psutil.net_if_addrs() if n.lower().startswith(VPN_PREFIXES))


async def tcp_connect(t: Target, timeout_s: float) -> LayerResult:
    host, port = split_address(t.address)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except ConnectionRefusedError:
        return failed(6, f"connection refused on {t.address}",
                      "Covey is not running there (or listens on another port): start it with "
                      f"`covey serve` on {t.label}")
    except TimeoutError:
        seen = (f" while the peer gossiped {t.gossiped_s_ago:.0f}s ago"
                if t.gossiped_s_ago is not None else "")
        vpns = vpn_interfaces()
        hint = f" (interfaces seen: {', '.join(vpns)})" if vpns else ""
        return failed(6, f"TCP connect to {t.address} timed out after {timeout_s:.0f}s{seen}",
                      "a firewall or VPN kill switch is likely dropping mesh traffic"
                      f"{hint}; allow TCP port {port} between the two machines")
    except OSError as exc:
        return failed(6, f"cannot reach {t.address}: {exc.strerror or exc}",
                      "no route to that address from here: check that both machines are on "
                      "the same network or VPN, and the peer's --advertise address")
    writer.close()
    return passed(6, f"connected to {t.address}")


async def tls_handshake(t: Target, timeout_s: float) -> LayerResult:
    host, port = split_address(t.address)
    try:  # no CA (client_context): the pin below is the check
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_context()), timeout_s)
    except TimeoutError:
        return failed(7, f"TLS handshake with {t.address} timed out",
                      "something accepts connections there but does not answer TLS: another "
                      "program on that port, a proxy, or a stalled node")
    except (ssl.SSLError, OSError) as exc:
        return failed(7, f"TLS handshake with {t.address} failed: {exc}",
                      f"what listens on {t.address} is not a Covey mesh listener; check the "
                      "port and the peer's --mesh-port/--advertise")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    seen = hashlib.sha256(der).hexdigest()
    expected = t.peer.fingerprint
    if not expected:
        return failed(7, f"no signed TLS fingerprint for {t.label}: unusable (nothing to "
                         "pin)", f"the peer runs an older or broken Covey: upgrade {t.label}")
    if seen != expected:
        return failed(7, f"TLS key at {t.address} is {seen[:16]}…, but {t.label} signed "
                         f"{expected[:16]}…",
                      "not the same node, or a man-in-the-middle: if the peer was reinstalled "
                      "it must rejoin with a new invite; otherwise find out what answers on "
                      "that address")
    return passed(7, f"TLS key matches the signed record ({seen[:16]}…)")


_REFUSALS = {
    "not_member": "this node is not accepted as a member there: the peer belongs to another "
                  "mesh, or this node was revoked (see `covey status`)",
    "stale": "the two clocks disagree: enable time sync (NTP) on both machines",
    "bad_signature": "the request was altered on the way: something on the path rewrites "
                     "traffic",
    "replay": "the request was seen twice: something on the path replays traffic",
}


async def mesh_probe(transport: PeerTransport, t: Target, size: int,
                     timeout_s: float) -> tuple[LayerResult, dict[str, Any]]:
    """Layer 8 (size 0) or 9 (size > 0): an authenticated echo (signed, or on a connection
    the peer already holds as this node's); the answer lists the peer's engines."""
    layer = 9 if size else 8
    body = json.dumps({"pad": "x" * size}).encode()
    try:
        async with asyncio.timeout(timeout_s), transport.control(t.peer.fingerprint):
            async with await transport.post(t.peer, "/mesh/probe", body,
                                            timeout_s=timeout_s) as r:
                raw = await r.read()
                status = r.status
    except (TimeoutError, PeerError) as exc:
        if isinstance(exc, PeerError) and exc.kind != "timeout":
            return failed(layer, f"probe to {t.label} failed: {exc}",
                          "the connection broke during the probe: check the path (proxy, "
                          "VPN) and the peer's log"), {}
        if layer == 9:
            return failed(9, f"a {size // 1024} KiB probe to {t.label} timed out while small "
                             "ones pass",
                          "an MTU or fragmentation black hole on the path (common with VPNs "
                          "and tunnels): large packets are dropped. Lower the tunnel "
                          "interface's MTU (e.g. 1280) or allow ICMP 'fragmentation needed' "
                          "so path MTU discovery works"), {}
        return failed(8, f"the mesh probe to {t.label} timed out",
                      "the peer accepted TLS but did not answer in time: it may be overloaded "
                      "or stalled; check `covey status` there"), {}
    try:
        answer = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        answer = None
    if status == 404:
        return failed(layer, f"{t.label} does not know /mesh/probe",
                      "the peer runs an older Covey: upgrade it"), {}
    if status != 200 or not isinstance(answer, dict):
        err = answer.get("error", {}) if isinstance(answer, dict) else {}
        code = err.get("code") if isinstance(err, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        return failed(layer, f"{t.label} refused the mesh probe: HTTP {status} "
                             f"{code or ''} {message or ''}".strip(),
                      _REFUSALS.get(str(code), "see the peer's log for why it refused")), {}
    if answer.get("bytes") != len(body) or answer.get("sha256") != hashlib.sha256(
            body).hexdigest():
        return failed(layer, f"the probe body arrived altered ({answer.get('bytes')} of "
                             f"{len(body)} bytes)",
                      "something on the path truncates or rewrites large requests (a proxy "
                      "with a body limit?)"), {}
    return passed(layer, f"{len(body)} bytes echoed" if layer == 9
                  else "authenticated probe accepted"), answer


def engines_ready(t: Target, answer: dict[str, Any], models: list[str]) -> LayerResult:
    states = answer.get("models") if isinstance(answer.get("models"), dict) else {}
    assert isinstance(states, dict)
    for model in models:
        info = states.get(model) if isinstance(states.get(model), dict) else None
        state = info.get("state") if info else "absent"
        if state != "ready":
            reason = f": {info.get('reason')}" if info and info.get("reason") else ""
            return failed(10, f"engine for {model} on {t.label} is {state}{reason}",
                          f"see `covey status` on {t.label}: a crashed engine restarts by "
                          "itself; a load failure needs the fix its reason names")
    return passed(10, f"{len(models)} model(s) ready" if models else "serves no models")


async def one_token(transport: PeerTransport, t: Target, model: str,
                    timeout_s: float, embeddings: bool = False) -> LayerResult:
    """Layer 11: a real request crosses the path and an answer comes back. `embeddings`:
    the model is an embedding model, asked for one vector (a chat would be refused)."""
    if embeddings:
        return await one_vector(transport, t, model, timeout_s)
    body = json.dumps({"model": model, "max_tokens": 1, "stream": True, "temperature": 0,
                       "messages": [{"role": "user", "content": TOKEN_PROMPT}]}).encode()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with await transport.post(t.peer, "/mesh/v1/chat/completions", body,
                                            timeout_s=timeout_s,
                                            headers={PROBE_HEADER: "1"}) as r:
                if r.status != 200:
                    return _refused(model, t, r.status, await r.content.read(2048))
                tail = b""
                async for chunk in r.content.iter_any():
                    tail = tail[-64:] + chunk
                    if b"data: {" in tail and b'"choices"' in tail:
                        ms = (time.perf_counter() - started) * 1000
                        return passed(11, f"{model}: first token in {ms:.0f} ms")
                    if b"data: [DONE]" in tail:
                        break
    except TimeoutError:
        return failed(11, f"no token from {model} on {t.label} within {timeout_s:.0f}s",
                      "the engine is overloaded or stuck: see `covey status` there")
    except (aiohttp.ClientError, PeerError) as exc:
        return failed(11, f"the token stream from {t.label} broke: {exc}",
                      "the engine or the path failed mid-answer: see the peer's log")
    return failed(11, f"{model} on {t.label} ended without a token",
                  "the engine answered but produced nothing: see the peer's log")


MAX_VECTOR_ANSWER = 256 * 1024  # one embedding of a few thousand floats, as JSON


async def one_vector(transport: PeerTransport, t: Target, model: str,
                     timeout_s: float) -> LayerResult:
    body = json.dumps({"model": model, "input": TOKEN_PROMPT}).encode()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with await transport.post(t.peer, "/mesh/v1/embeddings", body,
                                            timeout_s=timeout_s,
                                            headers={PROBE_HEADER: "1"}) as r:
                raw = await r.content.read(MAX_VECTOR_ANSWER)
                if r.status != 200:
                    return _refused(model, t, r.status, raw)
    except TimeoutError:
        return failed(11, f"no vector from {model} on {t.label} within {timeout_s:.0f}s",
                      "the engine is overloaded or stuck: see `covey status` there")
    except (aiohttp.ClientError, PeerError) as exc:
        return failed(11, f"the answer from {t.label} broke: {exc}",
                      "the engine or the path failed mid-answer: see the peer's log")
    if not _has_vector(raw):
        return failed(11, f"{model} on {t.label} answered without a vector",
                      "the engine answered but produced nothing: see the peer's log")
    ms = (time.perf_counter() - started) * 1000
    return passed(11, f"{model}: a vector in {ms:.0f} ms")


def _refused(model: str, t: Target, status: int, answer: bytes) -> LayerResult:
    """Layer 11 failed: the peer's engine answered with an error status."""
    text = answer[:2048].decode(errors="replace")
    return failed(11, f"{model} on {t.label} answered HTTP {status}: {text[:200]}",
                  f"the engine took the request but could not answer: see the log of "
                  f"{t.label}")


def _has_vector(raw: bytes) -> bool:
    """Pure: is `raw` an OpenAI embeddings answer with a non-empty vector of numbers?"""
    try:
        data = json.loads(raw)
        vector = data["data"][0]["embedding"]
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    return (isinstance(vector, list) and bool(vector)
            and all(isinstance(x, int | float) for x in vector[:8]))


async def diagnose(transport: PeerTransport, t: Target, timeout_s: float) -> list[LayerResult]:
    """Layers 6 and 7 on fresh connections, at the address that answered last (else each
    advertised address until one connects): where the path to the peer breaks."""
    preferred = transport.address(t.peer.fingerprint)
    addresses = ([preferred] if preferred in t.peer.addresses
                 else list(t.peer.addresses[:4]) or ["?"])
    results: list[LayerResult] = []
    for address in addresses:
        here = t.at(address)
        results = [await tcp_connect(here, timeout_s)]
        if results[-1].ok:
            results.append(await tls_handshake(here, timeout_s))
            break
    return results


async def check_peer(transport: PeerTransport, t: Target, models: list[str],
                     token_models: list[str], timeout_s: float,
                     large_bytes: int = LARGE_PROBE_BYTES,
                     embedding_models: frozenset[str] = frozenset(),
                     reuse_large: LayerResult | None = None) -> list[LayerResult]:
    """Layers 6–11 in order, stopping at the first failure. `embedding_models`: those
    of `token_models` asked for a vector instead of a token. `reuse_large`: an earlier
    layer-9 pass that stands in for the large probe (health/state.py's `large_probe_due`);
    the engines' states then come from the small probe's answer."""
    small, answer = await mesh_probe(transport, t, 0, timeout_s)
    if small.ok:
        where = transport.address(t.peer.fingerprint) or t.address  # the one that answered
        results = [passed(6, f"connected to {where} (kept connection)"),
                   passed(7, f"TLS key matches the signed record "
                             f"({t.peer.fingerprint[:16]}…)"), small]
    else:
        results = await diagnose(transport, t, timeout_s)
        if all(r.ok for r in results):
            results.append(small)
    if results[-1].ok and reuse_large is not None:
        results.append(reuse_large)
    elif results[-1].ok:
        large, answer = await mesh_probe(transport, t, large_bytes, timeout_s)
        results.append(large)
    if results[-1].ok:
        results.append(engines_ready(t, answer, models))
    if results[-1].ok:
        for model in token_models:
            results = [r for r in results if r.layer != 11]
            results.append(await one_token(transport, t, model, token_timeout(timeout_s),
                                           embeddings=model in embedding_models))
            if not results[-1].ok:
                break
    return results
