"""Cassandra's CPU per Invoke under a node setting (or a store variant), A/B against the
current settings, in interleaved blocks (a short sub-bench, not part of ``make bench``).

The machine this runs on is shared and noisy, so each comparison keeps two nodes running at
once, the baseline (A: today's ``LocalCassandra`` settings, full JIT as the bench runs it) and
the variant (B), and alternates blocks of Invoke load between them (A B B A A B ...): a drift of
the machine's load hits both alike. A block: an in-process server (``Application``, the
Cassandra store, this checkout's code) connected to the node of the block, ``--invokes``
Invokes of fresh ids at ``--concurrency`` (the images of the shared mix, round-robin) after a
warm-up; around the measured Invokes, the CPU time of the node's JVM (``/proc/<pid>/stat``, all
threads) and of its garbage-collector threads alone (``/proc/<pid>/task/*``, by thread name),
the machine's busy cores (``/proc/stat``) and the rate. Before its first block each node gets
``--warmup-invokes`` unrecorded Invokes (a new node's CPU per Invoke falls by half over its
first few thousand, and keeps falling slowly for ~10,000, as C2 compiles the write path), and
every comparison starts a new baseline node beside its variant, so both sides have the same
history (a baseline kept warm across comparisons made every new variant look 20-60 % worse).
The result: per variant the median CPU ms per Invoke of A's and B's blocks and the median of
B/A per adjacent pair.

Variants (``--variant``, repeatable; the baseline is implicit): ``heap_buffers`` (upstream's
default, the baseline's before round four), ``offheap_objects`` (the baseline's since),
``offheap_buffers`` (``memtable_allocation_type``), ``serial``, ``parallel``, ``shenandoah``,
``zgc`` (the GC), ``heap2g``, ``heap512m`` (``-Xmx`` with G1), ``commitlog_lz4``
(``commitlog_compression``), ``flush_big`` (``memtable_heap_space``/``memtable_offheap_space``
512 MiB, fewer flushes), ``noindex`` (the same node as A, a store that skips the list index
write of issue 20: the index's cost alone).

Usage (under the shared lock; starts two nodes on ports 19342/19370 and 19442/19470 under
``build/cassandra-cost``, leaves nothing running)::

    flock /tmp/heavy.lock .venv/bin/python -m bench.cassandra_cost --variant offheap_objects \\
        --variant serial --rounds 3 --invokes 400

Results go to stdout and ``build/cassandra-cost/results.jsonl`` (one line per block).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
GC_THREAD = re.compile(r"GC Thread|G1 |Shenandoah|^Z[A-Z]|ZWorker|VM Thread|Conc#|Refine")
"""Names (``/proc/<pid>/task/<tid>/comm``) of the JVM's collector threads."""

VARIANTS: dict[str, dict[str, Any]] = {
    "heap_buffers": {"yaml": "memtable_allocation_type: heap_buffers"},
    "offheap_objects": {"yaml": "memtable_allocation_type: offheap_objects"},
    "offheap_buffers": {"yaml": "memtable_allocation_type: offheap_buffers"},
    "serial": {"gc": "serial"},
    "parallel": {"gc": "parallel"},
    "shenandoah": {"gc": "shenandoah"},
    "zgc": {"gc": "zgc"},
    "heap2g": {"max_heap": "2G"},
    "heap512m": {"max_heap": "512M"},
    "commitlog_lz4": {"yaml": "commitlog_compression:\n  - class_name: LZ4Compressor"},
    "flush_big": {"yaml": "memtable_heap_space: 512MiB\nmemtable_offheap_space: 512MiB"},
    "offheap_serial": {"gc": "serial", "yaml": "memtable_allocation_type: offheap_objects"},
    "noindex": {"store": "noindex"},
}

logger = logging.getLogger("cassandra_cost")


