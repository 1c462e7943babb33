"""CPU per ListInvocations page: a short targeted measurement (not part of ``make bench``;
docs/performance.md, "Listing: CPU per page").

An in-process server (Cassandra store on the dev node, 127.0.0.1:9042, keyspace
``g20_listcost``) with 200 finished invocations (seeded once through the store), and a gRPC
client in the same process paging through them 50 at a time (BASIC, c=1). Per page: this
process's CPU (server and client), the node's JVM CPU, and the latency. Compare two versions of
the code by running each on ``PYTHONPATH`` in alternating blocks.

Usage: python -m bench.list_cost <cassandra pid> <pages> <label>
"""

import asyncio
import pathlib
import statistics
import sys
import time

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from bench.get_cache_cost import face_images, jvm_cpu, seed
from inference_service.app import Application
from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraConfig, CassandraInvocationStore

SEEDED = 200


async def main(pid, pages, label):
    shared = pathlib.Path("/work/shared")
    store = await CassandraInvocationStore.connect(
        CassandraConfig(keyspace="g20_listcost", create_schema=True)
    )
    app = Application(Settings(port=0, shared_dir=shared, workers=1), store=store)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            first = await stub.ListInvocations(pb.ListInvocationsRequest(page_size=50))
            if not first.next_page_token or len(first.invocations) < 50:
                images = [image[:2000] for image in face_images(20)]
                for _ in range(SEEDED // len(images) + 1):
                    await seed(store, images)
            latencies = []
            token = ""

            async def page():
                nonlocal token
                started = time.perf_counter()
                response = await stub.ListInvocations(
                    pb.ListInvocationsRequest(page_size=50, page_token=token)
                )
                latencies.append(time.perf_counter() - started)
                token = response.next_page_token
                if len(response.invocations) < 50 or not token:
                    token = ""  # start over: every page measured is a full one

            for _ in range(10):
                await page()
            latencies.clear()
            cpu, jvm = time.process_time(), jvm_cpu(pid)
            for _ in range(pages):
                await page()
            cpu, jvm = time.process_time() - cpu, jvm_cpu(pid) - jvm
    finally:
        await app.stop(grace=1)
        await store.close()
    latencies.sort()
    print(
        f"{label} pages={pages} process_cpu_ms_per_page={cpu * 1000 / pages:.1f}"
        f" cassandra_cpu_ms_per_page={jvm * 1000 / pages:.1f}"
        f" p50_ms={statistics.median(latencies) * 1000:.1f}"
        f" p90_ms={latencies[int(len(latencies) * 0.9)] * 1000:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
