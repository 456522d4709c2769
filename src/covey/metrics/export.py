"""Prometheus exposition of the node's models, read from live state at scrape time.

A collector over the model table (not counters updated on the hot path), so `/metrics`
always agrees with `/api/status`. One registry per node: no process-global state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from covey.metrics.share import SOURCES, ShareStore
from covey.router.table import ModelTable
from covey.types import EngineReady


class ModelCollector(Collector):
    def __init__(self, table: ModelTable, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        labels = ["model"]
        ready = GaugeMetricFamily("covey_model_ready", "1 when the model's engine serves",
                                  labels=labels)
        in_flight = GaugeMetricFamily("covey_model_in_flight",
                                      "requests being served or queued", labels=labels)
        queued = GaugeMetricFamily("covey_model_queue_depth", "requests waiting for a slot",
                                   labels=labels)
        ok = CounterMetricFamily("covey_requests_completed", "requests completed",
                                 labels=labels)
        failed = CounterMetricFamily("covey_requests_failed",
                                     "requests the engine failed", labels=labels)
        tokens = CounterMetricFamily("covey_completion_tokens", "completion tokens relayed",
                                     labels=labels)
        ttft = GaugeMetricFamily("covey_ttft_ms", "time to first token over the rolling "
                                 "window, milliseconds", labels=[*labels, "quantile"])
        tps = GaugeMetricFamily("covey_decode_tokens_per_second", "decode speed over the "
                                "rolling window", labels=[*labels, "quantile"])
        native = GaugeMetricFamily("covey_native_tokens_per_second",
                                   "native baseline measured straight against the engine",
                                   labels=labels)
        for m in self.table.models.values():
            mid = [m.id]
            ready.add_metric(mid, 1.0 if isinstance(m.engine.state, EngineReady) else 0.0)
            in_flight.add_metric(mid, m.in_flight)
            queued.add_metric(mid, m.queue_depth)
            ok.add_metric(mid, m.meter.requests_ok)
            failed.add_metric(mid, m.meter.requests_failed)
            tokens.add_metric(mid, m.meter.completion_tokens)
            # Missing measurements are left out, never exported as 0.
            for family, window in ((ttft, m.meter.ttft_ms), (tps, m.meter.tokens_per_s)):
                summary = window.summary(now)
                for q, value in (("0.5", summary.p50), ("0.95", summary.p95)):
                    if value is not None:
                        family.add_metric([m.id, q], value)
            if m.baseline is not None:
                native.add_metric(mid, m.baseline.tokens_per_s)
        yield from (ready, in_flight, queued, ok, failed, tokens, ttft, tps, native)


class ShareCollector(Collector):
    """The mesh share's windows, as `/api/status` shows them. Gauges, not counters: a
    window's counts fall as hours leave it."""

    def __init__(self, share: ShareStore) -> None:
        self.share = share

    def collect(self) -> Iterator[Metric]:
        ratio = GaugeMetricFamily("covey_mesh_share_ratio", "answers the mesh (this node or "
                                  "a peer) gave ÷ all answers to this node's clients",
                                  labels=["window", "by"])
        requests = GaugeMetricFamily("covey_mesh_share_requests", "answered client requests "
                                     "in the window, by who answered", labels=["window", "source"])
        tokens = GaugeMetricFamily("covey_mesh_share_tokens", "their tokens (kind: prompt or "
                                   "completion; an unreported prompt count is 0)",
                                   labels=["window", "source", "kind"])
        for name, window in self.share.snapshot().items():
            # No traffic: no share to export (never 0 or 1 for "nothing").
            for by in ("requests", "tokens"):
                value = window[f"share_by_{by}"]
                if value is not None:
                    ratio.add_metric([name, by], value)
            for source in SOURCES:
                requests.add_metric([name, source], window["requests"][source])
                for kind in ("prompt", "completion"):
                    tokens.add_metric([name, source, kind], window[f"{kind}_tokens"][source])
        yield from (ratio, requests, tokens)


class LedgerCollector(Collector):
    """Credits given and used per member, and balances, from this node's ledger (on the
    keeper, the mesh's). `ledger()` is the node's ledger service, or None without one."""

    def __init__(self, ledger: Callable[[], Any]) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        credits = GaugeMetricFamily("covey_ledger_credits", "credits per member in this "
                                    "node's ledger (kind: given, used or balance)",
                                    labels=["node", "kind"])
        service = self.ledger()
        if service is not None:
            for node, b in service.ledger.balances().items():
                for kind, value in (("given", b.given), ("used", b.used),
                                    ("balance", b.balance)):
                    credits.add_metric([node, kind], value)
        yield credits


def registry_for(table: ModelTable, share: ShareStore | None = None,
                 ledger: Callable[[], Any] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelCollector(table))
    if share is not None:
        registry.register(ShareCollector(share))
    if ledger is not None:
        registry.register(LedgerCollector(ledger))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
