"""``make soak``: a long run of the local stack (two servers behind Envoy, on Cassandra) at about
60 % of its measured maximum Invoke rate, with a realistic mix, reporting leaks and drifts.

1. The maximum (``--measure-s``, 30 s): 8 closed-loop clients through Envoy, each running the
   mix below (a new Invoke, then its share of replays, Gets, renders, listings and deletes):
   the rate of new Invokes that the whole mix sustains, not Invokes alone.
2. The run (``--minutes``): open loop, new Invokes paced at ``--share`` (0.6) of that rate, and
   beside them, per new Invoke, on average 0.3 replays (same id and content), 0.4 Gets, 0.1
   renders, 0.1 listings (first page) and 0.1 deletes of earlier ids.
3. The report (stdout, and ``build/soak/report.json``): calls and errors by code; Invoke p50/p99
   per minute; each server's RSS and open file descriptors every 10 s, with a least-squares
   slope after the first minute (warm-up), and the machine's load average beside them;
   Cassandra's heap after a full GC (``jcmd <pid> GC.run``, then ``GC.heap_info``; the node's
   process found by its CQL port) before the run, every 5 minutes and at the end; the
   keyspace's tables on disk (``system_views.disk_usage``: flushed SSTables) at the start and
   the end.

Pass: no error but the documented busy answer (``UNAVAILABLE`` "server busy, retry later"),
RSS slope under 1 MB per 10 min, no growth in file descriptors (the last minute's median no
higher than the first warm minute's, and a slope under 1 per 10 min), Invoke p99 of the last
five minutes within 20 % of the first five after warm-up (for runs under 11 minutes: the last
minute against the first after warm-up). Exit status 1 when any fails. ``--ci`` (the 3-minute
run of CI) judges only what 3 minutes can decide: errors by code and file descriptors; the RSS
slope and the p99 drift are reported, not judged (3 minutes of RSS are dominated by the images
in flight).

Cassandra: ``INFERENCE_CASSANDRA_CONTACT_POINTS``/``INFERENCE_CASSANDRA_PORT`` when set, else
the stack's own node (``build/cassandra``, reused when it runs); keyspace ``soak``, dropped and
created afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from devstack.cassandra import LocalCassandra
from devstack.process import free_port, free_ports
from devstack.stack import LocalStack, StackSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "build" / "soak"
OPTIONS = [("grpc.max_send_message_length", 1 << 25), ("grpc.max_receive_message_length", 1 << 25)]
BUSY = {"busy"}
"""The documented busy answer: UNAVAILABLE "server busy, retry later" (docs/api.md, Errors)."""
MIX = {"replay": 0.3, "get": 0.4, "render": 0.1, "list": 0.1, "delete": 0.1}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_10min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per 10 minutes."""
    if len(points) < 2:
        return 0.0
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return (
        0.0
        if den == 0
        else 600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Soak:
    def __init__(self, target: str, images: list[bytes], pids: list[int]) -> None:
        self.target = target
        self.images = images
        self.pids = pids
        self.prefix = f"soak-{uuid.uuid4().hex[:8]}"
        self.codes: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.invoke_ms: dict[int, list[float]] = collections.defaultdict(list)
        self.samples: list[dict[str, Any]] = []
        self.known: list[tuple[str, bytes]] = []
        self.sequence = 0
        self.skipped = 0
        self.details: dict[str, str] = {}
        """The first message of each error."""

    async def max_rate(self, stub: Any, seconds: float = 30.0) -> float:
        """New Invokes a second that 8 closed-loop clients of the whole mix sustain."""
        done = 0
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                await self.invoke_new(stub, minute=-1)
                done += 1
                for kind, share in MIX.items():
                    if random.random() < share:  # noqa: S311 (a load mix)
                        await self.other(stub, kind)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(8)))
        return done / (time.monotonic() - started)

    async def call(self, kind: str, coro: Any) -> Any:
        self.calls[kind] += 1
        try:
            return await coro
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            if code == "UNAVAILABLE" and (error.details() or "").startswith("server busy"):
                code = "UNAVAILABLE busy"  # the documented busy answer (work queue, memory)
            self.codes[f"{kind} {code}"] += 1
            self.details.setdefault(f"{kind} {code}", error.details() or "")
            return None

    async def invoke_new(self, stub: Any, minute: int) -> None:
        self.sequence += 1
        invocation_id = f"{self.prefix}-{self.sequence}"
        content = self.images[self.sequence % len(self.images)]
        start = time.monotonic()
        request = pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=content))
        response = await self.call("invoke", stub.Invoke(request, timeout=60))
        if response is not None:
            self.invoke_ms[minute].append(1000 * (time.monotonic() - start))
            self.known.append((invocation_id, content))

    async def other(self, stub: Any, kind: str) -> None:
        if not self.known:
            return
        invocation_id, content = random.choice(self.known)  # noqa: S311 (a load mix)
        if kind == "replay":
            request = pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=content))
            await self.call(kind, stub.Invoke(request, timeout=60))
        elif kind == "get":
            await self.call(
                kind, stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id), timeout=30)
            )
        elif kind == "render":
            request = pb.RenderInvocationRequest(id=invocation_id)
            await self.call(kind, stub.RenderInvocation(request, timeout=30))
        elif kind == "list":
            await self.call(
                kind, stub.ListInvocations(pb.ListInvocationsRequest(page_size=20), timeout=30)
            )
        elif kind == "delete":
            self.known.remove((invocation_id, content))
            request = pb.DeleteInvocationRequest(id=invocation_id, allow_missing=True)
            await self.call(kind, stub.DeleteInvocation(request, timeout=30))

    def sample(self, elapsed: float) -> None:
        row: dict[str, Any] = {"t": round(elapsed, 1)}
        for n, pid in enumerate(self.pids):
            row[f"rss_mb_{n}"] = round(rss_mb(pid), 1)
            row[f"fds_{n}"] = open_fds(pid)
        row["load_1m"] = round(os.getloadavg()[0], 2)
        self.samples.append(row)

    async def run(
        self, minutes: float, share: float, measure_s: float, cassandra: Cassandra
    ) -> dict[str, Any]:
        async with grpc.aio.insecure_channel(self.target, options=OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            maximum = await self.max_rate(stub, measure_s)
            measured_calls = dict(self.calls)
            self.calls.clear()
            self.codes.clear()
            rate = max(0.2, share * maximum)
            print(f"maximum {maximum:.1f} new Invokes/s with the mix; running at {rate:.1f}/s")
            await asyncio.to_thread(cassandra.heap_after_gc, 0.0)
            inflight: set[asyncio.Task[None]] = set()
            limit = asyncio.Semaphore(64)
            start = time.monotonic()
            next_sample = 0.0
            next_heap = 300.0
            heap_task: asyncio.Task[None] | None = None
            n = 0
            while (elapsed := time.monotonic() - start) < minutes * 60:
                if elapsed >= next_sample:
                    self.sample(elapsed)
                    next_sample += 10.0
                if elapsed >= next_heap and (heap_task is None or heap_task.done()):
                    heap_task = asyncio.create_task(
                        asyncio.to_thread(cassandra.heap_after_gc, elapsed)
                    )
                    next_heap += 300.0
                minute = int(elapsed // 60)
                jobs = [self.invoke_new(stub, minute)]
                jobs += [self.other(stub, k) for k, p in MIX.items() if random.random() < p]  # noqa: S311
                for job in jobs:
                    if limit.locked():
                        self.skipped += 1
                        job.close()
                        continue

                    async def guarded(job: Any = job) -> None:
                        async with limit:
                            await job

                    task = asyncio.create_task(guarded())
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                n += 1
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            await asyncio.gather(*inflight)
            self.sample(time.monotonic() - start)
            if heap_task is not None:
                await heap_task
            await asyncio.to_thread(cassandra.heap_after_gc, time.monotonic() - start)
        return {
            "max_invoke_rate_with_mix": round(maximum, 2),
            "measured_calls": measured_calls,
            "invoke_rate": round(rate, 2),
        }


def cassandra_pid(host: str, port: int) -> int | None:
    """The process listening on the node's CQL port (``ss``), or ``SOAK_CASSANDRA_PID``."""
    if os.environ.get("SOAK_CASSANDRA_PID"):
        return int(os.environ["SOAK_CASSANDRA_PID"])
    ss = shutil.which("ss")
    if ss is None:
        return None
    listing = subprocess.run(
        [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10
    ).stdout
    match = re.search(r"pid=(\d+)", listing)
    return int(match.group(1)) if match else None


class Cassandra:
    """The node's figures: heap after a GC (``jcmd``), the keyspace's tables on disk."""

    def __init__(self, contact: str, port: int, keyspace: str) -> None:
        self.contact = contact
        self.port = port
        self.keyspace = keyspace
        self.pid = cassandra_pid(contact, port)
        self.heap: list[dict[str, Any]] = []
        """(t, heap used MiB after a full GC, committed MiB)"""
        self.heap_note = ""

    def session(self) -> Any:
        from cassandra.cluster import Cluster

        return Cluster([self.contact], port=self.port).connect()

    def drop_keyspace(self) -> None:
        session = self.session()
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}", timeout=120)
        finally:
            session.cluster.shutdown()

    def disk_mebibytes(self) -> dict[str, float] | str:
        try:
            session = self.session()
        except Exception as exc:
            return f"not measured: {exc}"
        try:
            rows = session.execute(
                "SELECT table_name, mebibytes FROM system_views.disk_usage"
                " WHERE keyspace_name = %s",
                (self.keyspace,),
            )
            return {r.table_name: r.mebibytes for r in rows}
        except Exception as exc:
            return f"not measured: {exc}"
        finally:
            session.cluster.shutdown()

    def heap_after_gc(self, elapsed: float) -> None:
        """A full GC of the node (``jcmd <pid> GC.run``), then its heap in use."""
        jcmd = shutil.which("jcmd")
        if self.pid is None or jcmd is None:
            self.heap_note = "not measured: " + (
                "no jcmd on PATH" if jcmd is None else "no process found on the CQL port"
            )
            return
        try:
            subprocess.run(
                [jcmd, str(self.pid), "GC.run"], timeout=60, check=True, capture_output=True
            )
            info = subprocess.run(
                [jcmd, str(self.pid), "GC.heap_info"],
                timeout=60,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except Exception as exc:
            self.heap_note = f"not measured: {exc}"
            return
        # G1: " garbage-first heap   total 264192K, used 73049K [...]"
        match = re.search(r"heap\s+total (\d+)K, used (\d+)K", info)
        if match is None:
            self.heap_note = f"not measured: cannot read {info[:200]!r}"
            return
        total_k, used_k = (int(g) for g in match.groups())
        self.heap.append(
            {
                "t": round(elapsed, 1),
                "used_mib": round(used_k / 1024, 1),
                "committed_mib": round(total_k / 1024, 1),
            }
        )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(soak: Soak, minutes: float, ci: bool) -> dict[str, Any]:
    """Each criterion's figure and whether it passed; ``judged`` names the ones that decide."""
    warm = [s for s in soak.samples if s["t"] >= 60] or soak.samples
    result: dict[str, Any] = {"slopes_per_10min": {}, "checks": {}, "reported_only": {}}
    checks: dict[str, bool] = {}
    informative: dict[str, bool] = {}
    for n in range(len(soak.pids)):
        rss = slope_per_10min([(s["t"], s[f"rss_mb_{n}"]) for s in warm])
        fds = slope_per_10min([(s["t"], s[f"fds_{n}"]) for s in warm])
        first_fds = median([s[f"fds_{n}"] for s in warm if s["t"] < warm[0]["t"] + 60])
        last_fds = median([s[f"fds_{n}"] for s in warm if s["t"] > warm[-1]["t"] - 60])
        result["slopes_per_10min"][f"server {n}"] = {
            "rss_mb": round(rss, 2),
            "fds": round(fds, 2),
            "fds_first_last_warm_minute_median": [first_fds, last_fds],
        }
        (informative if ci else checks)[f"server {n} RSS slope < 1 MB/10 min"] = rss < 1.0
        checks[f"server {n} fds: last minute's median <= first warm minute's"] = (
            last_fds <= first_fds
        )
        (informative if ci else checks)[f"server {n} fds slope < 1/10 min"] = fds < 1.0
    errors = {k: v for k, v in soak.codes.items() if k.split()[-1] not in BUSY}
    checks["no errors but busy answers"] = not errors
    minutes_seen = sorted(m for m in soak.invoke_ms if m >= 1)
    window = 5 if minutes >= 11 else 1
    first = [v for m in minutes_seen[:window] for v in soak.invoke_ms[m]]
    last = [v for m in minutes_seen[-window:] for v in soak.invoke_ms[m]]
    p99_first, p99_last = pct(first, 0.99), pct(last, 0.99)
    result["p99_first_last_ms"] = [round(p99_first, 1), round(p99_last, 1)]
    (informative if ci else checks)[f"p99 last {window} min within 20 % of first {window}"] = (
        p99_last <= 1.2 * p99_first
    )
    result["checks"] = checks
    result["reported_only"] = informative
    return result


def summary(report: dict[str, Any]) -> str:
    """The figures as Markdown rows, for docs/reliability.md."""
    lines = ["| figure | value |", "|---|---|"]
    add = lambda k, v: lines.append(f"| {k} | {v} |")  # noqa: E731
    add("minutes", report["minutes"])
    add(
        "max new Invokes/s with the mix / run rate",
        f"{report['max_invoke_rate_with_mix']} / {report['invoke_rate']}",
    )
    add("calls", ", ".join(f"{v:,} {k}" for k, v in report["calls"].items()))
    add("errors by code", ", ".join(f"{v:,} {k}" for k, v in report["errors"].items()) or "none")
    add("skipped (64 in flight)", report["skipped_at_concurrency_limit"])
    per_minute = report["invoke_p50_p99_ms_per_minute"]
    add(
        "Invoke p50/p99 per minute (ms)",
        "; ".join(f"{m}: {p50:.0f}/{p99:.0f}" for m, (p50, p99) in per_minute.items()),
    )
    add("p99 first/last window (ms)", report["p99_first_last_ms"])
    for server, slopes in report["slopes_per_10min"].items():
        add(
            f"{server} RSS slope, fd slope (per 10 min), fd medians first/last warm minute",
            f"{slopes['rss_mb']} MB, {slopes['fds']},"
            f" {slopes['fds_first_last_warm_minute_median']}",
        )
    rss = [[s.get(f"rss_mb_{n}") for s in report["servers_per_minute"]] for n in range(2)]
    add("server RSS per minute (MB)", " and ".join(", ".join(f"{v:.0f}" for v in r) for r in rss))
    add(
        "load average per minute",
        ", ".join(str(s["load_1m"]) for s in report["servers_per_minute"]),
    )
    add(
        "Cassandra heap after GC (MiB, t in s)",
        ", ".join(f"{h['t']:.0f}: {h['used_mib']}" for h in report["cassandra_heap_after_gc"])
        or report.get("cassandra_heap_note", ""),
    )
    add(
        "tables on disk start -> end (MiB)",
        f"{report['disk_mebibytes_start']} -> {report['disk_mebibytes_end']}",
    )
    for name, ok in {**report["checks"], **report["reported_only"]}.items():
        judged = "" if name in report["checks"] else " (reported, not judged)"
        add(name + judged, "pass" if ok else "FAIL")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--share", type=float, default=0.6)
    parser.add_argument("--measure-s", type=float, default=30.0)
    parser.add_argument(
        "--ci", action="store_true", help="judge only errors by code and file descriptors"
    )
    args = parser.parse_args()
    shared = Path(os.environ.get("INFERENCE_SHARED_DIR", REPO_ROOT.parent / "shared"))
    images = [p.read_bytes() for p in sorted((shared / "images").glob("face-*.jpg"))[:8]]
    node: LocalCassandra | None = None
    if os.environ.get("INFERENCE_CASSANDRA_CONTACT_POINTS"):
        contact = os.environ["INFERENCE_CASSANDRA_CONTACT_POINTS"].split(",")[0]
        port = int(os.environ.get("INFERENCE_CASSANDRA_PORT", "9042"))
    else:  # the dev node (build/cassandra): reused when it runs, else started and stopped
        node = LocalCassandra()
        contact, port = node.host, node.native_port
    own_node = node.start(timeout=180) if node is not None else False
    keyspace = "soak"
    settings = StackSettings(
        host="127.0.0.1",
        port=free_ports(2),
        server_processes=2,
        metrics_port=free_ports(2),
        envoy_port=free_port(),
        envoy_internal_port=free_port(),
        envoy_admin_port=free_port(),
        store="cassandra",
        cassandra_contact_points=[contact],
        cassandra_port=port,
        cassandra_keyspace=keyspace,
        cassandra_create_schema=True,
        shared_dir=shared,
        build_dir=OUT / "stack",
    )
    stack = LocalStack(settings, repo_root=REPO_ROOT, base_env=os.environ)
    cassandra = Cassandra(contact, port, keyspace)
    try:
        cassandra.drop_keyspace()  # the servers create it afresh
        stack.start()
        try:
            pids = [s.pid for s in stack.servers if s.pid is not None]
            soak = Soak(stack.grpc_target, images, pids)
            disk_start = cassandra.disk_mebibytes()
            rates = asyncio.run(soak.run(args.minutes, args.share, args.measure_s, cassandra))
            disk_end = cassandra.disk_mebibytes()
        finally:
            stack.stop()
    finally:
        if own_node and node is not None:
            node.stop()
    report: dict[str, Any] = {
        "minutes": args.minutes,
        **rates,
        "calls": dict(soak.calls),
        "errors": dict(soak.codes),
        "error_messages": soak.details,
        "skipped_at_concurrency_limit": soak.skipped,
        "invoke_p50_p99_ms_per_minute": {
            m: [round(pct(v, 0.5), 1), round(pct(v, 0.99), 1)]
            for m, v in sorted(soak.invoke_ms.items())
            if m >= 0
        },
        "samples": soak.samples,
        "servers_per_minute": [s for s in soak.samples if int(s["t"]) % 60 < 10],
        "cassandra_pid": cassandra.pid,
        "cassandra_heap_after_gc": cassandra.heap,
        "cassandra_heap_note": cassandra.heap_note,
        "disk_mebibytes_start": disk_start,
        "disk_mebibytes_end": disk_end,
        **verdict(soak, args.minutes, args.ci),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (OUT / "summary.md").write_text(summary(report) + "\n")
    print(json.dumps(report, indent=2, default=str))
    print(summary(report))
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("PASS" if not failed else f"FAIL: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
