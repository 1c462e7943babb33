"""``make bench``: measure the service on the real local stack, and its peer, in one run.

Phases, in order (each load measurement: a short warm-up at the same concurrency, then a fixed
time; closed loop; errors counted and flagged):

1. start Cassandra, the server process(es) and Envoy on the bench's own ports and build folder
   (``build/bench/stack``), empty the invocations table, and check the detections of every
   image of the mix (gRPC and REST through Envoy) against ``images/reference.json``;
2. the ceiling: the server's pipeline in-process with the same layout (``bench.ceiling``), and
   the serial single-image time;
3. Invoke: a stack warm-up (JIT of Cassandra and Envoy), then through Envoy with native gRPC at
   each concurrency; directly to the server(s); via REST/JSON through Envoy; open loop through
   Envoy at half the best closed-loop rate; the production-shaped split (Cassandra pinned to
   one CPU, servers and Envoy to another); then a sample of the ids each run wrote is read back;
4. GetInvocation: gRPC directly to the server(s) and REST through Envoy, per view; then open
   loop at a fixed rate (``--get-rate``), both;
5. ListInvocations: REST through Envoy, pages of 50 (the default, BASIC, view), cycling through
   the first pages of the listing of everything the Invoke runs stored (their tokens made by
   walking the listing first);
6. the web console: its gallery's first page of 50 thumbnails in headless Chromium
   (``bench.console``: ``console_gallery_ms``, navigation start to the last thumbnail);
7. DeleteInvocation: native gRPC through Envoy, each invocation the runs stored deleted once
   (its ids from the listing; a fixed number of calls, not a fixed time: the run ends when the
   ids do), then a sample of them read back (NOT_FOUND);
8. the servers' peak RSS; the stack stops;
9. the serving path alone: a second stack (the same servers with the in-memory store, their
   own Envoy, no Cassandra), its detections checked, Invoke through Envoy at the compare
   concurrency, a sample of the ids read back; it stops;
10. the peer: MLServer with each ``parallel_workers`` setting, alone on the machine, and each
   setting again with all its processes pinned to one CPU.

Every measurement also records the CPU time of each group of processes (servers, Envoy,
Cassandra; MLServer's whole tree); CPU time per successful call gives the ``*_cpu_ms_per_*``
keys, the ceiling's from the CPU time of its own worker processes.

Writes ``build/bench/report.json`` and prints the tables. Exit status: 0 when every measurement
ran without errors and every detection matched; 1 otherwise (targets missed do not fail it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from bench import console, mlserver, payloads, procstats
from bench.ceiling import measure_ceiling
from bench.loadgen import Ghz, GrpcCall, LoadResult, RestCall, Wrk
from bench.report import (
    REQUIRED_KEYS,
    evaluate_targets,
    headline_table,
    measurement_table,
    target_table,
    write_report,
)
from bench.stack import BenchStack
from devstack.envoy import envoy_binary
from devstack.stack import StackSettings, server_environment
from inference_service.settings import DEFAULT_MODEL_FILE

logger = logging.getLogger("bench")

VIEWS = {"BASIC": pb.INVOCATION_VIEW_BASIC, "FULL": pb.INVOCATION_VIEW_FULL}
TIME_BUDGET_S = 15 * 60
LIST_PAGE_SIZE = 50
LIST_PAGES = 100
"""Full pages of the listing that the list measurement cycles through (its newest 5,000)."""
LIST_CALLS = 1000
"""Most ListInvocations calls made to walk the listing (a page may come back short or empty)."""
DELETE_MIN_IDS = 200
"""Fewer stored invocations than this to delete in the measurement is a problem of the run."""
OTHER_CPU_WARNING = 0.25
"""Cores used by processes outside the bench during a measurement above which it is flagged."""
OPEN_LOOP_LAG_WARNING_MS = 5.0
"""An open-loop sender this far behind its schedule at worst is flagged (latencies are from
each call's due time, so its own delay counts in them)."""
OPEN_LOOP_SHARE = 0.5
"""The open-loop Invoke runs at this share of the best closed-loop Invoke rate through Envoy."""
SPLIT_KEYS = tuple(key for key in REQUIRED_KEYS if "split_" in key or "_1cpu_" in key)


@dataclasses.dataclass(frozen=True)
class Options:
    """What a run measures and where (from the command line)."""

    out_dir: Path
    images_dir: Path
    images: tuple[str, ...]
    server_processes: int | None
    workers: int | None
    duration_s: float
    warmup_s: float
    stack_warmup_s: float
    concurrencies: tuple[int, ...]
    compare_concurrency: int
    get_views: tuple[str, ...]
    mlserver_workers: tuple[int, ...]
    mlserver_venv: Path
    skip_mlserver: bool
    port_base: int
    keep_cassandra: bool
    cassandra_full_jit: bool
    ghz: Path
    wrk: str
    get_rate: float
    split: bool


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> Options:
    shared = Path(env.get("INFERENCE_SHARED_DIR", "../shared"))
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--images-dir", type=Path, default=shared / "images")
    parser.add_argument(
        "--image", action="append", default=[], help="an image of the mix (default: all)"
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        help="server processes behind Envoy (default: the stack's, INFERENCE_SERVER_PROCESSES)",
    )
    parser.add_argument(
        "--workers", type=int, help="worker threads per server (default: INFERENCE_WORKERS)"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before each")
    parser.add_argument(
        "--stack-warmup",
        type=float,
        default=10.0,
        help="seconds of Invoke load before the first measurement (JIT of Cassandra, Envoy)",
    )
    parser.add_argument("--concurrency", type=_ints, default=(1, 4, 16, 64))
    parser.add_argument(
        "--compare-concurrency",
        type=int,
        default=16,
        help="concurrency of the direct, REST, GetInvocation and MLServer runs",
    )
    parser.add_argument(
        "--get-views",
        default="BASIC,FULL",
        help="GetInvocation views to measure; the first gives the headline keys",
    )
    parser.add_argument("--mlserver-workers", type=_ints, default=(0, 1, 2))
    parser.add_argument("--mlserver-venv", type=Path, default=Path("build/bench/mlserver-venv"))
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument(
        "--port-base",
        type=int,
        default=18000,
        help="Envoy +80 (admin +81), Cassandra +42 (storage +70), MLServer +90/+91, "
        "servers +100... (their /metrics +140...; default 18000: clear of make run's ports)",
    )
    parser.add_argument(
        "--keep-cassandra",
        action="store_true",
        help="leave the bench's Cassandra node running for the next run (faster start)",
    )
    parser.add_argument(
        "--cassandra-c1-only",
        action="store_true",
        help="run the bench's Cassandra with the devstack's start-fast C1-only JIT "
        "(default: full JIT, as in production)",
    )
    parser.add_argument("--ghz", type=Path, default=Path("build/bench/bin/bench-ghz"))
    parser.add_argument("--wrk", default="wrk")
    parser.add_argument(
        "--get-rate",
        type=float,
        default=500.0,
        help="open-loop GetInvocation rate, requests/s (REST through Envoy, gRPC direct)",
    )
    parser.add_argument(
        "--no-split",
        action="store_true",
        help="skip the pinned layouts (Cassandra on one CPU, servers and Envoy on another; "
        "MLServer on one CPU); they need Linux and two CPUs",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 3 s measurements, 1 s warm-up"
    )
    args = parser.parse_args(argv)
    views = tuple(v.strip().upper() for v in args.get_views.split(",") if v.strip())
    if not views or any(v not in VIEWS for v in views):
        parser.error(f"--get-views: choose from {sorted(VIEWS)}")
    if args.compare_concurrency not in args.concurrency:
        parser.error("--compare-concurrency must be one of --concurrency")
    return Options(
        out_dir=args.out_dir.resolve(),
        images_dir=args.images_dir.resolve(),
        images=tuple(args.image),
        server_processes=args.server_processes,
        workers=args.workers,
        duration_s=3.0 if args.quick else args.duration,
        warmup_s=1.0 if args.quick else args.warmup,
        stack_warmup_s=2.0 if args.quick else args.stack_warmup,
        concurrencies=args.concurrency,
        compare_concurrency=args.compare_concurrency,
        get_views=views,
        mlserver_workers=args.mlserver_workers,
        mlserver_venv=args.mlserver_venv.resolve(),
        skip_mlserver=args.skip_mlserver,
        port_base=args.port_base,
        keep_cassandra=args.keep_cassandra,
        cassandra_full_jit=not args.cassandra_c1_only,
        ghz=args.ghz.resolve(),
        wrk=args.wrk,
        get_rate=args.get_rate,
        split=not args.no_split,
    )


def stack_settings(options: Options, *, memory_store: bool = False) -> StackSettings:
    """The stack's settings: the environment's ``INFERENCE_*`` plus the bench's ports, folder
    and (when given) layout.

    ``memory_store``: the second stack, the serving path alone (servers with ``--store
    memory``, so no Cassandra, behind their own Envoy), on ports and a folder of its own."""
    base = options.port_base
    overrides: dict[str, Any] = {
        "port": base + 100,
        "envoy_port": base + 80,
        "envoy_admin_port": base + 81,
        "envoy_internal_port": base + 82,
        "cassandra_port": base + 42,
        "cassandra_storage_port": base + 70,
        "metrics_port": base + 140,  # server i: /metrics on metrics_port + i
        "build_dir": options.out_dir / "stack",
    }
    if memory_store:
        overrides.update(
            {
                "store": "memory",
                "port": base + 120,
                "envoy_port": base + 85,
                "envoy_admin_port": base + 86,
                "envoy_internal_port": base + 87,
                "metrics_port": base + 160,
                "build_dir": options.out_dir / "stack-memory",
            }
        )
    if options.server_processes is not None:
        overrides["server_processes"] = options.server_processes
    if options.workers is not None:
        overrides["workers"] = options.workers
    return StackSettings(**overrides)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so that every ``finally`` stops what it started."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _reference_mismatches(
    found: Mapping[str, list[list[float]]], reference: Mapping[str, Any]
) -> dict[str, list[str]]:
    """Problems per image against ``reference.json`` (the tests' matcher); empty when all match."""
    from tests.support.reference import mismatches

    problems = {}
    for name, boxes in found.items():
        expected = reference.get(name)
        if expected is None:
            continue
        issues = mismatches(boxes, expected["boxes"])
        if issues:
            problems[name] = issues
    return problems


class BenchRun:
    """One run of every phase; collects results, timings, checks and the report."""

    def __init__(self, options: Options, *, repo_root: Path, env: Mapping[str, str]) -> None:
        self.options = options
        self.repo_root = repo_root
        self.env = dict(env)
        self.work_dir = options.out_dir / "run"
        self.settings = stack_settings(options)
        self.tag = "b" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self.results: dict[str, dict[str, Any]] = {}
        self.phase_s: dict[str, float] = {}
        self.checks: dict[str, Any] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.extra: dict[str, Any] = {}
        self.envoy_concurrency: int | None = None
        self.ghz = Ghz(options.ghz, self.work_dir)
        self.wrk = Wrk(options.wrk, self.work_dir)
        self.split_cpus = self._split_cpus()

    # --- helpers -------------------------------------------------------------------------

    def _split_cpus(self) -> tuple[int, int] | None:
        """(ours, the other) for the pinned layouts: the first two CPUs this process may use;
        None when they are off or the machine cannot pin (not Linux, one CPU)."""
        if not self.options.split:
            return None
        try:
            cpus = procstats.usable_cpus()
        except (AttributeError, OSError):
            cpus = []
        return (cpus[0], cpus[1]) if len(cpus) >= 2 else None

    @contextlib.contextmanager
    def pinned(
        self, ours: Sequence[int], other: Sequence[int], *, client_on_other: bool = True
    ) -> Iterator[None]:
        """Pin every thread of ``ours`` to the first split CPU and of ``other`` to the second
        (and the load generator there too), for the time of the block; then let them all run
        anywhere again."""
        assert self.split_cpus is not None
        mine, theirs = self.split_cpus
        everything = procstats.usable_cpus()
        procstats.pin(ours, {mine})
        procstats.pin(other, {theirs})
        if client_on_other:
            self.ghz.affinity = frozenset({theirs})
        try:
            yield
        finally:
            self.ghz.affinity = None
            procstats.pin([*ours, *other], everything)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        logger.info("== %s", name)
        started = time.monotonic()
        try:
            yield
        finally:
            self.phase_s[name] = round(time.monotonic() - started, 1)

    def measure(
        self,
        name: str,
        run: Callable[[str, float], LoadResult],
        cpu_groups: Mapping[str, Sequence[int]] | Callable[[], Mapping[str, Sequence[int]]],
    ) -> LoadResult:
        """Warm up, then measure with the processes' CPU time recorded; flag any error.

        ``cpu_groups`` (or a function that gives them, called after the warm-up, for process
        trees that may grow) names the processes whose CPU time is measured, by group."""
        warm = run(f"{name}.warmup", self.options.warmup_s)
        meter = procstats.CpuMeter(cpu_groups() if callable(cpu_groups) else cpu_groups)
        meter.start()
        result = run(name, self.options.duration_s)
        cpu = meter.stop()
        summary = result.summary()
        cores = {group: seconds / result.duration_s for group, seconds in cpu.items()}
        machine = cores.pop("machine")
        client = result.client_cpu_s / result.duration_s
        others = machine - sum(cores.values()) - client
        summary["server_cpu_cores"] = {group: round(value, 2) for group, value in cores.items()}
        # CPU per successful call of each group: cores x 1000 / rate, i.e. CPU seconds / calls.
        summary["cpu_s"] = {group: cpu[group] for group in cores}
        summary["cpu_ms_per_call"] = {
            group: round(cpu[group] * 1000 / result.ok, 3) if result.ok else None for group in cores
        }
        summary["machine_cpu_cores"] = round(machine, 2)
        summary["other_cpu_cores"] = round(others, 2)
        summary["warmup_errors"] = warm.errors
        if others > OTHER_CPU_WARNING:
            self.warnings.append(
                f"{name}: processes outside the bench used {others:.2f} cores: the machine was "
                "not idle, so this measurement is noisy"
            )
        self.results[name] = summary
        lag = result.max_send_lag_ms
        if lag is not None and lag > OPEN_LOOP_LAG_WARNING_MS:
            self.warnings.append(
                f"{name}: the load generator fell {lag:.1f} ms behind its schedule at worst: "
                "those latencies include its own delay (a busy machine)"
            )
        if result.errors or warm.errors:
            self.problems.append(
                f"{name}: {result.errors} errors ({warm.errors} in warm-up): "
                f"{result.statuses} {result.error_samples[:2]}"
            )
        logger.info(
            "%s: %.1f/s p50 %.2f p99 %.2f ms, %d errors, cpu %s, client %.2f cores",
            name,
            result.rate,
            result.p50_ms,
            result.p99_ms,
            result.errors,
            summary["server_cpu_cores"],
            result.client_cpu_s / result.duration_s,
        )
        return result

    def _require_tools(self) -> None:
        missing = []
        if not self.options.ghz.is_file():
            missing.append(f"{self.options.ghz} (make bench builds it)")
        if shutil.which(self.options.wrk) is None:
            missing.append("wrk (apt-get install wrk)")
        if not self.options.skip_mlserver and not (self.options.mlserver_venv / "bin").is_dir():
            missing.append(f"{self.options.mlserver_venv} (make bench creates it)")
        descriptor = self.repo_root / "build/protos/descriptor.binpb"
        if not descriptor.is_file():
            missing.append(f"{descriptor} (make protos)")
        if missing:
            raise RuntimeError("missing: " + "; ".join(missing))

    # --- the run -------------------------------------------------------------------------

    def execute(self) -> int:
        started = time.monotonic()
        self._require_tools()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._check_idle()
        self.mix = payloads.load_mix(self.options.images_dir, self.options.images)
        self.reference = self._load_reference()
        with self.phase("prepare"):
            self._prepare_payloads()
        stack = BenchStack(
            self.settings,
            repo_root=self.repo_root,
            base_env=self.env,
            cassandra_full_jit=self.options.cassandra_full_jit,
        )
        try:
            with self.phase("stack start"):
                stack.start()
                stack.truncate()
            self._service_phases(stack)
        finally:
            with self.phase("stack stop"):
                with contextlib.suppress(Exception):
                    stack.truncate()
                stack.stop(keep_cassandra=self.options.keep_cassandra)
        self._memory_store_phases()
        if not self.options.skip_mlserver:
            self._mlserver_phases()
        self.phase_s["total"] = round(time.monotonic() - started, 1)
        return self._finish()

    def _check_idle(self, seconds: float = 2.0) -> None:
        """Note how busy the machine is before anything starts (other work skews every ratio)."""
        meter = procstats.CpuMeter({})
        meter.start()
        time.sleep(seconds)
        busy = meter.stop()["machine"] / seconds
        self.extra["idle_check_busy_cores"] = round(busy, 2)
        if busy > OTHER_CPU_WARNING:
            self.warnings.append(
                f"before the run the machine was already using {busy:.2f} cores: "
                "the numbers will be noisy"
            )
            logger.warning("the machine is busy (%.2f cores) before the run", busy)

    def _load_reference(self) -> dict[str, Any]:
        path = self.options.images_dir / "reference.json"
        return json.loads(path.read_text())["images"] if path.is_file() else {}

    def _prepare_payloads(self) -> None:
        w = self.work_dir
        self.protoset = self.repo_root / "build/protos/descriptor.binpb"
        self.invoke_call = GrpcCall(
            payloads.INVOKE_METHOD,
            self.protoset,
            payloads.write_delimited(w / "invoke.bin", payloads.invoke_messages(self.mix)),
            unique_id_field=payloads.INVOKE_ID_FIELD,
        )
        self.rest_bodies = payloads.write_rest_invoke_suffixes(w / "rest-invoke", self.mix)
        self.raw_images = payloads.write_raw_images(w / "rest-upload", self.mix)

    def _service_phases(self, stack: BenchStack) -> None:
        groups = {
            "servers": stack.server_pids,
            "envoy": [stack.envoy_pid] if stack.envoy_pid else [],
            "cassandra": [stack.cassandra_pid] if stack.cassandra_pid else [],
        }
        self.extra["pids"] = groups
        self.envoy_concurrency = stack.stack.envoy.concurrency
        with self.phase("verify detections"):
            self._verify_stack(stack)
        self._quiesce("before ceiling", groups)
        with self.phase("ceiling"):
            self._ceiling()
        with self.phase("invoke"):
            self._invoke_phases(stack, groups)
        with self.phase("persistence check"):
            self._persistence_check(stack.server_targets, self.invoke_prefixes, "persistence")
        self._quiesce("before get", groups)
        with self.phase("get"):
            self._get_phases(stack, groups)
        with self.phase("list"):
            self._list_phases(stack, groups)
        with self.phase("console"):
            self._console_phase(stack)
        with self.phase("delete"):
            self._delete_phases(stack, groups)
        self.extra["cassandra_data_mb"] = stack.data_mb()
        self.extra["server_rss_mb"] = {
            str(pid): round(procstats.peak_rss_mb(pid) or 0.0, 1) for pid in stack.server_pids
        }
        self.extra["envoy_rss_mb"] = round(procstats.peak_rss_mb(stack.envoy_pid or 0) or 0, 1)
        self.extra["cassandra_rss_mb"] = round(
            procstats.peak_rss_mb(stack.cassandra_pid or 0) or 0, 1
        )
        crashed = stack.crashed_servers()
        if crashed:
            self.problems.append(f"servers exited during the run: {crashed}")

    def _quiesce(self, name: str, groups: Mapping[str, Sequence[int]]) -> None:
        """Let the stack finish background work (Cassandra's flushes and compactions after a
        write phase) so that it is not billed to the next measurement."""
        with self.phase(f"quiesce {name}"):
            pids = [pid for group in groups.values() for pid in group]
            waited = procstats.wait_quiet(pids)
        self.extra.setdefault("quiesce_s", {})[name] = round(waited, 1)

    def _verify_stack(self, stack: BenchStack) -> None:
        seeded = stack.seed(self.mix, f"{self.tag}-seed-")
        self.seeded_ids = [invocation_id for invocation_id, _ in seeded.values()]
        self.server_detections = {name: boxes for name, (_, boxes) in seeded.items()}
        grpc_problems = _reference_mismatches(self.server_detections, self.reference)
        rest_boxes = {self.mix[0].name: stack.rest_invoke(self.mix[0], f"{self.tag}-rest-00")}
        rest_problems = _reference_mismatches(rest_boxes, self.reference)
        self.checks["detections"] = {
            "images_checked": len([n for n in self.server_detections if n in self.reference]),
            "grpc_envoy_mismatches": grpc_problems,
            "rest_envoy_mismatches": rest_problems,
            "faces_per_image": {n: len(b) for n, b in self.server_detections.items()},
        }
        if grpc_problems or rest_problems:
            self.problems.append(
                f"detections differ from reference: {grpc_problems or rest_problems}"
            )

    def _ceiling(self) -> None:
        env = {**self.env, **server_environment(self.settings)}
        machine = procstats.CpuMeter({})
        machine.start()
        started = time.monotonic()
        result = measure_ceiling(
            processes=self.settings.server_processes,
            env=env,
            images_dir=self.options.images_dir,
            image_names=[image.name for image in self.mix],
            duration_s=self.options.duration_s,
            serial_passes=3,
            log_dir=self.work_dir,
        )
        self.ceiling = result
        self.extra["ceiling_phase_machine_cpu_cores"] = round(
            machine.stop()["machine"] / (time.monotonic() - started), 2
        )
        logger.info(
            "ceiling: %.1f img/s (%s), serial median %.2f ms",
            result.img_s,
            result.per_process_img_s,
            result.serial_median_ms,
        )

    def _grpc_invoke(
        self, targets: list[str], c: int, prefixes: dict[str, str]
    ) -> Callable[[str, float], LoadResult]:
        """A native gRPC Invoke run at concurrency ``c``, every call with a new id; the id
        prefix of each run is recorded in ``prefixes`` (for the read-back)."""

        def run(name: str, duration: float) -> LoadResult:
            prefix = f"{self.tag}-{name}-"
            prefixes[name] = prefix
            return self.ghz.run(
                name,
                self.invoke_call,
                targets,
                concurrency=c,
                duration_s=duration,
                id_prefix=prefix,
            )

        return run

    def _invoke_phases(self, stack: BenchStack, groups: Mapping[str, Sequence[int]]) -> None:
        cc = self.options.compare_concurrency
        self.invoke_prefixes: dict[str, str] = {}

        def grpc_run(targets: list[str], c: int) -> Callable[[str, float], LoadResult]:
            return self._grpc_invoke(targets, c, self.invoke_prefixes)

        warm = grpc_run([stack.envoy_target], cc)("stack.warmup", self.options.stack_warmup_s)
        self.extra["stack_warmup"] = {"img_s": round(warm.rate, 1), "errors": warm.errors}
        if warm.errors:
            self.problems.append(f"stack warm-up: {warm.errors} errors: {warm.error_samples[:2]}")
        for c in self.options.concurrencies:
            self.measure(f"invoke_grpc_envoy_c{c}", grpc_run([stack.envoy_target], c), groups)
        self.measure(f"invoke_grpc_direct_c{cc}", grpc_run(stack.server_targets, cc), groups)

        def wrk_run(script: str, listing: Path) -> Callable[[str, float], LoadResult]:
            def run(name: str, duration: float) -> LoadResult:
                prefix = f"{self.tag}-{name}-"
                self.invoke_prefixes[name] = prefix
                call = RestCall(script, (str(listing), prefix))
                return self.wrk.run(name, call, stack.rest_url, concurrency=cc, duration_s=duration)

            return run

        self.measure(f"invoke_rest_envoy_c{cc}", wrk_run("invoke.lua", self.rest_bodies), groups)
        # The raw upload route: the image itself as the body (no base64, no JSON to transcode).
        self.measure(
            f"invoke_rest_upload_envoy_c{cc}", wrk_run("upload.lua", self.raw_images), groups
        )

        # Open loop through Envoy at half the best closed-loop rate: latency without queueing
        # at saturation (and without coordinated omission: from each call's due time).
        best = max(
            (self.results[f"invoke_grpc_envoy_c{c}"]["rate"] for c in self.options.concurrencies),
            default=0.0,
        )
        rate = round(best * OPEN_LOOP_SHARE, 1)
        self.extra["invoke_open_loop_rate"] = rate
        if rate > 0:

            def open_run(name: str, duration: float) -> LoadResult:
                prefix = f"{self.tag}-{name}-"
                self.invoke_prefixes[name] = prefix
                return self.ghz.run_rate(
                    name,
                    [stack.envoy_target],
                    rate=rate,
                    duration_s=duration,
                    call=self.invoke_call,
                    id_prefix=prefix,
                )

            self.measure("invoke_grpc_envoy_halfmax", open_run, groups)
        self._split_phase(stack, groups)

    def _split_phase(self, stack: BenchStack, groups: Mapping[str, Sequence[int]]) -> None:
        """The production shape: Cassandra alone on one CPU, the servers and Envoy on the
        other (the load generator beside Cassandra), Invoke through Envoy at the compare
        concurrency; the same stack, pinned for this measurement only."""
        if self.split_cpus is None:
            self.warnings.append("split layout skipped (--no-split, not Linux or one CPU)")
            return
        cc = self.options.compare_concurrency
        ours = [*groups["servers"], *groups["envoy"]]
        with self.pinned(ours, groups["cassandra"]):
            self.measure(
                f"invoke_split_grpc_envoy_c{cc}",
                self._grpc_invoke([stack.envoy_target], cc, self.invoke_prefixes),
                groups,
            )
        self.extra["split_cpus"] = {
            "servers_envoy": self.split_cpus[0],
            "cassandra_and_client": self.split_cpus[1],
        }

    def _persistence_check(
        self, targets: Sequence[str], prefixes: Mapping[str, str], check: str
    ) -> None:
        """Read back a sample of the ids each measured Invoke run wrote: proof that the runs
        stored what they reported (and were not idempotent replays). Each id is asked of the
        servers in turn until one has it (with the memory store, only the process that ran the
        call does)."""
        found, missing, skipped = 0, [], []
        channels = [grpc.insecure_channel(target) for target in targets]
        try:
            stubs = [pb_grpc.InferenceServiceStub(channel) for channel in channels]
            for name, prefix in prefixes.items():
                if name.endswith(".warmup") or name not in self.results:
                    continue
                if self.results[name]["errors"]:
                    # the sampled numbers may be calls that failed (already a problem of the run)
                    skipped.append(name)
                    continue
                # ids of the first target only: about ok / targets of them were sent
                ok = int(self.results[name]["ok"]) // len(self.results[name]["targets"])
                rest = name.startswith("invoke_rest")
                numbers = sorted({int(ok * f * 0.8) for f in (0.0, 0.25, 0.5, 0.75, 1.0)})
                for number in numbers:
                    # bench-ghz numbers requests from 0 (its ids: prefix, target index, '-');
                    # the wrk script from 1, and wrk spends the first on a check it never sends.
                    invocation_id = f"{prefix}{number + 2}" if rest else f"{prefix}0-{number}"
                    problem = self._read_back(stubs, invocation_id)
                    if problem is None:
                        found += 1
                    else:
                        missing.append(f"{invocation_id}: {problem}")
        finally:
            for channel in channels:
                channel.close()
        self.checks[check] = {
            "sampled_found": found,
            "missing": missing,
            "skipped_runs_with_errors": skipped,
        }
        if missing:
            self.problems.append(
                f"{check}: invocations the load runs reported are missing: {missing[:5]}"
            )

    @staticmethod
    def _read_back(stubs: Sequence[pb_grpc.InferenceServiceStub], invocation_id: str) -> str | None:
        """``None`` when a server has ``invocation_id`` as succeeded; else what was wrong."""
        problem = "no server"
        for stub in stubs:
            try:
                invocation = stub.GetInvocation(
                    pb.GetInvocationRequest(id=invocation_id, view=pb.INVOCATION_VIEW_BASIC),
                    timeout=10,
                ).invocation
            except grpc.RpcError as exc:
                problem = exc.code().name
                continue
            if invocation.state == pb.Invocation.STATE_SUCCEEDED:
                return None
            problem = f"state {invocation.state}"
        return problem

    def _get_phases(self, stack: BenchStack, groups: Mapping[str, Sequence[int]]) -> None:
        cc = self.options.compare_concurrency
        for view in self.options.get_views:
            suffix = "" if view == self.options.get_views[0] else f"_{view.lower()}"
            messages = payloads.get_messages(self.seeded_ids, VIEWS[view])
            call = GrpcCall(
                payloads.GET_METHOD,
                self.protoset,
                payloads.write_delimited(self.work_dir / f"get-{view}.bin", messages),
            )
            self.measure(
                f"get_grpc_direct_c{cc}{suffix}",
                lambda name, duration, call=call: self.ghz.run(
                    name, call, stack.server_targets, concurrency=cc, duration_s=duration
                ),
                groups,
            )
            paths = payloads.write_rest_get_paths(
                self.work_dir / f"get-{view}.paths", self.seeded_ids, f"INVOCATION_VIEW_{view}"
            )
            rest_call = RestCall("get.lua", (str(paths),))
            self.measure(
                f"get_rest_envoy_c{cc}{suffix}",
                lambda name, duration, rest_call=rest_call: self.wrk.run(
                    name, rest_call, stack.rest_url, concurrency=cc, duration_s=duration
                ),
                groups,
            )
            self.extra.setdefault("get_views", {})[view] = suffix or "(headline)"
            if suffix:
                continue
            # Open loop at a fixed rate, the headline view: latency at a load the stack
            # carries, not at saturation (where Little's law sets it).
            tag = f"rate{self.options.get_rate:g}"
            self.measure(
                f"get_rest_envoy_{tag}",
                lambda name, duration, paths=paths: self.ghz.run_rate(
                    name,
                    [stack.rest_url],
                    rate=self.options.get_rate,
                    duration_s=duration,
                    http_paths=paths,
                ),
                groups,
            )
            self.measure(
                f"get_grpc_direct_{tag}",
                lambda name, duration, call=call: self.ghz.run_rate(
                    name,
                    stack.server_targets,
                    rate=self.options.get_rate,
                    duration_s=duration,
                    call=call,
                ),
                groups,
            )

    # --- list and delete ---------------------------------------------------------------

    @staticmethod
    def _walk_listing(
        target: str, page_size: int, *, max_calls: int = LIST_CALLS
    ) -> Iterator[tuple[str, pb.ListInvocationsResponse]]:
        """(the page's token, the page) for every page of the whole listing, first to last
        (at most ``max_calls`` calls), through ``target`` with native gRPC."""
        token = ""
        with grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            for _ in range(max_calls):
                request = pb.ListInvocationsRequest(page_size=page_size, page_token=token)
                page = stub.ListInvocations(request, timeout=60)
                yield token, page
                token = page.next_page_token
                if not token:
                    return

    def _list_phases(self, stack: BenchStack, groups: Mapping[str, Sequence[int]]) -> None:
        """GET /v1/invocations through Envoy, pages of ``LIST_PAGE_SIZE``: wrk cycles through
        the paths of the first ``LIST_PAGES`` full pages (tokens from a walk of the listing
        with the same parameters; the first page has none)."""
        cc = self.options.compare_concurrency
        paths = []
        for token, page in self._walk_listing(stack.envoy_target, LIST_PAGE_SIZE):
            if len(page.invocations) == LIST_PAGE_SIZE:
                paths.append(payloads.rest_list_path(LIST_PAGE_SIZE, token))
            if len(paths) == LIST_PAGES:
                break
        self.extra["list_pages"] = {"page_size": LIST_PAGE_SIZE, "pages": len(paths)}
        if not paths:
            self.problems.append(f"list: no full page of {LIST_PAGE_SIZE} invocations to measure")
            return
        path_file = self.work_dir / "list.paths"
        path_file.write_text("".join(f"{path}\n" for path in paths))
        rest_call = RestCall("get.lua", (str(path_file),))
        self.measure(
            f"list_rest_envoy_c{cc}",
            lambda name, duration: self.wrk.run(
                name, rest_call, stack.rest_url, concurrency=cc, duration_s=duration
            ),
            groups,
        )

    def _console_phase(self, stack: BenchStack) -> None:
        """The web console's first gallery page (50 thumbnails) in headless Chromium, on the
        invocations the Invoke runs stored (bench.console): ``console_gallery_ms``."""
        try:
            result = console.gallery_ms(stack.rest_url)
        except console.ConsoleBenchError as exc:
            self.warnings.append(f"console: {exc}")
            return
        self.extra["console_gallery"] = result
        if min(result["thumbnails"]) < console.PAGE_SIZE:
            self.warnings.append(f"console: fewer than {console.PAGE_SIZE} thumbnails: {result}")

    def _delete_phases(self, stack: BenchStack, groups: Mapping[str, Sequence[int]]) -> None:
        """DeleteInvocation through Envoy (native gRPC): every stored invocation (ids from the
        listing) deleted once, a warm-up share of them first (the warm-up's part of the time),
        the rest measured as a fixed number of calls; then a sample is read back."""
        cc = self.options.compare_concurrency
        ids = [
            invocation.id
            for _, page in self._walk_listing(stack.envoy_target, 1000)
            for invocation in page.invocations
        ]
        share = self.options.warmup_s / (self.options.warmup_s + self.options.duration_s)
        split = round(len(ids) * share)
        parts = {"warmup": ids[:split], "measured": ids[split:]}
        self.extra["delete_ids"] = {part: len(values) for part, values in parts.items()}
        if len(parts["measured"]) < DELETE_MIN_IDS:
            self.problems.append(
                f"delete: only {len(parts['measured'])} stored invocations to delete "
                f"(fewer than {DELETE_MIN_IDS}): the measurement says little"
            )
        if not parts["measured"] or not parts["warmup"]:
            return

        def run(name: str, duration: float) -> LoadResult:
            part = parts["warmup" if name.endswith(".warmup") else "measured"]
            messages = payloads.write_delimited(
                self.work_dir / f"{name}.bin", payloads.delete_messages(part)
            )
            return self.ghz.run(
                name,
                GrpcCall(payloads.DELETE_METHOD, self.protoset, messages),
                [stack.envoy_target],
                concurrency=cc,
                duration_s=duration,
                total=len(part),
                timeout_s=60 + len(part) / 10,
            )

        self.measure(f"delete_grpc_envoy_c{cc}", run, groups)
        measured = parts["measured"]
        sample = [measured[int(f * (len(measured) - 1))] for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
        still_there = []
        with grpc.insecure_channel(stack.envoy_target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            for invocation_id in sample:
                try:
                    stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id), timeout=10)
                    still_there.append(invocation_id)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        still_there.append(f"{invocation_id}: {exc.code().name}")
        self.checks["deleted_gone"] = {"sampled": len(sample), "still_there": still_there}
        if still_there:
            self.problems.append(f"delete: deleted invocations still answer: {still_there}")

    # --- the serving path alone (memory store) ----------------------------------------

    def _memory_store_phases(self) -> None:
        """Invoke through Envoy (native gRPC, the compare concurrency) on a second stack whose
        servers keep invocations in memory: the proxy + server path without Cassandra, run
        after the Cassandra stack has stopped, alone on the machine as the peer is. Same layout,
        settings, payloads and unique ids; the detections are checked and the ids read back."""
        settings = stack_settings(self.options, memory_store=True)
        stack = BenchStack(settings, repo_root=self.repo_root, base_env=self.env)
        cc = self.options.compare_concurrency
        self.memory_prefixes: dict[str, str] = {}
        try:
            with self.phase("memory stack start"):
                stack.start()
            groups = {
                "servers": stack.server_pids,
                "envoy": [stack.envoy_pid] if stack.envoy_pid else [],
            }
            self.extra["memory_store_pids"] = groups
            with self.phase("memory store invoke"):
                seeded = stack.seed(self.mix, f"{self.tag}-memseed-")
                problems = _reference_mismatches(
                    {name: boxes for name, (_, boxes) in seeded.items()}, self.reference
                )
                self.checks["detections"]["grpc_envoy_memory_store_mismatches"] = problems
                if problems:
                    self.problems.append(f"memory store: detections differ: {problems}")
                self.measure(
                    f"invoke_memory_grpc_envoy_c{cc}",
                    self._grpc_invoke([stack.envoy_target], cc, self.memory_prefixes),
                    groups,
                )
                self._persistence_check(
                    stack.server_targets, self.memory_prefixes, "persistence_memory_store"
                )
            self.extra["memory_store_server_rss_mb"] = {
                str(pid): round(procstats.peak_rss_mb(pid) or 0.0, 1) for pid in stack.server_pids
            }
            crashed = stack.crashed_servers()
            if crashed:
                self.problems.append(f"memory-store servers exited during the run: {crashed}")
        except Exception as exc:  # a failed extra stack fails the run, not the peer's phases
            logger.exception("the memory-store stack failed")
            self.problems.append(f"memory-store stack: {exc}")
        finally:
            with self.phase("memory stack stop"):
                stack.stop(keep_cassandra=False)

    # --- the peer ------------------------------------------------------------------------

    def _mlserver_phases(self) -> None:
        venv = self.options.mlserver_venv
        images = [self.options.images_dir / image.name for image in self.mix]
        protoset = mlserver.write_protoset(venv, self.work_dir / "mlserver-dataplane.binpb")
        messages = mlserver.write_requests(venv, images, self.work_dir / "mlserver-infer.bin")
        call = GrpcCall(mlserver.INFER_METHOD, protoset, messages)
        self.mlserver: dict[str, Any] = {}
        cc = self.options.compare_concurrency
        for workers in self.options.mlserver_workers:
            with self.phase(f"mlserver parallel_workers={workers}"):
                self.mlserver[str(workers)] = self._mlserver_config(workers, call, images, cc)

    def _mlserver_config(
        self, workers: int, call: GrpcCall, images: list[Path], cc: int
    ) -> dict[str, Any]:
        s = self.settings
        peer = mlserver.MLServerPeer(
            venv=self.options.mlserver_venv,
            work_dir=self.work_dir,
            source_dir=self.repo_root / "server" / "src",
            model_path=self._model_path(),
            parallel_workers=workers,
            http_port=self.options.port_base + 90,
            grpc_port=self.options.port_base + 91,
            base_env=self.env,
            detector_extra={
                "num_threads": s.model_threads,
                "score_threshold": s.score_threshold,
                "iou_threshold": s.iou_threshold,
            },
        )
        try:
            peer.start()
            found = mlserver.detections(self.options.mlserver_venv, peer.grpc_target, images)
            problems = _reference_mismatches(found, self.reference)
            if problems:
                self.problems.append(f"MLServer pw={workers} detections differ: {problems}")

            def run_at(c: int) -> Callable[[str, float], LoadResult]:
                return lambda name, duration: self.ghz.run(
                    name, call, [peer.grpc_target], concurrency=c, duration_s=duration
                )

            # every process of the peer (main, inference workers), as found after the warm-up
            def groups() -> dict[str, list[int]]:
                return {"mlserver": peer.refresh_tree()}

            c16 = self.measure(f"mlserver_pw{workers}_c{cc}", run_at(cc), groups)
            c1 = self.measure(f"mlserver_pw{workers}_c1", run_at(1), groups)
            c16_summary = self.results[f"mlserver_pw{workers}_c{cc}"]
            pinned: dict[str, Any] = {}
            if self.split_cpus is not None:
                # the same peer, every process on one CPU (the load generator on the other)
                with self.pinned(peer.refresh_tree(), []):
                    one = self.measure(f"mlserver_pw{workers}_1cpu_c{cc}", run_at(cc), groups)
                summary = self.results[f"mlserver_pw{workers}_1cpu_c{cc}"]
                pinned = {
                    f"1cpu_c{cc}_img_s": round(one.rate, 1),
                    f"1cpu_c{cc}_errors": one.errors,
                    f"1cpu_c{cc}_cpu_ms_per_infer": summary["cpu_ms_per_call"]["mlserver"],
                }
            rss = peer.peak_rss_mb()
        finally:
            peer.stop()
        return {
            **pinned,
            "parallel_workers": workers,
            f"c{cc}_img_s": round(c16.rate, 1),
            f"c{cc}_errors": c16.errors,
            f"c{cc}_cpu_cores": c16_summary["server_cpu_cores"]["mlserver"],
            f"c{cc}_cpu_ms_per_infer": c16_summary["cpu_ms_per_call"]["mlserver"],
            "c1_p50_ms": round(c1.p50_ms, 2),
            "peak_rss_mb_by_pid": rss,
            "peak_rss_mb_total": round(sum(rss.values()), 1),
            "detection_mismatches": problems,
            "settings": peer.config,
        }

    def _model_path(self) -> Path:
        if self.settings.model_path is not None:
            return self.settings.model_path.expanduser().resolve()
        return self.settings.resolved_shared_dir() / DEFAULT_MODEL_FILE

    # --- report --------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        cc = self.options.compare_concurrency
        r = self.results

        def rate(name: str) -> float | None:
            return r[name]["rate"] if name in r else None

        def lat(name: str, key: str) -> float | None:
            return r[name][key] if name in r else None

        def cpu_ms(name: str, group: str) -> float | None:
            return r[name]["cpu_ms_per_call"].get(group) if name in r else None

        envoy_cc, memory_cc = f"invoke_grpc_envoy_c{cc}", f"invoke_memory_grpc_envoy_c{cc}"
        split_cc = f"invoke_split_grpc_envoy_c{cc}"
        get_tag = f"rate{self.options.get_rate:g}"

        metrics: dict[str, Any] = {
            "ceiling_img_s": round(self.ceiling.img_s, 1),
            "invoke_grpc_envoy_c1_p50_ms": lat("invoke_grpc_envoy_c1", "p50_ms"),
            "invoke_grpc_envoy_c16_img_s": rate(f"invoke_grpc_envoy_c{cc}"),
            "invoke_grpc_envoy_c16_p99_ms": lat(f"invoke_grpc_envoy_c{cc}", "p99_ms"),
            "invoke_grpc_direct_c16_img_s": rate(f"invoke_grpc_direct_c{cc}"),
            "invoke_rest_envoy_c16_img_s": rate(f"invoke_rest_envoy_c{cc}"),
            "invoke_rest_upload_envoy_c16_img_s": rate(f"invoke_rest_upload_envoy_c{cc}"),
            "get_rest_envoy_c16_rps": rate(f"get_rest_envoy_c{cc}"),
            "get_grpc_direct_c16_rps": rate(f"get_grpc_direct_c{cc}"),
            "get_rest_envoy_c16_p99_ms": lat(f"get_rest_envoy_c{cc}", "p99_ms"),
            "list_rest_envoy_c16_rps": rate(f"list_rest_envoy_c{cc}"),
            "delete_grpc_envoy_c16_rps": rate(f"delete_grpc_envoy_c{cc}"),
            "mlserver_best_c16_img_s": None,
            "mlserver_best_config": None,
            "single_image_inprocess_ms": round(self.ceiling.serial_median_ms, 2),
            "server_rss_mb": max(self.extra["server_rss_mb"].values(), default=None),
            # the web console: navigation start to the last thumbnail of the first page of 50
            "console_gallery_ms": self.extra.get("console_gallery", {}).get("console_gallery_ms"),
            # CPU per image of each part (cores x 1000 / rate during the measurement)
            "server_cpu_ms_per_invoke": cpu_ms(envoy_cc, "servers"),
            "envoy_cpu_ms_per_invoke": cpu_ms(envoy_cc, "envoy"),
            "cassandra_cpu_ms_per_invoke": cpu_ms(envoy_cc, "cassandra"),
            "ceiling_cpu_ms_per_img": self.ceiling.cpu_ms_per_img,
            "mlserver_best_cpu_ms_per_infer": None,
            # the serving path alone: the same Invoke with the in-memory store
            "invoke_memory_grpc_envoy_c16_img_s": rate(memory_cc),
            "invoke_memory_grpc_envoy_c16_p50_ms": lat(memory_cc, "p50_ms"),
            "invoke_memory_grpc_envoy_c16_p99_ms": lat(memory_cc, "p99_ms"),
            "memory_server_cpu_ms_per_invoke": cpu_ms(memory_cc, "servers"),
            "memory_envoy_cpu_ms_per_invoke": cpu_ms(memory_cc, "envoy"),
            "memory_server_rss_mb": max(
                self.extra.get("memory_store_server_rss_mb", {}).values(), default=None
            ),
            # the production shape: Cassandra on one CPU, servers + Envoy on the other
            "invoke_split_grpc_envoy_c16_img_s": rate(split_cc),
            "invoke_split_grpc_envoy_c16_p50_ms": lat(split_cc, "p50_ms"),
            "invoke_split_grpc_envoy_c16_p99_ms": lat(split_cc, "p99_ms"),
            "split_server_cpu_ms_per_invoke": cpu_ms(split_cc, "servers"),
            "split_envoy_cpu_ms_per_invoke": cpu_ms(split_cc, "envoy"),
            "split_cassandra_cpu_ms_per_invoke": cpu_ms(split_cc, "cassandra"),
            "mlserver_1cpu_best_c16_img_s": None,
            "mlserver_1cpu_best_config": None,
            "mlserver_1cpu_best_cpu_ms_per_infer": None,
            # open loop (fixed offered rate, latency from each call's due time)
            "invoke_grpc_envoy_halfmax_rate": self.extra.get("invoke_open_loop_rate"),
        }
        for name in (
            "invoke_grpc_envoy_halfmax",
            f"get_rest_envoy_{get_tag}",
            f"get_grpc_direct_{get_tag}",
        ):
            for key in ("p50_ms", "p99_ms", "p999_ms"):
                metrics[f"{name}_{key}"] = lat(name, key)
        for c in self.options.concurrencies:
            name = f"invoke_grpc_envoy_c{c}"
            metrics[f"{name}_img_s"] = rate(name)
            for key in ("p50_ms", "p95_ms", "p99_ms"):
                metrics[f"{name}_{key}"] = lat(name, key)
        for name in (
            f"invoke_grpc_direct_c{cc}",
            f"invoke_rest_envoy_c{cc}",
            f"invoke_rest_upload_envoy_c{cc}",
        ):
            for key in ("p50_ms", "p95_ms", "p99_ms"):
                metrics[f"{name}_{key}"] = lat(name, key)
        for name in (f"get_rest_envoy_c{cc}", f"get_grpc_direct_c{cc}"):
            metrics[f"{name}_p50_ms"] = lat(name, "p50_ms")
        for name, per in (
            (f"list_rest_envoy_c{cc}", "list"),
            (f"delete_grpc_envoy_c{cc}", "delete"),
        ):
            for key in ("p50_ms", "p99_ms"):
                metrics[f"{name}_{key}"] = lat(name, key)
            for group in ("servers", "envoy", "cassandra"):
                metrics[f"{group.removesuffix('s')}_cpu_ms_per_{per}"] = cpu_ms(name, group)
        for view in self.options.get_views[1:]:
            tail = f"c{cc}_{view.lower()}"
            for name in (f"get_rest_envoy_{tail}", f"get_grpc_direct_{tail}"):
                metrics[f"{name}_rps"] = rate(name)
                metrics[f"{name}_p99_ms"] = lat(name, "p99_ms")
        configs = getattr(self, "mlserver", {})
        clean = {k: v for k, v in configs.items() if not v[f"c{cc}_errors"]}
        if clean:
            best = max(clean.values(), key=lambda v: v[f"c{cc}_img_s"])
            metrics["mlserver_best_c16_img_s"] = best[f"c{cc}_img_s"]
            metrics["mlserver_best_config"] = f"parallel_workers={best['parallel_workers']}"
            metrics["mlserver_best_c1_p50_ms"] = best["c1_p50_ms"]
            metrics["mlserver_best_rss_mb_total"] = best["peak_rss_mb_total"]
            metrics["mlserver_best_cpu_ms_per_infer"] = best[f"c{cc}_cpu_ms_per_infer"]
        pinned = {
            k: v
            for k, v in configs.items()
            if f"1cpu_c{cc}_img_s" in v and not v[f"1cpu_c{cc}_errors"]
        }
        if pinned:
            best = max(pinned.values(), key=lambda v: v[f"1cpu_c{cc}_img_s"])
            metrics["mlserver_1cpu_best_c16_img_s"] = best[f"1cpu_c{cc}_img_s"]
            metrics["mlserver_1cpu_best_config"] = f"parallel_workers={best['parallel_workers']}"
            metrics["mlserver_1cpu_best_cpu_ms_per_infer"] = best[f"1cpu_c{cc}_cpu_ms_per_infer"]
        for workers, values in configs.items():
            if f"1cpu_c{cc}_img_s" in values:
                metrics[f"mlserver_pw{workers}_1cpu_c16_img_s"] = values[f"1cpu_c{cc}_img_s"]
            metrics[f"mlserver_pw{workers}_c16_img_s"] = values[f"c{cc}_img_s"]
            metrics[f"mlserver_pw{workers}_c16_cpu_ms_per_infer"] = values[
                f"c{cc}_cpu_ms_per_infer"
            ]
        return metrics

    def _layout(self) -> dict[str, Any]:
        s = self.settings
        return {
            "server_processes": s.server_processes,
            "workers_per_process": s.workers,
            "model_threads": s.model_threads,
            "tflite_runtime": getattr(s, "tflite_runtime", None),
            "envoy_concurrency": self.envoy_concurrency,
            "split_cpus": list(self.split_cpus) if self.split_cpus else None,
            "cassandra_jit": "full (C2)" if self.options.cassandra_full_jit else "C1 only",
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "kernel": platform.release(),
        }

    def _finish(self) -> int:
        metrics = self.metrics()
        targets = evaluate_targets(metrics)
        total = self.phase_s.get("total", 0.0)
        if total > TIME_BUDGET_S:
            self.problems.append(f"the run took {total:.0f}s, over the {TIME_BUDGET_S}s budget")
        missing = [
            key
            for key in REQUIRED_KEYS
            if metrics.get(key) is None
            and not (self.options.skip_mlserver and key.startswith("mlserver_"))
            and not (self.split_cpus is None and key in SPLIT_KEYS)
        ]
        if missing:
            self.problems.append(f"report keys without a value: {missing}")
        report = {
            **metrics,
            "ok": not self.problems,
            "problems": self.problems,
            "warnings": self.warnings,
            "targets": targets,
            "run": {
                "tag": self.tag,
                "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "duration_s": self.options.duration_s,
                "warmup_s": self.options.warmup_s,
                "stack_warmup_s": self.options.stack_warmup_s,
                "phase_s": self.phase_s,
            },
            "layout": self._layout(),
            "image_mix": [image.describe() for image in self.mix],
            "ceiling": dataclasses.asdict(self.ceiling),
            "measurements": self.results,
            "mlserver": getattr(self, "mlserver", {}),
            "checks": self.checks,
            "processes": self.extra,
            "tools": tool_versions(self.options, self.repo_root),
        }
        path = self.options.out_dir / "report.json"
        write_report(path, report)
        print()
        print("layout: " + ", ".join(f"{k}={v}" for k, v in report["layout"].items()))
        print(measurement_table(self.results))
        print()
        print(headline_table(metrics))
        print()
        print(target_table(targets))
        print()
        print("phases (s): " + ", ".join(f"{k} {v:g}" for k, v in self.phase_s.items()))
        for warning in self.warnings:
            print(f"WARNING: {warning}")
        for problem in self.problems:
            print(f"PROBLEM: {problem}")
        print(f"report: {path}")
        return 0 if not self.problems else 1


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions(options: Options, repo_root: Path) -> dict[str, Any]:
    """Versions of everything that took part."""
    go_mod = (repo_root / "bench/ghzload/go.mod").read_text()
    ghz = re.search(r"github.com/bojand/ghz (v[\d.]+)", go_mod)
    mlserver_python = options.mlserver_venv / "bin" / "python"
    return {
        "python": platform.python_version(),
        "bench-ghz": f"ghz {ghz.group(1) if ghz else '?'} runner, GOMAXPROCS=1",
        "wrk": _first_line([options.wrk, "-v"]),
        "envoy": _first_line([str(envoy_binary()), "--version"]),
        "grpcio": _version("grpcio"),
        "ai-edge-litert": _version("ai-edge-litert"),
        "tensorflow": _version("tensorflow"),
        "opencv-python-headless": _version("opencv-python-headless"),
        "mlserver": _first_line(
            [
                str(mlserver_python),
                "-c",
                "import importlib.metadata as m; print(m.version('mlserver'), "
                "'ai-edge-litert', m.version('ai-edge-litert'))",
            ]
        )
        if mlserver_python.exists()
        else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ
    options = parse_args(argv, env)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout
    )
    for noisy in ("cassandra", "cassandra.cluster", "cassandra.connection"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    repo_root = Path.cwd()
    if not (repo_root / "bench" / "run.py").is_file():
        print("run from the repository root: python -m bench", file=sys.stderr)
        return 2
    with _sigterm_as_interrupt():
        try:
            return BenchRun(options, repo_root=repo_root, env=env).execute()
        except KeyboardInterrupt:
            print("interrupted; everything started was stopped", file=sys.stderr)
            return 130