def jvm_cpu(pid: int) -> tuple[float, float]:
    """(all threads, collector threads) CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / TICK
    gc = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            if GC_THREAD.search(name):
                f = (task / "stat").read_text().rsplit(")", 1)[1].split()
                gc += (int(f[11]) + int(f[12])) / TICK
        except OSError:
            continue
    return total, gc


def machine_busy() -> float:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / TICK


def make_node(root: Path, port: int, spec: dict[str, Any]):
    from devstack.cassandra import LocalCassandra, default_root

    return LocalCassandra(
        root,
        native_port=port,
        storage_port=port + 28,
        dist_dir=default_root() / "dist",  # the shared jars (read only: no class archive)
        class_data_sharing=False,
        c1_only=False,
        max_heap=spec.get("max_heap", "1G"),
        gc=spec.get("gc", "g1"),
        extra_yaml=spec.get("yaml", ""),
    )


def store_class(variant: str):
    from inference_service.stores.cassandra import CassandraInvocationStore

    if variant != "noindex":
        return CassandraInvocationStore

    class NoIndexStore(CassandraInvocationStore):
        """The store without the list index write (to price it; bench only)."""

        async def _index(self, invocation) -> None:
            return None

    if not hasattr(CassandraInvocationStore, "_index"):
        raise SystemExit("this store has no _index method: the noindex variant needs updating")
    return NoIndexStore


async def block(port: int, pid: int, variant: str, images: list[bytes], n: int, c: int):
    import grpc
    from inference.v1 import inference_service_pb2 as pb
    from inference.v1 import inference_service_pb2_grpc as pb_grpc

    from inference_service.app import Application
    from inference_service.settings import Settings
    from inference_service.stores.cassandra import CassandraConfig

    config = CassandraConfig(port=port, keyspace="cassandra_cost", create_schema=True)
    store = await store_class(variant).connect(config)
    shared = Path(os.environ.get("INFERENCE_SHARED_DIR", "/work/shared"))
    app = Application(Settings(port=0, shared_dir=shared, workers=2), store=store)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", options=[("grpc.max_send_message_length", 1 << 25)]
        ) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)

            async def run(k: int) -> None:
                sem = asyncio.Semaphore(c)

                async def one(i: int) -> None:
                    async with sem:
                        request = pb.InvokeRequest(
                            input=pb.ModelInput(
                                id=f"cc-{uuid.uuid4()}", content=images[i % len(images)]
                            )
                        )
                        response = await stub.Invoke(request, timeout=60)
                        assert response.invocation.state == pb.Invocation.STATE_SUCCEEDED

                await asyncio.gather(*(one(i) for i in range(k)))

            await run(2 * c)
            (c0, g0), b0, t0 = jvm_cpu(pid), machine_busy(), time.monotonic()
            await run(n)
            (c1, g1), b1, t1 = jvm_cpu(pid), machine_busy(), time.monotonic()
    finally:
        await app.stop(grace=1)
        await store.close()
    wall = t1 - t0
    return {
        "cpu_ms_per_invoke": round((c1 - c0) * 1000 / n, 3),
        "gc_ms_per_invoke": round((g1 - g0) * 1000 / n, 3),
        "invokes_per_s": round(n / wall, 1),
        "machine_busy_cores": round((b1 - b0) / wall, 2),
    }


def truncate(port: int) -> None:
    from cassandra.cluster import Cluster

    cluster = Cluster(["127.0.0.1"], port=port)
    try:
        session = cluster.connect()
        rows = session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'cassandra_cost'"
        )
        for row in rows:
            session.execute(f"TRUNCATE cassandra_cost.{row.table_name}", timeout=120)
    finally:
        cluster.shutdown()


def warm(node, name: str, images: list[bytes], args: argparse.Namespace) -> None:
    """Unrecorded Invokes until the node's JIT has settled (``--warmup-invokes``)."""
    started = time.monotonic()
    result = asyncio.run(
        block(node.native_port, node.pid(), name, images, args.warmup_invokes, args.c)
    )
    print(f"warmed {name} in {time.monotonic() - started:.0f}s: {result}", flush=True)


