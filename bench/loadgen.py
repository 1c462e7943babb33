"""The load generators: ``bench-ghz`` (ghz's runner, see ``bench/ghzload``) for gRPC and wrk for
REST, each run as a child process for a fixed time at a fixed concurrency (closed loop; bench-ghz
also for a fixed number of calls, e.g. one delete per id).

Both are native and single-threaded here (``GOMAXPROCS=1``, ``wrk -t1``) so that they leave the
cores to the server; the CPU time each one used is measured (``wait4``) and reported with its
result. Every non-OK answer is counted and a few are kept as samples: a result with errors is
flagged by the report, never folded into the rates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

WRK_RESULT_MARKER = "BENCH_WRK_RESULT "
WRK_DIR = Path(__file__).resolve().parent / "wrk"


@dataclasses.dataclass
class LoadResult:
    """What one measurement (one or several load generators run together) saw."""

    name: str
    tool: str
    targets: list[str]
    concurrency: int
    duration_s: float
    ok: int
    errors: int
    statuses: dict[str, int]
    error_samples: list[str]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    client_cpu_s: float
    p999_ms: float = math.nan
    offered_rate: float | None = None
    """Open loop: the requests a second sent on schedule (None: closed loop)."""
    max_send_lag_ms: float | None = None
    """Open loop: how far the sender fell behind its schedule at worst."""

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, object]:
        """The result as JSON-ready values (rates and times rounded)."""
        data = dataclasses.asdict(self)
        data["rate"] = round(self.rate, 1)
        data["client_cpu_cores"] = (
            round(self.client_cpu_s / self.duration_s, 3) if self.duration_s else None
        )
        for key in ("p50_ms", "p95_ms", "p99_ms", "p999_ms", "mean_ms", "max_ms", "duration_s"):
            data[key] = None if math.isnan(data[key]) else round(data[key], 3)
        return data


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (``fraction`` in [0, 1]); NaN if none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


# --- child processes ----------------------------------------------------------------------


def _start(
    argv: Sequence[str],
    *,
    log_file: Path,
    env: dict[str, str] | None = None,
    cpus: frozenset[int] | None = None,
) -> int:
    """Start ``argv`` in its own session, output to ``log_file``, on ``cpus`` only when given
    (Linux); return its PID."""
    log_file.parent.mkdir(parents=True, exist_ok=True)

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=pin if cpus else None,
        )
    return process.pid


def _wait_all(pids: Sequence[int], timeout: float) -> tuple[list[int], float]:
    """Wait for every PID (killing the rest at ``timeout``); return exit codes and CPU seconds.

    The CPU time comes from ``wait4``'s rusage: what each child used, all threads included.
    """
    deadline = time.monotonic() + timeout
    pending = dict.fromkeys(pids, -1)
    cpu = 0.0
    try:
        while any(code == -1 for code in pending.values()):
            for pid, code in pending.items():
                if code != -1:
                    continue
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    pending[pid] = os.waitstatus_to_exitcode(status)
                    cpu += usage.ru_utime + usage.ru_stime
            if time.monotonic() > deadline:
                raise TimeoutError(f"load generator(s) {pids} ran past {timeout:.0f}s")
            time.sleep(0.05)
    except BaseException:
        for pid, code in pending.items():
            if code == -1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        raise
    return list(pending.values()), cpu


# --- ghz ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GrpcCall:
    """A unary method and the requests to send to it round-robin."""

    method: str
    """Fully-qualified, e.g. ``inference.v1.InferenceService.Invoke``."""
    protoset: Path
    messages: Path
    """uvarint length-prefixed serialized request messages."""
    unique_id_field: str = ""
    """Field-number path of a string id to make unique per call (``1.1``: ``input.id``)."""


class Ghz:
    """Runs ``bench-ghz`` (one per target, together) and merges what they saw."""

    def __init__(self, binary: Path, work_dir: Path, *, cpus: int = 1) -> None:
        self.binary = binary
        self.work_dir = work_dir
        self.cpus = cpus
        self.affinity: frozenset[int] | None = None
        """CPUs the load generator runs on (None: any)."""

    def run(
        self,
        name: str,
        call: GrpcCall,
        targets: Sequence[str],
        *,
        concurrency: int,
        duration_s: float,
        id_prefix: str = "bench-",
        total: int = 0,
        timeout_s: float | None = None,
    ) -> LoadResult:
        """Drive every target at once, splitting ``concurrency`` between them (as evenly as
        it divides; each target gets at least one call in flight).

        ``total``: send that many calls (one target only) instead of running for
        ``duration_s``: with as many as ``call`` has messages, each message is sent once.
        ``timeout_s``: how long the run may take (default ``duration_s`` + 60)."""
        if total and len(targets) != 1:
            raise ValueError("a run of a fixed number of calls drives one target")
        base, extra = divmod(concurrency, len(targets))
        shares = [max(1, base + (1 if i < extra else 0)) for i in range(len(targets))]
        outputs, pids = [], []
        for index, (target, share) in enumerate(zip(targets, shares, strict=True)):
            out = self.work_dir / f"{name}-{index}.json"
            out.unlink(missing_ok=True)
            argv = [
                str(self.binary),
                f"-target={target}",
                f"-call={call.method}",
                f"-protoset={call.protoset}",
                f"-messages={call.messages}",
                f"-c={share}",
                f"-n={total}" if total else f"-z={duration_s}s",
                f"-cpus={self.cpus}",
                f"-out={out}",
            ]
            if call.unique_id_field:
                argv += [
                    f"-unique-id-field={call.unique_id_field}",
                    f"-id-prefix={id_prefix}{index}-",
                ]
            pids.append(
                _start(argv, log_file=self.work_dir / f"{name}-{index}.log", cpus=self.affinity)
            )
            outputs.append(out)
        codes, cpu = _wait_all(pids, timeout=timeout_s or duration_s + 60)
        for code, out in zip(codes, outputs, strict=True):
            if code != 0 or not out.is_file():
                log = out.with_suffix(".log")
                raise RuntimeError(f"bench-ghz failed (status {code}): {log.read_text()[-2000:]}")
        parts = [json.loads(out.read_text()) for out in outputs]
        return self._merge(name, targets, concurrency, parts, cpu)

    def run_rate(
        self,
        name: str,
        targets: Sequence[str],
        *,
        rate: float,
        duration_s: float,
        call: GrpcCall | None = None,
        http_paths: Path | None = None,
        id_prefix: str = "bench-",
    ) -> LoadResult:
        """Open loop (``bench-ghz -rate``): ``rate`` requests a second in all, on a fixed
        schedule, split evenly between ``targets`` (gRPC ``host:port`` with ``call``, or base
        URLs with ``http_paths``, GETs); latency from each request's due time."""
        outputs, pids = [], []
        for index, target in enumerate(targets):
            out = self.work_dir / f"{name}-{index}.json"
            out.unlink(missing_ok=True)
            argv = [
                str(self.binary),
                f"-rate={rate / len(targets)}",
                f"-z={duration_s}s",
                f"-cpus={self.cpus}",
                f"-out={out}",
            ]
            if http_paths is not None:
                argv += [f"-http-base={target}", f"-http-paths={http_paths}"]
            elif call is not None:
                argv += [f"-target={target}", f"-call={call.method}", f"-messages={call.messages}"]
                if call.unique_id_field:
                    argv += [
                        f"-unique-id-field={call.unique_id_field}",
                        f"-id-prefix={id_prefix}{index}-",
                    ]
            else:
                raise ValueError("run_rate needs a gRPC call or HTTP paths")
            pids.append(
                _start(argv, log_file=self.work_dir / f"{name}-{index}.log", cpus=self.affinity)
            )
            outputs.append(out)
        codes, cpu = _wait_all(pids, timeout=duration_s + 90)
        for code, out in zip(codes, outputs, strict=True):
            if code != 0 or not out.is_file():
                log = out.with_suffix(".log")
                raise RuntimeError(f"bench-ghz failed (status {code}): {log.read_text()[-2000:]}")
        parts = [json.loads(out.read_text()) for out in outputs]
        result = self._merge(name, targets, 0, parts, cpu)
        result.offered_rate = rate
        result.max_send_lag_ms = max(part["max_send_lag_us"] for part in parts) / 1000
        return result

    @staticmethod
    def _merge(
        name: str, targets: Sequence[str], concurrency: int, parts: list[dict], cpu: float
    ) -> LoadResult:
        latencies = sorted(us / 1000 for part in parts for us in part.get("latencies_us") or [])
        statuses: dict[str, int] = {}
        for part in parts:
            for status, count in (part.get("statuses") or {}).items():
                statuses[status] = statuses.get(status, 0) + count
        return LoadResult(
            name=name,
            tool="bench-ghz",
            targets=list(targets),
            concurrency=concurrency,
            duration_s=max(part["total_s"] for part in parts),
            ok=sum(part["ok"] for part in parts),
            errors=sum(part["errors"] for part in parts),
            statuses=statuses,
            error_samples=[s for part in parts for s in part.get("error_samples") or []][:5],
            p50_ms=percentile(latencies, 0.50),
            p95_ms=percentile(latencies, 0.95),
            p99_ms=percentile(latencies, 0.99),
            mean_ms=sum(latencies) / len(latencies) if latencies else math.nan,
            max_ms=latencies[-1] if latencies else math.nan,
            client_cpu_s=cpu,
            p999_ms=percentile(latencies, 0.999),
        )


