"""What the cache of finished invocations saves per GetInvocation: a short targeted measurement
(not part of ``make bench``; docs/performance.md, "Get: what the cache saves").

The store layer in-process on the dev node (127.0.0.1:9042, keyspace ``g20_getcost``), 16
finished invocations of the repo's face images (15-150 KB), then interleaved blocks of N Gets
(c=1 and c=8) of each kind: a FULL Get answered by the cache (its revalidation read, no
content), a FULL Get read from Cassandra (the content too), a BASIC Get (a read without the
content, what a cache hit's revalidation reads too). Per Get: this process's CPU
(``time.process_time``: the event loop and the driver's threads), the node's JVM CPU, and the
latency (p50, p99).

Usage: python -m bench.get_cache_cost <cassandra pid> <N> <rounds>
"""

import asyncio
import dataclasses
import datetime as dt
import hashlib
import os
import pathlib
import statistics
import sys
import time
import uuid

from inference_service.domain import (
    Claim,
    Invocation,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)
from inference_service.stores.cache import CachingInvocationStore
from inference_service.stores.cassandra import CassandraConfig, CassandraInvocationStore

TICK = os.sysconf("SC_CLK_TCK")


def jvm_cpu(pid):
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def now_ms():
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def seed(store, images):
    ids = []
    for content in images:
        invocation = Invocation(
            input=ModelInput(id=f"get-{uuid.uuid4().hex}", content=content, metadata={"k": "v"}),
            content_sha256=hashlib.sha256(content).hexdigest(),
            state=State.PENDING,
            model=ModelInfo(name="face-detector", version="1"),
            create_time=now_ms(),
            content_type="image/jpeg",
            claim=Claim(uuid.uuid4().hex, now_ms()),
        )
        assert await store.claim(invocation) is None
        done = dataclasses.replace(
            invocation,
            state=State.SUCCEEDED,
            output=ModelOutput(detections=(), image_width=640, image_height=480),
            complete_time=now_ms(),
        )
        assert await store.complete(done) is None
        ids.append(invocation.id)
    return ids


async def block(get, ids, n, concurrency, pid):
    latencies = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            started = time.perf_counter()
            got = await get(ids[i % len(ids)])
            latencies.append(time.perf_counter() - started)
            assert got is not None

    cpu, jvm, wall = time.process_time(), jvm_cpu(pid), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - wall
    return (
        (time.process_time() - cpu) / n,
        (jvm_cpu(pid) - jvm) / n,
        latencies,
        wall,
    )


def face_images(count):
    shared = pathlib.Path("/work/shared/images")
    return [p.read_bytes() for p in sorted(shared.glob("face-*.jpg"))[:count]]


async def main(pid, n, rounds):
    images = face_images(16)
    inner = await CassandraInvocationStore.connect(
        CassandraConfig(keyspace="g20_getcost", create_schema=True)
    )
    cached = CachingInvocationStore(inner, max_bytes=64 << 20)
    try:
        ids = await seed(cached, images)
        kinds = {
            "FULL, cache hit": lambda i: cached.get(i),
            "FULL, from Cassandra": lambda i: inner.get(i),
            "BASIC (read without content)": lambda i: inner.get(i, with_content=False),
        }
        for get in kinds.values():  # warm everything
            await block(get, ids, 64, 4, pid)
        results = {(k, c): [] for k in kinds for c in (1, 8)}
        for _ in range(rounds):
            for concurrency in (1, 8):
                for kind, get in kinds.items():
                    results[kind, concurrency].append(await block(get, ids, n, concurrency, pid))
        print(f"{n} Gets x {rounds} rounds, interleaved; median of rounds")
        print("| Get | c | client CPU ms/Get | Cassandra CPU ms/Get | p50 ms | p99 ms | Gets/s |")
        print("|---|---|---|---|---|---|---|")
        for (kind, concurrency), blocks in results.items():
            cpu = statistics.median(b[0] for b in blocks) * 1000
            jvm = statistics.median(b[1] for b in blocks) * 1000
            lat = sorted(t for b in blocks for t in b[2])
            p50 = lat[len(lat) // 2] * 1000
            p99 = lat[int(len(lat) * 0.99)] * 1000
            rate = statistics.median(n / b[3] for b in blocks)
            print(
                f"| {kind} | {concurrency} | {cpu:.2f} | {jvm:.2f} | {p50:.2f} | {p99:.2f}"
                f" | {rate:.0f} |"
            )
    finally:
        await cached.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
