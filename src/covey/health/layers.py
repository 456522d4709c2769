"""The eleven layers a prompt crosses, from this node to one token back from a peer's model.

Each check yields a `LayerResult`: ok (True/False, None when not checked), what was seen,
and for a failure the fix. `settle()` turns a list of results into a report where the first
failure silences the layers above it: a refused connection is one problem, not five.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NAMES = {
    1: "local node running",
    2: "local engine ready",
    3: "mesh membership",
    4: "discovery",
    5: "peer in roster",
    6: "TCP connect",
    7: "TLS and key pinning",
    8: "mesh probe",
    9: "large probe",
    10: "peer engine ready",
    11: "one token back",
}
PEER_LAYERS = range(5, 12)
LOCAL_LAYERS = range(1, 5)


@dataclass(frozen=True)
class LayerResult:
    layer: int
    ok: bool | None
    detail: str
    fix: str = ""

    @property
    def name(self) -> str:
        return NAMES[self.layer]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "name": self.name}


def passed(layer: int, detail: str) -> LayerResult:
    return LayerResult(layer, True, detail)


def failed(layer: int, detail: str, fix: str) -> LayerResult:
    return LayerResult(layer, False, detail, fix)


def skipped(layer: int, detail: str) -> LayerResult:
    return LayerResult(layer, None, detail)


def first_failure(results: list[LayerResult]) -> LayerResult | None:
    return next((r for r in results if r.ok is False), None)


def settle(results: list[LayerResult], layers: range) -> list[LayerResult]:
    """One result per layer in `layers`, in order. After the first failure, every higher
    layer is 'not checked' (its own result, if any, is noise caused by the failure)."""
    by_layer = {r.layer: r for r in results}
    out: list[LayerResult] = []
    broken: LayerResult | None = None
    for layer in layers:
        if broken is not None:
            out.append(skipped(layer, f"not checked: layer {broken.layer} "
                                      f"({broken.name}) failed"))
            continue
        result = by_layer.get(layer) or skipped(layer, "not checked yet")
        out.append(result)
        if result.ok is False:
            broken = result
    return out


def report(results: list[LayerResult], checked_at: float | None) -> dict[str, Any]:
    """The JSON shape of one peer's health in /api/status and `covey doctor --json`."""
    failure = first_failure(results)
    checked = [r for r in results if r.ok is not None]
    return {"ok": None if not checked else failure is None, "checked_at": checked_at,
            "first_failure": failure.as_dict() if failure else None,
            "layers": [r.as_dict() for r in results]}
