"""The standard `Server-Timing` header: where the time before the answer's headers went.

    route    this node (and the serving peer) deciding where the request goes
    network  the mesh hop: connect, TLS, transfer, minus what the serving peer reports
    engine   the engine until it started answering (prompt processing included)

An entry adds its own routing time to the serving peer's parts and calls the rest of the
wait "network". A peer's header is hostile input: parsed with caps, clamped to what the entry
measured itself, so a lying peer can shift time between parts but never invent time.
"""

from __future__ import annotations

import math
import re

MAX_HEADER = 512
_METRIC = re.compile(r"^\s*([A-Za-z][\w-]{0,31})\s*(?:;.*?\bdur=([0-9.]{1,16})\s*(?:;|$))?")


def parse(header: str | None) -> dict[str, float]:
    """Metric name → duration in ms; anything malformed is skipped."""
    out: dict[str, float] = {}
    if not header or len(header) > MAX_HEADER:
        return out
    for part in header.split(",")[:8]:
        match = _METRIC.match(part)
        if match is None or match.group(2) is None:
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            out[match.group(1)] = value
    return out


def split(route_ms: float, wait_ms: float, upstream: dict[str, float] | None) -> dict[str, float]:
    """Parts for this hop. `wait_ms` is from sending upstream to its headers; `upstream` is
    the serving peer's own parts, or None when the upstream is our own engine."""
    if upstream is None:
        return {"route": route_ms, "engine": wait_ms}
    engine = min(upstream.get("engine", 0.0), wait_ms)
    peer_route = min(upstream.get("route", 0.0), wait_ms - engine)
    return {"route": route_ms + peer_route, "network": wait_ms - engine - peer_route,
            "engine": engine}


def render(parts: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in parts.items())
