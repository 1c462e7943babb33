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
write of issue 20: the index's cost alone), ``plaincontent`` (the same node as A, a store
that writes the content with a plain write and the fenced outcome without it: the price of the
image in the Paxos proposal; a redesign's measurement, NOT safe as is: an owner taken over or
a row deleted meanwhile would still get the content written), ``nocontent`` (the same node, no
content stored at all: the floor of the two lightweight transactions and the index entry),
``commitlog_direct`` (``commitlog_disk_access_mode: direct``), ``concurrent_writes_8``, ``same``
(a second node with the baseline's settings: the A/A control of the node variants).

``--profile STORE`` (repeatable: ``base``, ``plaincontent``, ``nocontent``, ``noindex``) adds
profiled blocks on one warm baseline node: ``--profile-invokes`` Invokes under a Java Flight
Recorder recording (``jcmd <pid> JFR.start``, ``jdk.ExecutionSample`` every
``--sample-ms``), with the CPU of every thread of the node (``/proc``) and the flushes and
compactions the node logged, by table; ``bench/jfr_profile.py`` turns them into ms per Invoke
by thread group and by component. That node records from its start too (started later, the
recorder kept the JIT compiler busy through the block), so give it a long warm-up. The
recordings stay in ``build/cassandra-cost`` (``profile-<store>.jfr`` and ``.threads.json``).

Usage (under the shared lock; starts two nodes on ports 19342/19370 and 19442/19470 under
``build/cassandra-cost``, leaves nothing running)::

    flock /tmp/heavy.lock .venv/bin/python -m bench.cassandra_cost --variant offheap_objects \\
        --variant serial --rounds 3 --invokes 400

The profile (docs/performance.md, "Round four: where Cassandra's CPU per Invoke goes (JFR)")::

    flock /tmp/heavy.lock .venv/bin/python -m bench.cassandra_cost --profile base \\
        --profile plaincontent --profile nocontent --warmup-invokes 4000 \\
        --profile-invokes 2000 --sample-ms 2

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
import subprocess
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
    "plaincontent": {"store": "plaincontent"},
    "nocontent": {"store": "nocontent"},
    "commitlog_direct": {"yaml": "commitlog_disk_access_mode: direct"},
    "concurrent_writes_8": {"yaml": "concurrent_writes: 8"},
    "same": {},
}
STORES = ("base", "noindex", "plaincontent", "nocontent")

JFC = """<?xml version="1.0" encoding="UTF-8"?>
<configuration version="2.0" label="cassandra_cost" description="CPU samples only">
  <event name="jdk.ExecutionSample">
    <setting name="enabled">true</setting>
    <setting name="period">{period} ms</setting>
  </event>
  <event name="jdk.NativeMethodSample">
    <setting name="enabled">true</setting>
    <setting name="period">20 ms</setting>
  </event>
  <event name="jdk.GarbageCollection">
    <setting name="enabled">true</setting>
    <setting name="threshold">0 ms</setting>
  </event>
</configuration>
"""
"""A Flight Recorder configuration with the CPU samples and little else (less overhead than
the JDK's ``profile.jfc``)."""

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


