"""Where a lone Invoke's time goes, and what makes GetInvocation's open-loop tail (issue 24).

A short targeted measurement, not part of ``make bench``; docs/performance.md, "Round four:
where a lone Invoke's time goes, and the open-loop tail", has what it found. Two modes, both
with an in-process server (``Application``, this checkout's code, default settings, the
Cassandra store on a node of your choice in a keyspace of its own, access log at INFO to
``build/invoke-latency/server.log``) and, unless ``--no-envoy``, an Envoy in front of it (the
repository's config, its own ports 18580-18582 and ``build/invoke-latency/envoy``):

``invoke``: c = 1 Invokes of fresh ids (the shared image mix round-robin), alternating one
direct gRPC call and one through Envoy (A B A B), from a synchronous gRPC client in a thread of
the same process (it waits in grpc-core, without the GIL). Each call's timeline is stamped with
``time.perf_counter`` by wrappers the tool puts around the service (its ``invoke``, decode +
hash, the model run) and the store (the claim's and the outcome's lightweight transactions,
the list index write) and around the client call; the tool prints, per path, the median (and
p90) of every stage and of the call. Stages: ``in`` (client send to ``service.invoke``:
serialisation, HTTP/2, Envoy, grpc-core, interceptors, servicer), ``admit`` (to the decode's
start in a worker), ``decode`` (decode + sha256), ``to_claim`` (the decode's end to the claim's
start: back on the loop, the model run started), ``claim`` (the LWT, ``INSERT ... IF NOT
EXISTS``), ``index`` (the list index entry), ``model_wait`` (the model run's end after the
index write's, when later: the part of the model on the critical path), ``to_complete``,
``complete`` (the fenced outcome LWT with the content), ``out`` (``service.invoke`` returning to
the client's answer: converters, serialisation, grpc, Envoy). ``model`` is the model run's own
time (it overlaps claim and index: speculative run), ``pipeline`` decode + model as the bench's
``single_image_inprocess_ms`` counts it, ``overhead`` the call less the pipeline.

``get``: open-loop GetInvocation (BASIC) at ``--rate`` with ``bench-ghz -rate`` (the bench's
load generator; gRPC direct, and REST through Envoy unless ``--no-envoy``) of ``--seed``
invocations stored first, in rounds of ``--duration`` seconds per variant, interleaved (A B A
B): ``base`` (as the server runs today) and ``freeze`` (``gc.freeze()`` after start-up, the
server's own objects and the model's moved out of the collector's reach; ``gc.unfreeze()``
between rounds gives the base back in the same process). During each round the server
records: every collection of Python's cyclic GC (``gc.callbacks``: generation, duration), the
event loop's lateness (a task asking to wake every 5 ms; how late it wakes is the longest a
callback held the loop), the store's reads (``store.get`` as the service awaits it: driver,
Cassandra, the hop back to the loop) and, from bench-ghz, p50/p99/p99.9 and how far it fell
behind its own schedule (``max_send_lag_ms``).

Usage (under the shared lock; the dev node at 127.0.0.1:9042)::

    flock /tmp/heavy.lock .venv/bin/python -m bench.invoke_latency invoke --calls 200
    flock /tmp/heavy.lock .venv/bin/python -m bench.invoke_latency get --rounds 2 --duration 10

``invoke --compare-index`` adds a third path, direct calls with the list index entry written
beside the claim instead of after it (a bench-only variant of the store: what taking the index
write off the critical path would save).

Options: ``--contact-points``, ``--keyspace`` (default ``bench_invoke_latency``, created when
missing), ``--no-envoy``, ``--json FILE`` (every sample). Leaves nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from bench import payloads

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "invoke-latency"
ENVOY_PORTS = (18580, 18581, 18582)  # listener, internal, admin
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 1 << 25),
    ("grpc.max_receive_message_length", 1 << 25),
]

logger = logging.getLogger("invoke_latency")


# --- the timeline of one call -----------------------------------------------------------


class Stamps:
    """``time.perf_counter`` stamps of the call in flight (c = 1: one call at a time)."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.lock = threading.Lock()

    def mark(self, name: str) -> None:
        t = time.perf_counter()
        with self.lock:
            self.now.setdefault(name, t)

    def take(self) -> dict[str, float]:
        with self.lock:
            taken, self.now = self.now, {}
        return taken