# --- wrk ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RestCall:
    """A wrk Lua script (in ``bench/wrk``) and its arguments."""

    script: str
    args: tuple[str, ...] = ()


class Wrk:
    """Runs wrk with one thread and ``concurrency`` connections (one request in flight each)."""

    def __init__(self, binary: str, work_dir: Path) -> None:
        self.binary = binary
        self.work_dir = work_dir

    def run(
        self, name: str, call: RestCall, base_url: str, *, concurrency: int, duration_s: float
    ) -> LoadResult:
        log = self.work_dir / f"{name}.log"
        argv = [
            self.binary,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "20s",
            "-s",
            str(WRK_DIR / call.script),
            base_url,
            "--",
            *call.args,
        ]
        pid = _start(argv, log_file=log)
        (code,), cpu = _wait_all([pid], timeout=duration_s + 60)
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith(WRK_RESULT_MARKER)]
        if code != 0 or not lines:
            raise RuntimeError(f"wrk failed (status {code}): {text[-2000:]}")
        data = json.loads(lines[-1][len(WRK_RESULT_MARKER) :])
        socket_errors = sum(data["socket_errors"].values())
        statuses = {str(k): v for k, v in data["statuses"].items()}
        if socket_errors:
            statuses["socket_errors"] = socket_errors
        non_ok = data["non2xx"]
        return LoadResult(
            name=name,
            tool="wrk",
            targets=[base_url],
            concurrency=concurrency,
            duration_s=data["duration_us"] / 1e6,
            ok=data["requests"] - non_ok,
            errors=non_ok + socket_errors,
            statuses=statuses,
            error_samples=data["error_samples"],
            p50_ms=data["p50_us"] / 1000,
            p95_ms=data["p95_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            mean_ms=data["mean_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            client_cpu_s=cpu,
        )