def make_node(root: Path, port: int, spec: dict[str, Any], jfc: Path | None = None):
    from devstack.cassandra import LocalCassandra, default_root

    class ProfiledCassandra(LocalCassandra):
        """The node with deeper Flight Recorder stacks (128 frames, not 64: Cassandra's write
        path under netty is deep) and, with ``jfc``, a Flight Recorder recording (in memory)
        from its start: Flight Recorder's own Java code is then compiled during the warm-up,
        not during the profiled block (started only then, the recorder kept the JIT compiler
        busy at 0.5 cores through the block). Nothing else differs."""

        def jvm_command(self) -> list[str]:
            command = super().jvm_command()
            text = self.args_file.read_text()
            first = "-XX:FlightRecorderOptions:stackdepth=128\n"
            if jfc is not None:
                first += f"-XX:StartFlightRecording=name=warm,settings={jfc},disk=false\n"
            self.args_file.write_text(first + text)
            return command

    return ProfiledCassandra(
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
    """The store of a block: the product's, or a bench-only variant of it (never in the product:
    ``plaincontent`` is the measurement of a redesign, not a safe store)."""
    from inference_service.stores.cassandra import CassandraInvocationStore

    if variant not in ("noindex", "plaincontent", "nocontent"):
        return CassandraInvocationStore
    for name in ("_index", "_conditional", "_complete", "_execute", "_remaining_ttl"):
        if not hasattr(CassandraInvocationStore, name) and name != "_complete":
            raise SystemExit(f"this store has no {name}: the {variant} variant needs updating")

    class NoIndexStore(CassandraInvocationStore):
        """The store without the list index write (to price it; bench only)."""

        async def _index(self, invocation) -> None:
            return None

    class ContentOutsidePaxosStore(CassandraInvocationStore):
        """The fenced outcome write without the content (``nocontent``), the content by a plain
        write before it (``plaincontent``). Bench only: the plain write is not fenced, so an
        owner that was taken over, or whose row was deleted, still writes its content."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            table = f"{self._config.keyspace}.invocations"
            self._complete_with_content = self._complete
            self._complete_small = self._prepare(
                f"UPDATE {table} USING TTL ?"  # noqa: S608
                " SET state = ?, detections = ?, image_width = ?, image_height = ?,"
                " error = ?, complete_time = ? WHERE id = ? IF claim_id = ?",
                retry=False,
            )
            self._content_write = self._prepare(
                f"UPDATE {table} USING TTL ? SET content = ? WHERE id = ?",  # noqa: S608
                idempotent=True,
            )

        async def _conditional(self, operation, statement, params, invocation_id, judge, **kw):
            if statement is self._complete_with_content:
                if variant == "plaincontent":
                    await self._execute(self._content_write, (params[0], params[1], params[8]))
                statement, params = self._complete_small, (params[0], *params[2:])
            return await super()._conditional(
                operation, statement, params, invocation_id, judge, **kw
            )

    return NoIndexStore if variant == "noindex" else ContentOutsidePaxosStore


async def block(port: int, pid: int, variant: str, images: list[bytes], n: int, c: int, probe=None):
    import grpc
    from inference.v1 import inference_service_pb2 as pb
    from inference.v1 import inference_service_pb2_grpc as pb_grpc

    from bench.jfr_profile import thread_cpu, thread_delta
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
            if probe is not None:
                probe.start()
            (c0, g0), b0, t0 = jvm_cpu(pid), machine_busy(), time.monotonic()
            threads0 = thread_cpu(pid)
            await run(n)
            (c1, g1), b1, t1 = jvm_cpu(pid), machine_busy(), time.monotonic()
            threads = thread_delta(threads0, thread_cpu(pid), c1 - c0)
            if probe is not None:
                probe.stop()
    finally:
        await app.stop(grace=1)
        await store.close()
    wall = t1 - t0
    return {
        "cpu_ms_per_invoke": round((c1 - c0) * 1000 / n, 3),
        "gc_ms_per_invoke": round((g1 - g0) * 1000 / n, 3),
        "invokes_per_s": round(n / wall, 1),
        "machine_busy_cores": round((b1 - b0) / wall, 2),
        # the node's CPU by thread group (bench/jfr_profile.py), ms per Invoke; the JIT
        # compiler's share is warm-up left over, not a cost of the Invokes
        "groups_ms": {
            group: round(seconds * 1000 / n, 3)
            for group, seconds in sorted(threads["groups"].items(), key=lambda kv: -kv[1])
        },
    }


class Probe:
    """A Flight Recorder recording and the node's per-thread CPU around one block."""

    def __init__(self, pid: int, recording: Path, jfc: Path) -> None:
        self.pid, self.recording, self.jfc = pid, recording, jfc
        self.threads: dict[str, Any] = {}

    def _jcmd(self, *command: str) -> None:
        subprocess.run(
            ["jcmd", str(self.pid), *command], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        from bench.jfr_profile import process_cpu, thread_cpu

        self.recording.unlink(missing_ok=True)
        self._jcmd("JFR.start", "name=cassandra_cost", f"settings={self.jfc}")
        self._before, self._total0 = thread_cpu(self.pid), process_cpu(self.pid)
        self.started = time.time()

    def stop(self) -> None:
        from bench.jfr_profile import process_cpu, thread_cpu, thread_delta

        after, total1 = thread_cpu(self.pid), process_cpu(self.pid)
        self.window = (self.started, time.time())
        self._jcmd("JFR.stop", "name=cassandra_cost", f"filename={self.recording}")
        self.threads = thread_delta(self._before, after, total1 - self._total0)


LOGGED = re.compile(
    r"Completed flushing \S*/data/(?P<fks>[^/]+)/(?P<ftable>[^/-]+)-\S* "
    r"\((?P<fsize>[\d.]+)(?P<funit>\w+)\)"
    r"|Compacted \(\S+\) (?P<n>\d+) sstables to \[\S*/data/(?P<cks>[^/]+)/(?P<ctable>[^/-]+)-"
    r".*?(?P<cin>[\d.,]+)(?P<cinu>\w+) to [\d.,]+\w+ .*? in (?P<ms>[\d,]+)ms"
)
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def logged_work(node, mark: int) -> dict[str, dict[str, float]]:
    """Flushes and compactions the node logged after ``mark``, by table: how many, MiB
    written by flushes, MiB read by compactions and their wall ms."""
    with node.system_log.open("rb") as log:
        log.seek(mark)
        text = log.read().decode(errors="replace")
    work: dict[str, dict[str, float]] = {}
    for m in LOGGED.finditer(text):
        if m["ftable"]:
            row = work.setdefault(f"{m['fks']}.{m['ftable']}", {})
            row["flushes"] = row.get("flushes", 0) + 1
            size = float(m["fsize"]) * UNITS.get(m["funit"], 1) / (1 << 20)
            row["flush_mib"] = round(row.get("flush_mib", 0) + size, 2)
        else:
            row = work.setdefault(f"{m['cks']}.{m['ctable']}", {})
            row["compactions"] = row.get("compactions", 0) + 1
            size = float(m["cin"].replace(",", "")) * UNITS.get(m["cinu"], 1) / (1 << 20)
            row["compacted_mib"] = round(row.get("compacted_mib", 0) + size, 2)
            row["compaction_ms"] = row.get("compaction_ms", 0) + int(m["ms"].replace(",", ""))
    return work


def profiled(args: argparse.Namespace, node, store: str, images: list[bytes]) -> None:
    """One profiled block of ``store`` on ``node``: the recording, the threads' CPU, the
    flushes and compactions; the tables of ``bench/jfr_profile.py``."""
    from bench.jfr_profile import profile, report

    jfc = args.root / "cpu.jfc"
    recording = args.root / f"profile-{store}.jfr"
    probe = Probe(node.pid(), recording, jfc)
    mark = node.log_mark()
    result = asyncio.run(
        block(node.native_port, node.pid(), store, images, args.profile_invokes, args.c, probe)
    )
    work = logged_work(node, mark)
    saved = {"store": store, "invokes": args.profile_invokes, "block": result}
    saved |= {"threads": probe.threads, "logged": work, "window": probe.window}
    (args.root / f"profile-{store}.threads.json").write_text(json.dumps(saved, indent=1))
    print(f"PROFILE {store}: {json.dumps(result)}", flush=True)
    print(f"logged flushes and compactions: {json.dumps(work)}", flush=True)
    prof = profile(recording, probe.window)
    print(report(probe.threads, prof, args.profile_invokes), flush=True)


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
                row["cpu_ms_no_jit"] = round(
                    result["cpu_ms_per_invoke"] - result["groups_ms"].get("JIT compiler", 0), 3
                )
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
        "A_cpu_ms_no_jit": med(a, "cpu_ms_no_jit"),
        "B_cpu_ms_no_jit": med(b, "cpu_ms_no_jit"),
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
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=[])
    parser.add_argument(
        "--profile",
        action="append",
        choices=STORES,
        default=[],
        help="a profiled block (JFR and per-thread CPU) of this store on a warm baseline node",
    )
    parser.add_argument("--profile-invokes", type=int, default=1500)
    parser.add_argument("--sample-ms", type=int, default=5, help="JFR's Java sample period")
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
    if not args.variant and not args.profile:
        parser.error("nothing to do: give --variant and/or --profile")
    args.root = args.root.resolve()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    for noisy in ("cassandra", "cassandra.cluster", "cassandra.connection"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    images = [p.read_bytes() for p in sorted(args.images_dir.glob("face-*.jpg"))]
    args.root.mkdir(parents=True, exist_ok=True)
    # Store variants run on the baseline node itself (A and B alternate on one node, the same
    # history): one node for them and the profiles; node variants get a new pair each.
    same_node = [v for v in args.variant if VARIANTS[v].get("store")]
    own_node = [[v] for v in args.variant if not VARIANTS[v].get("store")]
    plans = ([same_node] if same_node or args.profile else []) + own_node
    summaries = []
    with open(args.root / "results.jsonl", "a") as out:
        for index, variants in enumerate(plans):
            # a new baseline node for each comparison: both sides start empty and cold and get
            # the same warm-up (a node's CPU per Invoke keeps falling for ~10,000 Invokes)
            base_root = args.root / "base"
            shutil.rmtree(base_root / "data", ignore_errors=True)
            shutil.rmtree(base_root / "commitlog", ignore_errors=True)
            jfc = None
            if index == 0 and args.profile:
                jfc = args.root / "cpu.jfc"
                jfc.write_text(JFC.format(period=args.sample_ms))
            base = make_node(base_root, args.port_base, {}, jfc)
            base.start(timeout=180)
            try:
                warm(base, "base", images, args)
                if index == 0:
                    for store in args.profile:
                        profiled(args, base, store, images)
                for variant in variants:
                    summaries.append(compare(args, variant, base, images, out))
            finally:
                base.stop()
    for s in summaries:
        print(
            f"{s['variant']:>16}: Cassandra CPU ms/Invoke A {s['A_cpu_ms']} B {s['B_cpu_ms']} "
            f"(B/A {s['B_over_A']}; without the JIT A {s['A_cpu_ms_no_jit']} "
            f"B {s['B_cpu_ms_no_jit']}); GC A {s['A_gc_ms']} B {s['B_gc_ms']}; "
            f"Invokes/s A {s['A_rate']} B {s['B_rate']}; machine {s['machine_busy']} cores"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