def instrument_invoke(app: Any, store: Any, stamps: Stamps) -> dict[str, bool]:
    """Wrap the service's and the store's steps of an Invoke with stamps (bench only).

    Returns a switch: with ``switch["index_with_claim"]`` set, the list index entry is written
    at once beside the claim instead of after it (the variant ``--compare-index`` prices;
    bench only: a lost claim would leave its entry behind)."""
    service = app._service
    executor = service._executor
    decode_and_hash = service._decode_and_hash

    def timed_decode(content: bytes) -> Any:
        stamps.mark("decode0")
        try:
            return decode_and_hash(content)
        finally:
            stamps.mark("decode1")

    def start_model(detector: Any, image: Any) -> Any:
        def run(image: Any) -> Any:
            stamps.mark("model0")
            try:
                return detector.detect(image)
            finally:
                stamps.mark("model1")

        return asyncio.get_running_loop().run_in_executor(executor, run, image)

    invoke = service.invoke

    async def timed_invoke(*args: Any, **kwargs: Any) -> Any:
        stamps.mark("invoke0")
        try:
            return await invoke(*args, **kwargs)
        finally:
            stamps.mark("invoke1")

    service._decode_and_hash = timed_decode
    service._start_model = start_model
    service.invoke = timed_invoke

    conditional = store._conditional
    index = store._index

    async def timed_conditional(operation: str, *args: Any, **kwargs: Any) -> Any:
        stamps.mark(f"{operation}0")
        try:
            return await conditional(operation, *args, **kwargs)
        finally:
            stamps.mark(f"{operation}1")

    async def timed_index(invocation: Any) -> None:
        stamps.mark("index0")
        try:
            await index(invocation)
        finally:
            stamps.mark("index1")

    store._conditional = timed_conditional
    store._index = timed_index

    switch = {"index_with_claim": False}
    claim = store.claim

    async def skip_index(invocation: Any) -> None:
        return None

    async def claim_beside_index(invocation: Any) -> Any:
        if not switch["index_with_claim"]:
            return await claim(invocation)
        entry = asyncio.ensure_future(timed_index(invocation))
        store._index = skip_index
        try:
            existing = await claim(invocation)
        finally:
            store._index = timed_index
        await entry
        return existing

    store.claim = claim_beside_index
    return switch


def stages(s: dict[str, float]) -> dict[str, float]:
    """The stages of one call's stamps, in ms."""

    def ms(a: str, b: str) -> float:
        return (s[b] - s[a]) * 1000

    model_end = s["model1"]
    wait = max(0.0, (model_end - s["index1"]) * 1000)
    return {
        "in": ms("send", "invoke0"),
        "admit": ms("invoke0", "decode0"),
        "decode": ms("decode0", "decode1"),
        "to_claim": ms("decode1", "claim0"),
        "claim": ms("claim0", "claim1"),
        "index": ms("index0", "index1"),
        "model_wait": wait,
        "to_complete": ms("index1", "complete0") - wait,
        "complete": ms("complete0", "complete1"),
        "after_complete": ms("complete1", "invoke1"),
        "out": ms("invoke1", "answer"),
        "total": ms("send", "answer"),
        "model": ms("model0", "model1"),
        "model_start_after_claim_start": ms("claim0", "model0"),
        "pipeline": ms("decode0", "decode1") + ms("model0", "model1"),
        "overhead": ms("send", "answer") - ms("decode0", "decode1") - ms("model0", "model1"),
    }


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


# --- the stack ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server(args: argparse.Namespace, *, envoy: bool) -> Any:
    """The in-process server (and its Envoy); yields (app, cassandra store, envoy or None)."""
    from inference_service.app import Application
    from inference_service.settings import Settings
    from inference_service.stores.cache import CachingInvocationStore
    from inference_service.stores.cassandra import CassandraInvocationStore

    WORK.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=WORK / "server.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    settings = Settings(
        port=0,
        shared_dir=Path(args.shared),
        cassandra_contact_points=args.contact_points,
        cassandra_keyspace=args.keyspace,
        cassandra_create_schema=True,
    )
    cassandra = await CassandraInvocationStore.from_settings(settings)
    store = CachingInvocationStore(
        cassandra, max_bytes=settings.cache_max_bytes, ttl_s=settings.cassandra_default_ttl_s
    )
    app = Application(settings, store=store)
    await app.start()
    proxy = None
    try:
        if envoy:
            from devstack.envoy import LocalEnvoy

            listen, internal, admin = ENVOY_PORTS
            proxy = LocalEnvoy.for_repo(
                REPO,
                build_dir=WORK / "envoy",
                listen_host="127.0.0.1",
                listen_port=listen,
                internal_port=internal,
                admin_port=admin,
                upstreams=[("127.0.0.1", app.port)],
                log_level="warning",
            )
            await asyncio.to_thread(proxy.start)
        yield app, cassandra, proxy
    finally:
        if proxy is not None:
            await asyncio.to_thread(proxy.stop)
        await app.stop(grace=1)
        await cassandra.close()