def compare(args: argparse.Namespace, variant: str, base, images, out) -> dict[str, Any]:
    spec = VARIANTS[variant]
    other = None
    if spec.get("store") is None:
        root = args.root / variant
        shutil.rmtree(root / "data", ignore_errors=True)
        shutil.rmtree(root / "commitlog", ignore_errors=True)
        other = make_node(root, args.port_base + 100, spec)
        other.start(timeout=180)
    nodes = {"A": (base, "base"), "B": (other or base, variant)}
    try:
        if other is not None:  # the JIT (C2) of a new node: thousands of Invokes
            warm(other, variant, images, args)
        for node, _ in nodes.values():
            truncate(node.native_port)
        rows: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = ("A", "B") if r % 2 == 0 else ("B", "A")
            for label in order:
                node, name = nodes[label]
                result = asyncio.run(
                    block(node.native_port, node.pid(), name, images, args.invokes, args.c)
                )
                row = {"variant": variant, "side": label, "round": r, **result}
                rows.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(json.dumps(row), flush=True)
    finally:
        if other is not None:
            other.stop()
    a = [row for row in rows if row["side"] == "A"]
    b = [row for row in rows if row["side"] == "B"]

    def med(side: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(row[key] for row in side), 2)

    summary = {
        "variant": variant,
        "A_cpu_ms": med(a, "cpu_ms_per_invoke"),
        "B_cpu_ms": med(b, "cpu_ms_per_invoke"),
        "B_over_A": round(
            statistics.median(
                y["cpu_ms_per_invoke"] / x["cpu_ms_per_invoke"] for x, y in zip(a, b, strict=True)
            ),
            3,
        ),
        "A_gc_ms": med(a, "gc_ms_per_invoke"),
        "B_gc_ms": med(b, "gc_ms_per_invoke"),
        "A_rate": med(a, "invokes_per_s"),
        "B_rate": med(b, "invokes_per_s"),
        "machine_busy": med(a + b, "machine_busy_cores"),
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cassandra_cost", description=__doc__)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs per variant")
    parser.add_argument("--invokes", type=int, default=400, help="Invokes per block")
    parser.add_argument("-c", type=int, default=8, help="Invokes in flight")
    parser.add_argument(
        "--warmup-invokes",
        type=int,
        default=3000,
        help="unrecorded Invokes on each new node first (C2 JIT: the CPU per Invoke of a new "
        "node falls by half over its first ~2,500)",
    )
    parser.add_argument("--port-base", type=int, default=19342)
    parser.add_argument("--root", type=Path, default=Path("build/cassandra-cost"))
    parser.add_argument("--images-dir", type=Path, default=Path("/work/shared/images"))
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    for noisy in ("cassandra", "cassandra.cluster", "cassandra.connection"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    images = [p.read_bytes() for p in sorted(args.images_dir.glob("face-*.jpg"))]
    args.root.mkdir(parents=True, exist_ok=True)
    summaries = []
    with open(args.root / "results.jsonl", "a") as out:
        for variant in args.variant:
            # a new baseline node for each comparison: both sides start empty and cold and get
            # the same warm-up (a node's CPU per Invoke keeps falling for ~10,000 Invokes)
            base_root = args.root / "base"
            shutil.rmtree(base_root / "data", ignore_errors=True)
            shutil.rmtree(base_root / "commitlog", ignore_errors=True)
            base = make_node(base_root, args.port_base, {})
            base.start(timeout=180)
            try:
                warm(base, "base", images, args)
                summaries.append(compare(args, variant, base, images, out))
            finally:
                base.stop()
    for s in summaries:
        print(
            f"{s['variant']:>16}: Cassandra CPU ms/Invoke A {s['A_cpu_ms']} B {s['B_cpu_ms']} "
            f"(B/A {s['B_over_A']}); GC A {s['A_gc_ms']} B {s['B_gc_ms']}; "
            f"Invokes/s A {s['A_rate']} B {s['B_rate']}; machine {s['machine_busy']} cores"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
