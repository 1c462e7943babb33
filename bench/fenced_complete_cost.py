"""Cassandra CPU per Invoke, a short targeted measurement (not part of ``make bench``).

An in-process server (Cassandra store on the dev node, 127.0.0.1:9042, keyspace
``wt19_lwtcost``) and N Invokes of fresh ids (c=4, after 20 to warm up); the CPU of the node's
JVM (``/proc/<pid>/stat`` utime + stime, all threads) around them, and the machine's busy CPU
(``/proc/stat``) as a noise indicator. Compare two versions of the code by running it with
each on ``PYTHONPATH``, in alternating blocks (docs/performance.md, "Fencing the outcome write").

Usage: python -m bench.fenced_complete_cost <cassandra pid> <N> <label>
"""

import asyncio
import os
import pathlib
import sys
import time
import uuid

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

import inference_service
from inference_service.app import Application
from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraConfig, CassandraInvocationStore

TICK = os.sysconf("SC_CLK_TCK")


def jvm_cpu(pid):
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def busy():
    v = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / TICK


async def main(pid, n, label):
    shared = pathlib.Path("/work/shared")
    images = [p.read_bytes() for p in sorted((shared / "images").glob("face-*.jpg"))[:8]]
    store = await CassandraInvocationStore.connect(
        CassandraConfig(keyspace="wt19_lwtcost", create_schema=True)
    )
    app = Application(Settings(port=0, shared_dir=shared, workers=2), store=store)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", options=[("grpc.max_send_message_length", 1 << 25)]
        ) as ch:
            stub = pb_grpc.InferenceServiceStub(ch)

            async def run(k):
                sem = asyncio.Semaphore(4)

                async def one(i):
                    async with sem:
                        r = await stub.Invoke(
                            pb.InvokeRequest(
                                input=pb.ModelInput(
                                    id=f"c-{uuid.uuid4()}", content=images[i % len(images)]
                                )
                            ),
                            timeout=60,
                        )
                        assert r.invocation.state == pb.Invocation.STATE_SUCCEEDED

                await asyncio.gather(*(one(i) for i in range(k)))

            await run(20)  # warm-up
            c0, b0, t0 = jvm_cpu(pid), busy(), time.monotonic()
            await run(n)
            c1, b1, t1 = jvm_cpu(pid), busy(), time.monotonic()
    finally:
        await app.stop(grace=1)
        await store.close()
    wall = t1 - t0
    print(
        f"{label} n={n} cassandra_cpu_ms_per_invoke={(c1 - c0) * 1000 / n:.2f}"
        f" rate={n / wall:.1f}/s machine_busy_cores={(b1 - b0) / wall:.2f}"
        f" code={inference_service.__path__[0]}",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