def mix(args: argparse.Namespace) -> list[payloads.MixImage]:
    return payloads.load_mix(Path(args.shared) / "images")


# --- invoke -------------------------------------------------------------------------------


async def run_invoke(args: argparse.Namespace) -> dict[str, Any]:
    images = mix(args)
    stamps = Stamps()
    results: dict[str, list[dict[str, float]]] = {}
    async with server(args, envoy=not args.no_envoy) as (app, cassandra, proxy):
        switch = instrument_invoke(app, cassandra, stamps)
        targets = {"direct": f"127.0.0.1:{app.port}"}
        if proxy is not None:
            targets["envoy"] = proxy.grpc_target
        if args.compare_index:
            targets["direct_index_with_claim"] = targets["direct"]
        channels = {k: grpc.insecure_channel(t, options=GRPC_OPTIONS) for k, t in targets.items()}
        stubs = {k: pb_grpc.InferenceServiceStub(c) for k, c in channels.items()}
        tag = uuid.uuid4().hex[:8]

        def call(path: str, n: int) -> dict[str, float]:
            image = images[n % len(images)]
            request = pb.InvokeRequest(
                input=pb.ModelInput(id=f"lat-{tag}-{n}", content=image.content)
            )
            switch["index_with_claim"] = path.endswith("index_with_claim")
            stamps.take()
            stamps.mark("send")
            answer = stubs[path].Invoke(request, timeout=30)
            stamps.mark("answer")
            assert answer.invocation.state == pb.Invocation.STATE_SUCCEEDED, answer
            return stamps.take()

        try:
            for n in range(args.warmup):
                for path in stubs:
                    await asyncio.to_thread(call, path, n)
            n = args.warmup
            for _ in range(args.calls):
                for path in stubs:
                    n += 1
                    s = await asyncio.to_thread(call, path, n)
                    results.setdefault(path, []).append(stages(s))
        finally:
            for channel in channels.values():
                channel.close()
    report: dict[str, Any] = {}
    for path, samples in results.items():
        keys = samples[0].keys()
        report[path] = {
            k: {
                "p50": round(statistics.median(x[k] for x in samples), 3),
                "p90": round(pct([x[k] for x in samples], 0.9), 3),
            }
            for k in keys
        }
    print_invoke(report)
    return {"mode": "invoke", "summary": report, "samples": results}


def print_invoke(report: dict[str, Any]) -> None:
    paths = list(report)
    print("stage (ms)".ljust(32) + "".join(f"{p + ' p50':>12}{p + ' p90':>12}" for p in paths))
    for key in report[paths[0]]:
        row = key.ljust(32)
        for p in paths:
            row += f"{report[p][key]['p50']:>12.2f}{report[p][key]['p90']:>12.2f}"
        print(row)


# --- get: the open-loop tail ----------------------------------------------------------------


