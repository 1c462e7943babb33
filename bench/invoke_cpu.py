"""The server's CPU per Invoke: a sub-bench that measures CPU per call, not rates.

On a shared, loaded machine a rate says more about the neighbours than about the server; the
CPU time the server process spends per call (``/proc/<pid>/stat`` utime + stime, all its
threads: the event loop, the worker pool running decode and model, the Cassandra driver's I/O
thread, grpc-core's threads) is much steadier. This bench:

1. starts one server per *variant* in a subprocess (``python -m inference_service serve``),
   each with its own port and, with the Cassandra store, its own keyspace (created by the
   server, dropped at the end); a variant is a source tree (its ``server/src`` is put first on
   ``PYTHONPATH``: e.g. a ``git worktree`` of the commit before a change) and/or extra
   ``INFERENCE_*`` variables;
2. warms every server up (interpreters, caches, JIT-free but lazy paths), then
3. runs *rounds* of measurements, interleaved (A B A B ...: every variant once per round, in
   that order): each drives ``--calls`` Invokes with new ids, the shared images round-robin,
   ``--concurrency`` calls in flight, over gRPC directly (no Envoy), and reads the server's CPU
   time before and after;
4. prints, per variant, the CPU ms per Invoke of each round and their median (and the median
   ratio to the first variant), and the medians by thread group (``loop``: the main thread,
   where the event loop runs; ``grpc``: grpc-core's threads; ``workers``: the worker pool,
   decode and model; ``other``: the Cassandra driver's threads and the rest), as text and as
   JSON (``--json``). ``workers`` is the pipeline (noisy on a loaded machine: caches,
   frequency); what the server adds around it shows in ``loop``, ``grpc`` and ``other``.

The images are the shared ones (``INFERENCE_SHARED_DIR``/images, or ``--images-dir``). The
Cassandra store uses ``INFERENCE_CASSANDRA_CONTACT_POINTS`` (e.g. the shared dev node,
``127.0.0.1``).

Examples::

    # the memory store and Cassandra, this tree alone
    .venv/bin/python -m bench.invoke_cpu --store memory --store cassandra
    # before/after: a worktree of the base commit against this tree, interleaved
    git worktree add /tmp/base <commit>
    .venv/bin/python -m bench.invoke_cpu --variant before=/tmp/base --variant after=. \\
        --store cassandra --rounds 5
    # the same tree with other settings
    .venv/bin/python -m bench.invoke_cpu --variant a=. --variant "b=.:INFERENCE_WORKERS=3"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from bench.payloads import load_mix
from bench.procstats import cpu_seconds

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GRPC_THREADS = ("grpc_", "event_engine", "lifeguard", "default-executo", "resolver-execut")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A server to measure: a source tree and extra environment."""

    name: str
    tree: Path
    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``NAME=TREE[:VAR=VALUE[:VAR=VALUE...]]``."""
        name, _, rest = text.partition("=")
        tree, *pairs = rest.split(":") if rest else ["."]
        env = dict(pair.split("=", 1) for pair in pairs)
        return cls(name=name, tree=Path(tree or ".").resolve(), env=env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One server subprocess of a variant and store."""

    def __init__(self, variant: Variant, store: str, run_dir: Path) -> None:
        self.variant = variant
        self.store = store
        self.port = free_port()
        self.workers = int({**os.environ, **variant.env}.get("INFERENCE_WORKERS", "2"))
        self.keyspace = f"bench_cpu_{os.getpid()}_{variant.name}".lower().replace("-", "_")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(variant.tree / "server" / "src"), os.environ.get("PYTHONPATH", "")]
            ),
            "INFERENCE_HOST": "127.0.0.1",
            "INFERENCE_PORT": str(self.port),
            "INFERENCE_STORE": store,
            "INFERENCE_METRICS_PORT": "0",
            "INFERENCE_CASSANDRA_KEYSPACE": self.keyspace,
            "INFERENCE_CASSANDRA_CREATE_SCHEMA": "true",
            **variant.env,
        }
        self.log = run_dir / f"{variant.name}-{store}.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference_service", "serve"],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.variant.name} exited; see {self.log}")
            try:
                with grpc.insecure_channel(self.address) as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1.0
                    )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server {self.variant.name} not serving; see {self.log}")

    def cpu_s(self) -> float:
        value = cpu_seconds(self.process.pid)
        if value is None:
            raise RuntimeError(f"server {self.variant.name} is gone; see {self.log}")
        return value

    def thread_cpu_s(self) -> dict[str, float]:
        """CPU seconds by thread group: ``loop`` (the main thread: the event loop),
        ``grpc`` (grpc-core's own threads: event engine, timers), ``workers`` (the
        ``INFERENCE_WORKERS`` busiest other threads, counted since the server started: the
        worker pool, decode and model), ``other`` (the rest: the Cassandra driver's I/O and
        event threads, metrics)."""
        groups = {"loop": 0.0, "grpc": 0.0, "workers": 0.0, "other": 0.0}
        python_threads: list[float] = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # a thread that ended meanwhile
            seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            if task.name == str(self.process.pid):
                groups["loop"] += seconds
            elif comm.startswith(GRPC_THREADS):
                groups["grpc"] += seconds
            else:
                python_threads.append(seconds)
        python_threads.sort(reverse=True)
        groups["workers"] = sum(python_threads[: self.workers])
        groups["other"] = sum(python_threads[self.workers :])
        return groups

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


