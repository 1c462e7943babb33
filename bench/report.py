"""The report: headline metrics, the issue's targets, the printed table and ``report.json``."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REQUIRED_KEYS = (
    "ceiling_img_s",
    "invoke_grpc_envoy_c1_p50_ms",
    "invoke_grpc_envoy_c16_img_s",
    "invoke_grpc_envoy_c16_p99_ms",
    "invoke_grpc_direct_c16_img_s",
    "invoke_rest_envoy_c16_img_s",
    "invoke_rest_upload_envoy_c16_img_s",
    "get_rest_envoy_c16_rps",
    "get_grpc_direct_c16_rps",
    "get_rest_envoy_c16_p99_ms",
    "list_rest_envoy_c16_rps",
    "delete_grpc_envoy_c16_rps",
    "mlserver_best_c16_img_s",
    "mlserver_best_config",
    "single_image_inprocess_ms",
    "server_rss_mb",
    "server_cpu_ms_per_invoke",
    "envoy_cpu_ms_per_invoke",
    "cassandra_cpu_ms_per_invoke",
    "ceiling_cpu_ms_per_img",
    "mlserver_best_cpu_ms_per_infer",
    "invoke_memory_grpc_envoy_c16_img_s",
    "memory_server_cpu_ms_per_invoke",
    # round four: the production shape (one CPU each) and open-loop latency
    "invoke_split_grpc_envoy_c16_img_s",
    "split_server_cpu_ms_per_invoke",
    "split_envoy_cpu_ms_per_invoke",
    "split_cassandra_cpu_ms_per_invoke",
    "mlserver_1cpu_best_c16_img_s",
    "mlserver_1cpu_best_config",
    "mlserver_1cpu_best_cpu_ms_per_infer",
    "get_rest_envoy_rate500_p50_ms",
    "get_rest_envoy_rate500_p99_ms",
    "get_rest_envoy_rate500_p999_ms",
    "get_grpc_direct_rate500_p50_ms",
    "get_grpc_direct_rate500_p99_ms",
    "get_grpc_direct_rate500_p999_ms",
    "invoke_grpc_envoy_halfmax_rate",
    "invoke_grpc_envoy_halfmax_p50_ms",
    "invoke_grpc_envoy_halfmax_p99_ms",
    "invoke_grpc_envoy_halfmax_p999_ms",
)

Metrics = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of the issue: a value computed from the metrics, compared with a limit."""

    name: str
    expression: str
    value: Callable[[Metrics], float]
    limit: float
    at_least: bool

    def evaluate(self, metrics: Metrics) -> dict[str, Any]:
        try:
            value = float(self.value(metrics))
        except (KeyError, TypeError, ZeroDivisionError, ValueError):
            value = math.nan
        if math.isnan(value):
            ok, miss = False, None
        else:
            ok = value >= self.limit if self.at_least else value <= self.limit
            miss = 0.0 if ok else abs(value - self.limit)
        return {
            "name": self.name,
            "expression": self.expression,
            "value": None if math.isnan(value) else round(value, 3),
            "target": f"{'>=' if self.at_least else '<='} {self.limit:g}",
            "ok": ok,
            "miss_by": None if miss is None else round(miss, 3),
        }


def _ratio(numerator: str, denominator: str) -> Callable[[Metrics], float]:
    return lambda m: m[numerator] / m[denominator]