class Recorder:
    """GC collections, the event loop's lateness and the store's reads during a round."""

    TICK_S = 0.005

    def __init__(self) -> None:
        self.gc: list[tuple[int, float]] = []
        self.lateness: list[float] = []
        self.reads: list[float] = []
        self.driver: list[float] = []
        self.hop: list[float] = []
        self._gc_start = 0.0
        self._on = False

    def gc_callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._on:
            self.gc.append((info["generation"], (time.perf_counter() - self._gc_start) * 1000))

    async def watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.TICK_S
            await asyncio.sleep(self.TICK_S)
            if self._on:
                self.lateness.append((loop.time() - due) * 1000)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.gc, self.lateness, self.reads, self.driver, self.hop = [], [], [], [], []
        self._on = True
        try:
            yield
        finally:
            self._on = False

    def summary(self) -> dict[str, Any]:
        by_gen: dict[str, Any] = {}
        for gen in (0, 1, 2):
            times = [ms for g, ms in self.gc if g == gen]
            if times:
                by_gen[f"gen{gen}"] = {
                    "count": len(times),
                    "p50_ms": round(statistics.median(times), 3),
                    "max_ms": round(max(times), 3),
                    "total_ms": round(sum(times), 1),
                }
        late = sorted(self.lateness) or [0.0]

        def spread(values: list[float]) -> dict[str, float]:
            ordered = sorted(values) or [0.0]
            return {
                "n": len(values),
                "p50": round(pct(ordered, 0.5), 3),
                "p99": round(pct(ordered, 0.99), 3),
                "p999": round(pct(ordered, 0.999), 3),
                "max": round(ordered[-1], 3),
            }

        return {
            "gc": by_gen,
            "loop_late_ms": {
                "p50": round(pct(late, 0.5), 3),
                "p99": round(pct(late, 0.99), 3),
                "max": round(late[-1], 3),
                "over_5ms": sum(1 for x in late if x > 5),
            },
            "store_get_ms": spread(self.reads),
            "driver_ms": spread(self.driver),
            "hop_ms": spread(self.hop),
        }


def instrument_get(app: Any, recorder: Recorder) -> None:
    service = app._service
    store = service._store
    get = store.get

    async def timed_get(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return await get(*args, **kwargs)
        finally:
            if recorder._on:
                recorder.reads.append((time.perf_counter() - t) * 1000)

    service._store = _Proxy(store, get=timed_get)

    from inference_service.stores.cassandra import store as store_module

    async def timed_execute(session: Any, statement: Any, params: Any, **kwargs: Any) -> Any:
        # bridge.execute, with the driver's answer (its I/O thread) and the loop's pick-up
        # stamped apart: Cassandra + driver, then the hop back onto a maybe busy loop.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        sent = time.perf_counter()
        response = session.execute_async(
            statement,
            params,
            execution_profile=kwargs.get("profile", store_module.EXEC_PROFILE_DEFAULT),
        )

        def settle(result: Any, ok: bool, answered: float) -> None:
            if recorder._on:
                recorder.driver.append((answered - sent) * 1000)
                recorder.hop.append((time.perf_counter() - answered) * 1000)
            if not future.done():
                future.set_result(result) if ok else future.set_exception(result)

        def back(result: Any, ok: bool) -> None:
            loop.call_soon_threadsafe(settle, result, ok, time.perf_counter())

        response.add_callbacks(
            callback=back, callback_args=(True,), errback=back, errback_args=(False,)
        )
        return await future

    store_module.execute = timed_execute


class _Proxy:
    """``target`` with some attributes replaced."""

    def __init__(self, target: Any, **replaced: Callable[..., Any]) -> None:
        self._target = target
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


VARIANTS: dict[str, Callable[[], None]] = {
    "base": gc.unfreeze,
    "freeze": lambda: (gc.collect(), gc.freeze()),  # what Application.start would do
}


async def run_get(args: argparse.Namespace) -> dict[str, Any]:
    images = mix(args)
    ghz = REPO / "build" / "bench" / "bin" / "bench-ghz"
    recorder = Recorder()
    gc.callbacks.append(recorder.gc_callback)
    rounds: list[dict[str, Any]] = []
    async with server(args, envoy=not args.no_envoy) as (app, _cassandra, proxy):
        instrument_get(app, recorder)
        watcher = asyncio.create_task(recorder.watch_loop())
        tag = uuid.uuid4().hex[:8]
        ids = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=GRPC_OPTIONS) as ch:
            stub = pb_grpc.InferenceServiceStub(ch)
            for n in range(args.seed):
                image = images[n % len(images)]
                invocation_id = f"get-{tag}-{n}"
                await stub.Invoke(
                    pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=image.content)),
                    timeout=30,
                )
                ids.append(invocation_id)
        messages = payloads.write_delimited(
            WORK / "get.messages", payloads.get_messages(ids, pb.INVOCATION_VIEW_BASIC)
        )
        paths = payloads.write_rest_get_paths(WORK / "get.paths", ids, "INVOCATION_VIEW_BASIC")
        targets = [
            (
                "grpc_direct",
                [
                    f"-target=127.0.0.1:{app.port}",
                    f"-call={payloads.GET_METHOD}",
                    f"-messages={messages}",
                ],
            )
        ]
        if proxy is not None:
            targets.append(("rest_envoy", [f"-http-base={proxy.url}", f"-http-paths={paths}"]))
        try:
            for round_no in range(args.rounds):
                for variant in args.variant:
                    for name, flags in targets:
                        VARIANTS[variant]()
                        gc.collect()
                        out = WORK / f"ghz-{name}.json"
                        argv = [
                            str(ghz),
                            f"-rate={args.rate}",
                            f"-z={args.duration}s",
                            "-cpus=1",
                            f"-out={out}",
                            *flags,
                        ]
                        with recorder.recording():
                            proc = await asyncio.create_subprocess_exec(*argv)
                            code = await proc.wait()
                        if code != 0:
                            raise RuntimeError(f"bench-ghz failed: {code}")
                        result = json.loads(out.read_text())
                        lat = sorted(result["latencies_us"]) if "latencies_us" in result else []
                        row = {
                            "round": round_no,
                            "variant": variant,
                            "target": name,
                            "ok": result.get("ok"),
                            "errors": result.get("errors"),
                            "p50_ms": round(pct(lat, 0.5) / 1000, 2),
                            "p99_ms": round(pct(lat, 0.99) / 1000, 2),
                            "p999_ms": round(pct(lat, 0.999) / 1000, 2),
                            "max_ms": round(lat[-1] / 1000, 2),
                            "max_send_lag_ms": result["max_send_lag_us"] / 1000,
                            **recorder.summary(),
                        }
                        rounds.append(row)
                        print(compact(row), flush=True)
        finally:
            gc.unfreeze()
            watcher.cancel()
    return {"mode": "get", "rounds": rounds}