async def drive(address: str, contents: Sequence[bytes], calls: int, concurrency: int) -> float:
    """``calls`` Invokes with new ids, ``concurrency`` in flight; the wall seconds taken."""
    requests = iter(range(calls))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        async def worker() -> None:
            for index in requests:
                request = pb.InvokeRequest(
                    input=pb.ModelInput(
                        id=f"cpu-{uuid.uuid4().hex}", content=contents[index % len(contents)]
                    )
                )
                response = await stub.Invoke(request, timeout=60)
                if response.invocation.state != pb.Invocation.STATE_SUCCEEDED:
                    raise RuntimeError(f"Invoke did not succeed: {response.invocation}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def measure(server: Server, contents: Sequence[bytes], calls: int, concurrency: int) -> dict:
    """One measured block: server CPU ms per Invoke, and the wall time (informative only)."""
    before, threads_before = server.cpu_s(), server.thread_cpu_s()
    wall_s = asyncio.run(drive(server.address, contents, calls, concurrency))
    cpu_s = server.cpu_s() - before
    threads = {
        name: round(1000 * (seconds - threads_before.get(name, 0.0)) / calls, 3)
        for name, seconds in server.thread_cpu_s().items()
    }
    return {"cpu_ms_per_invoke": 1000 * cpu_s / calls, "threads_ms": threads, "wall_s": wall_s}


def drop_keyspaces(keyspaces: Sequence[str]) -> None:
    from cassandra.cluster import Cluster

    points = os.environ.get("INFERENCE_CASSANDRA_CONTACT_POINTS", "127.0.0.1").split(",")
    cluster = Cluster(points, port=int(os.environ.get("INFERENCE_CASSANDRA_PORT", "9042")))
    try:
        session = cluster.connect()
        for keyspace in keyspaces:
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def servers(variants: Sequence[Variant], store: str, run_dir: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for variant in variants:  # one at a time: schema creation, model loading
            server = Server(variant, store, run_dir)
            started.append(server)
            server.wait_serving()
        yield started
    finally:
        for server in started:
            server.stop()
        if store == "cassandra" and started:
            drop_keyspaces([server.keyspace for server in started])


def run(args: argparse.Namespace) -> dict:
    variants = [Variant.parse(text) for text in args.variant] or [Variant.parse("this=.")]
    shared = Path(os.environ.get("INFERENCE_SHARED_DIR", REPO.parent / "shared"))
    contents = [image.content for image in load_mix(args.images_dir or shared / "images")]
    run_dir = Path(tempfile.mkdtemp(prefix="invoke-cpu-"))
    results: dict = {"calls": args.calls, "concurrency": args.concurrency, "stores": {}}
    for store in args.store or ["memory"]:
        with servers(variants, store, run_dir) as started:
            for server in started:
                measure(server, contents, args.warmup, args.concurrency)
            rounds: dict[str, list[float]] = {s.variant.name: [] for s in started}
            walls: dict[str, list[float]] = {s.variant.name: [] for s in started}
            threads: dict[str, list[dict[str, float]]] = {s.variant.name: [] for s in started}
            for number in range(args.rounds):
                order = started if number % 2 == 0 or not args.alternate else started[::-1]
                for server in order:
                    block = measure(server, contents, args.calls, args.concurrency)
                    rounds[server.variant.name].append(round(block["cpu_ms_per_invoke"], 3))
                    walls[server.variant.name].append(round(block["wall_s"], 2))
                    threads[server.variant.name].append(block["threads_ms"])
                    print(
                        f"{store} round {number + 1} {server.variant.name}: "
                        f"{block['cpu_ms_per_invoke']:.2f} ms CPU/Invoke "
                        f"{block['threads_ms']} ({block['wall_s']:.1f} s wall)",
                        flush=True,
                    )
        first = statistics.median(rounds[variants[0].name])
        results["stores"][store] = {
            name: {
                "cpu_ms_per_invoke": values,
                "median": round(statistics.median(values), 3),
                "ratio_to_first": round(statistics.median(values) / first, 3),
                "wall_s": walls[name],
                "threads_ms_median": {
                    group: round(statistics.median(t[group] for t in threads[name]), 3)
                    for group in threads[name][0]
                },
            }
            for name, values in rounds.items()
        }
    results["logs"] = str(run_dir)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.invoke_cpu", description=__doc__)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=TREE[:INFERENCE_X=V...] (repeat; default: this tree alone); the first is the "
        "baseline of the ratios",
    )
    parser.add_argument(
        "--store", action="append", choices=("memory", "cassandra"), help="repeatable"
    )
    parser.add_argument("--calls", type=int, default=300, help="Invokes per measured block")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="blocks per variant, interleaved")
    parser.add_argument("--warmup", type=int, default=60, help="Invokes per server first")
    parser.add_argument(
        "--alternate", action="store_true", help="reverse the order every other round (ABBA)"
    )
    parser.add_argument("--images-dir", type=Path)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    results = run(args)
    for store, by_variant in results["stores"].items():
        for name, values in by_variant.items():
            print(
                f"{store:9s} {name:12s} median {values['median']:.2f} ms CPU/Invoke "
                f"(x{values['ratio_to_first']:.3f}) rounds {values['cpu_ms_per_invoke']} "
                f"threads {values['threads_ms_median']}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
