"""``python -m bench.markdown [build/bench/report.json]``: a report as Markdown tables, for
``docs/performance.md``."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.report import REQUIRED_KEYS


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _rss_parts(report: Mapping[str, Any]) -> list[str]:
    processes = report["processes"]
    parts = [
        "servers " + ", ".join(_num(v) for v in processes["server_rss_mb"].values()),
        f"Envoy {_num(processes['envoy_rss_mb'])}",
        f"Cassandra {_num(processes['cassandra_rss_mb'])}",
    ]
    if processes.get("memory_store_server_rss_mb"):
        values = processes["memory_store_server_rss_mb"].values()
        parts.append("servers with the memory store " + ", ".join(_num(v) for v in values))
    parts += [
        f"MLServer parallel_workers={k}: {_num(v['peak_rss_mb_total'])} in all"
        for k, v in report["mlserver"].items()
    ]
    return parts


def render(report: Mapping[str, Any]) -> str:
    """The run's layout, headline keys, targets, every measurement and the phase timings."""
    run, layout = report["run"], report["layout"]
    lines = [
        f"Run `{run['tag']}` ({run['finished']}); layout: "
        + ", ".join(f"{k} {v}" for k, v in layout.items())
        + f"; {run['duration_s']:g} s per measurement after {run['warmup_s']:g} s of warm-up.",
        "",
        "| key | value |",
        "| --- | --- |",
    ]
    lines += [f"| `{key}` | {_num(report.get(key), 2)} |" for key in REQUIRED_KEYS]
    lines += ["", "| target | value | target | result |", "| --- | --- | --- | --- |"]
    for t in report["targets"]:
        result = "ok" if t["ok"] else f"**miss** by {_num(t['miss_by'], 2)}"
        lines.append(f"| `{t['expression']}` | {_num(t['value'], 2)} | {t['target']} | {result} |")
    lines += [
        "",
        "| measurement | c | rate/s | p50 ms | p95 ms | p99 ms | errors | server cores "
        "| client cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in report["measurements"].items():
        cores = ", ".join(f"{k} {v:.2f}" for k, v in m["server_cpu_cores"].items())
        lines.append(
            f"| {name} | {m['concurrency'] or 'open loop'} | {_num(m['rate'])} "
            f"| {_num(m['p50_ms'], 2)} "
            f"| {_num(m['p95_ms'], 2)} | {_num(m['p99_ms'], 2)} | {m['errors']} | {cores} "
            f"| {_num(m['client_cpu_cores'], 2)} |"
        )
    ceiling = report["ceiling"]
    lines += [
        "",
        f"Ceiling: {_num(ceiling['img_s'])} img/s ({ceiling['processes']} process(es) x "
        f"{ceiling['workers_per_process']} threads); serial decode + detect median "
        f"{_num(ceiling['serial_median_ms'], 2)} ms, p95 {_num(ceiling['serial_p95_ms'], 2)} ms.",
        "",
        "Peak RSS (MiB): " + "; ".join(_rss_parts(report)) + ".",
        "",
        "CPU per image (ms, CPU time / successful calls during the measurement): Invoke "
        f"through Envoy at c=16: servers {_num(report.get('server_cpu_ms_per_invoke'), 2)}, "
        f"Envoy {_num(report.get('envoy_cpu_ms_per_invoke'), 2)}, "
        f"Cassandra {_num(report.get('cassandra_cpu_ms_per_invoke'), 2)}; with the memory "
        f"store: servers {_num(report.get('memory_server_cpu_ms_per_invoke'), 2)}, "
        f"Envoy {_num(report.get('memory_envoy_cpu_ms_per_invoke'), 2)}; ceiling "
        f"{_num(report.get('ceiling_cpu_ms_per_img'), 2)}; MLServer "
        + "; ".join(
            f"parallel_workers={k}: {_num(v.get('c16_cpu_ms_per_infer'), 2)}"
            for k, v in report["mlserver"].items()
        )
        + ".",
        "",
        "Phases (s): " + ", ".join(f"{k} {v:g}" for k, v in run["phase_s"].items()) + ".",
    ]
    if report["problems"] or report["warnings"]:
        lines += ["", *(f"- problem: {p}" for p in report["problems"])]
        lines += [f"- warning: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0] if args else "build/bench/report.json")
    sys.stdout.write(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
