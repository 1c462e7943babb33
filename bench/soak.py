"""``make soak``: a long run of the local stack (two servers behind Envoy, on Cassandra) at about
60 % of its measured maximum Invoke rate, with a realistic mix, reporting leaks and drifts.

1. The maximum: 20 s of closed-loop Invokes of new ids (8 at a time) through Envoy.
2. The run (``--minutes``): open loop, new Invokes paced at ``--share`` (0.6) of that rate, and
   beside them, per new Invoke, on average 0.3 replays (same id and content), 0.4 Gets, 0.1
   renders, 0.1 listings (first page) and 0.1 deletes of earlier ids.
3. The report (stdout, and ``build/soak/report.json``): calls and errors by code; Invoke p50/p99
   per minute; each server's RSS and open file descriptors per minute, with a least-squares slope
   after the first minute (warm-up); Cassandra's heap after a GC where ``nodetool`` reaches the
   node's JMX (else "not measured"); the keyspace's tables on disk (``system_views.disk_usage``).

Pass: no error but the documented busy answer (``UNAVAILABLE`` "server busy, retry later"),
RSS slope under 1 MB
per 10 min, no growth in file descriptors (slope under 1 per 10 min), Invoke p99 of the last
five minutes within 20 % of the first five after warm-up (for runs under 11 minutes: the last
minute against the first after warm-up). Exit status 1 when any fails.

Cassandra: ``INFERENCE_CASSANDRA_CONTACT_POINTS``/``INFERENCE_CASSANDRA_PORT`` when set (keyspace
``soak``, dropped and created afresh), else the stack's own node.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
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

from devstack.process import free_port, free_ports
from devstack.stack import LocalStack, StackSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "build" / "soak"
OPTIONS = [("grpc.max_send_message_length", 1 << 25), ("grpc.max_receive_message_length", 1 << 25)]
BUSY = {"busy"}
"""The documented busy answer: UNAVAILABLE "server busy, retry later" (README, error table)."""
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

    async def max_rate(self, stub: Any, seconds: float = 20.0) -> float:
        done = 0
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                await self.invoke_new(stub, minute=-1)
                done += 1

        await asyncio.gather(*(worker() for _ in range(8)))
        return done / seconds

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
        self.samples.append(row)

    async def run(self, minutes: float, share: float) -> dict[str, Any]:
        async with grpc.aio.insecure_channel(self.target, options=OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            maximum = await self.max_rate(stub)
            rate = max(0.2, share * maximum)
            inflight: set[asyncio.Task[None]] = set()
            limit = asyncio.Semaphore(64)
            start = time.monotonic()
            next_sample = 0.0
            n = 0
            while (elapsed := time.monotonic() - start) < minutes * 60:
                if elapsed >= next_sample:
                    self.sample(elapsed)
                    next_sample += 10.0
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
        return {"max_invoke_rate": round(maximum, 2), "invoke_rate": round(rate, 2)}


def cassandra_figures(contact: str, port: int, keyspace: str) -> dict[str, Any]:
    from cassandra.cluster import Cluster

    figures: dict[str, Any] = {}
    cluster = Cluster([contact], port=port)
    try:
        session = cluster.connect()
        rows = session.execute(
            "SELECT table_name, mebibytes FROM system_views.disk_usage WHERE keyspace_name = %s",
            (keyspace,),
        )
        figures["disk_mebibytes"] = {r.table_name: r.mebibytes for r in rows}
    except Exception as exc:
        figures["disk_mebibytes"] = f"not measured: {exc}"
    finally:
        cluster.shutdown()
    nodetool = shutil.which("nodetool")
    if nodetool is None:
        figures["heap_after_gc"] = "not measured (no nodetool on PATH / JMX)"
    else:
        try:
            subprocess.run([nodetool, "garbagecollect", keyspace], timeout=120, check=True)
            info = subprocess.run([nodetool, "info"], timeout=60, capture_output=True, text=True)
            figures["heap_after_gc"] = next(
                line for line in info.stdout.splitlines() if line.startswith("Heap Memory")
            )
        except Exception as exc:
            figures["heap_after_gc"] = f"not measured: {exc}"
    return figures


def verdict(soak: Soak, minutes: float) -> dict[str, Any]:
    warm = [s for s in soak.samples if s["t"] >= 60] or soak.samples
    result: dict[str, Any] = {"slopes_per_10min": {}, "checks": {}}
    for n in range(len(soak.pids)):
        rss = slope_per_10min([(s["t"], s[f"rss_mb_{n}"]) for s in warm])
        fds = slope_per_10min([(s["t"], s[f"fds_{n}"]) for s in warm])
        result["slopes_per_10min"][f"server {n}"] = {"rss_mb": round(rss, 2), "fds": round(fds, 2)}
        result["checks"][f"server {n} RSS slope < 1 MB/10 min"] = rss < 1.0
        result["checks"][f"server {n} fds not growing (< 1/10 min)"] = fds < 1.0
    errors = {k: v for k, v in soak.codes.items() if k.split()[-1] not in BUSY}
    result["checks"]["no errors but busy answers"] = not errors
    minutes_seen = sorted(m for m in soak.invoke_ms if m >= 1)
    window = 5 if minutes >= 11 else 1
    first = [v for m in minutes_seen[:window] for v in soak.invoke_ms[m]]
    last = [v for m in minutes_seen[-window:] for v in soak.invoke_ms[m]]
    p99_first, p99_last = pct(first, 0.99), pct(last, 0.99)
    result["p99_first_last_ms"] = [round(p99_first, 1), round(p99_last, 1)]
    result["checks"][f"p99 last {window} min within 20 % of first {window}"] = (
        p99_last <= 1.2 * p99_first
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--share", type=float, default=0.6)
    args = parser.parse_args()
    shared = Path(os.environ.get("INFERENCE_SHARED_DIR", REPO_ROOT.parent / "shared"))
    images = [p.read_bytes() for p in sorted((shared / "images").glob("face-*.jpg"))[:8]]
    contact = os.environ.get("INFERENCE_CASSANDRA_CONTACT_POINTS", "127.0.0.1").split(",")[0]
    port = int(os.environ.get("INFERENCE_CASSANDRA_PORT", "9042"))
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
        cassandra_keyspace=keyspace,
        cassandra_create_schema=True,
        shared_dir=shared,
        build_dir=OUT / "stack",
    )
    stack = LocalStack(settings, repo_root=REPO_ROOT, base_env=os.environ)
    stack.start()
    try:
        pids = [s.pid for s in stack.servers if s.pid is not None]
        soak = Soak(stack.grpc_target, images, pids)
        rates = asyncio.run(soak.run(args.minutes, args.share))
    finally:
        stack.stop()
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
        "servers_per_minute": [s for s in soak.samples if int(s["t"]) % 60 < 10],
        **cassandra_figures(contact, port, keyspace),
        **verdict(soak, args.minutes),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("PASS" if not failed else f"FAIL: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