def compact(row: dict[str, Any]) -> str:
    """One round on one line: the call's latency, then what the server saw."""
    gen = row["gc"]
    full, young, nursery = gen.get("gen2", {}), gen.get("gen1", {}), gen.get("gen0", {})
    return (
        f"round {row['round']} {row['variant']:<6} {row['target']:<11} "
        f"p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} p99.9 {row['p999_ms']:.2f} "
        f"max {row['max_ms']:.2f} lag {row['max_send_lag_ms']:.1f} | "
        f"gen2 {full.get('count', 0)} x max {full.get('max_ms', 0):.1f} ms, "
        f"gen1 {young.get('count', 0)} x max {young.get('max_ms', 0):.1f}, "
        f"gen0 {nursery.get('count', 0)} x p50 {nursery.get('p50_ms', 0):.2f} | "
        f"loop late p99 {row['loop_late_ms']['p99']:.1f} max {row['loop_late_ms']['max']:.1f} | "
        f"driver p50 {row['driver_ms']['p50']:.2f} p99 {row['driver_ms']['p99']:.2f} "
        f"p99.9 {row['driver_ms']['p999']:.2f}, hop p99 {row['hop_ms']['p99']:.2f} "
        f"max {row['hop_ms']['max']:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.invoke_latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mode", choices=["invoke", "get"])
    parser.add_argument("--contact-points", default="127.0.0.1")
    parser.add_argument("--keyspace", default="bench_invoke_latency")
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    parser.add_argument("--no-envoy", action="store_true")
    parser.add_argument("--calls", type=int, default=200, help="invoke: calls per path")
    parser.add_argument("--warmup", type=int, default=20, help="invoke: unrecorded calls per path")
    parser.add_argument("--rate", type=float, default=500, help="get: requests per second")
    parser.add_argument("--duration", type=float, default=10, help="get: seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="get: rounds of every variant")
    parser.add_argument("--seed", type=int, default=16, help="get: invocations to read")
    parser.add_argument(
        "--variant", action="append", choices=sorted(VARIANTS), help="get: default base and freeze"
    )
    parser.add_argument(
        "--compare-index",
        action="store_true",
        help="invoke: also direct calls with the index entry written beside the claim",
    )
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args(argv)
    args.variant = args.variant or ["base", "freeze"]
    result = asyncio.run(run_invoke(args) if args.mode == "invoke" else run_get(args))
    if args.json:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