TARGETS = (
    Target(
        "split_vs_mlserver_1cpu",
        "invoke_split_grpc_envoy_c16_img_s / mlserver_1cpu_best_c16_img_s",
        _ratio("invoke_split_grpc_envoy_c16_img_s", "mlserver_1cpu_best_c16_img_s"),
        1.0,
        at_least=True,
    ),
    Target(
        "cassandra_cpu_vs_ceiling_cpu",
        "cassandra_cpu_ms_per_invoke / ceiling_cpu_ms_per_img",
        _ratio("cassandra_cpu_ms_per_invoke", "ceiling_cpu_ms_per_img"),
        0.25,
        at_least=False,
    ),
    Target(
        "server_cpu_vs_ceiling_cpu",
        "server_cpu_ms_per_invoke / ceiling_cpu_ms_per_img",
        _ratio("server_cpu_ms_per_invoke", "ceiling_cpu_ms_per_img"),
        1.15,
        at_least=False,
    ),
    Target(
        "memory_server_cpu_vs_ceiling_cpu",
        "memory_server_cpu_ms_per_invoke / ceiling_cpu_ms_per_img",
        _ratio("memory_server_cpu_ms_per_invoke", "ceiling_cpu_ms_per_img"),
        1.1,
        at_least=False,
    ),
    Target(
        "memory_envoy_c16_vs_mlserver",
        "invoke_memory_grpc_envoy_c16_img_s / mlserver_best_c16_img_s",
        _ratio("invoke_memory_grpc_envoy_c16_img_s", "mlserver_best_c16_img_s"),
        1.1,
        at_least=True,
    ),
    Target(
        "envoy_c16_vs_mlserver",
        "invoke_grpc_envoy_c16_img_s / mlserver_best_c16_img_s",
        _ratio("invoke_grpc_envoy_c16_img_s", "mlserver_best_c16_img_s"),
        1.0,
        at_least=True,
    ),
    Target(
        "envoy_c16_vs_ceiling",
        "invoke_grpc_envoy_c16_img_s / ceiling_img_s",
        _ratio("invoke_grpc_envoy_c16_img_s", "ceiling_img_s"),
        0.75,
        at_least=True,
    ),
    Target(
        "c1_overhead_ms",
        "invoke_grpc_envoy_c1_p50_ms - single_image_inprocess_ms",
        lambda m: m["invoke_grpc_envoy_c1_p50_ms"] - m["single_image_inprocess_ms"],
        5.0,
        at_least=False,
    ),
    Target(
        "rest_upload_vs_grpc",
        "invoke_rest_upload_envoy_c16_img_s / invoke_grpc_envoy_c16_img_s",
        _ratio("invoke_rest_upload_envoy_c16_img_s", "invoke_grpc_envoy_c16_img_s"),
        0.95,
        at_least=True,
    ),
    Target(
        "get_rest_vs_grpc",
        "get_rest_envoy_c16_rps / get_grpc_direct_c16_rps",
        _ratio("get_rest_envoy_c16_rps", "get_grpc_direct_c16_rps"),
        0.9,
        at_least=True,
    ),
    Target(
        "get_rest_rate500_p99_ms",
        "get_rest_envoy_rate500_p99_ms (open loop, 500 req/s)",
        lambda m: m["get_rest_envoy_rate500_p99_ms"],
        5.0,
        at_least=False,
    ),
    Target(
        "get_grpc_rate500_p99_ms",
        "get_grpc_direct_rate500_p99_ms (open loop, 500 req/s)",
        lambda m: m["get_grpc_direct_rate500_p99_ms"],
        3.0,
        at_least=False,
    ),
    Target(
        "console_gallery_ms",
        "console_gallery_ms (first page of 50 thumbnails, in the browser)",
        lambda m: m["console_gallery_ms"],
        1000.0,
        at_least=False,
    ),
    Target(
        "server_rss_mb",
        "server_rss_mb (largest server process)",
        lambda m: m["server_rss_mb"],
        600.0,
        at_least=False,
    ),
)
"""The issues' targets (rounds two to four), in issue 24's order; ratios of numbers from one
run. ``get_rest_envoy_c16_p99_ms <= 5`` was replaced by the open-loop targets at 500 req/s (at
saturation with 16 calls in flight Little's law sets the mean, whatever the code does)."""


def evaluate_targets(metrics: Metrics) -> list[dict[str, Any]]:
    return [target.evaluate(metrics) for target in TARGETS]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
    return "-" if value is None else str(value)


def measurement_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per load measurement: rate, latencies, errors, and the cores used by the load
    generator (client) and by processes outside the bench (other)."""
    header = (
        f"{'measurement':<34} {'c':>3} {'rate/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'errors':>7} {'client':>6} {'other':>6}"
    )
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        flag = "  <-- ERRORS" if r.get("errors") else ""
        c = r["concurrency"] or "-"  # open loop: a rate, not a concurrency
        lines.append(
            f"{name:<34} {c:>3} {_fmt(r['rate']):>9} {_fmt(r['p50_ms']):>8} "
            f"{_fmt(r['p95_ms']):>8} {_fmt(r['p99_ms']):>8} {r['errors']:>7} "
            f"{_fmt(r.get('client_cpu_cores')):>6} {_fmt(r.get('other_cpu_cores')):>6}{flag}"
        )
    return "\n".join(lines)


def headline_table(metrics: Metrics) -> str:
    width = max(len(key) for key in REQUIRED_KEYS)
    return "\n".join(f"{key:<{width}}  {_fmt(metrics.get(key))}" for key in REQUIRED_KEYS)


def target_table(targets: list[dict[str, Any]]) -> str:
    header = f"{'target':<64} {'value':>10} {'target':>9}  result"
    lines = [header, "-" * len(header)]
    for t in targets:
        result = "ok" if t["ok"] else ("n/a" if t["value"] is None else f"MISS by {t['miss_by']:g}")
        lines.append(f"{t['expression']:<64} {_fmt(t['value']):>10} {t['target']:>9}  {result}")
    return "\n".join(lines)


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
