"""CachingInvocationStore: the content of finished invocations is answered from memory, within
its bounds, and never once the row is deleted (by any process)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import hashlib
import tracemalloc

import pytest

from inference_service.domain import (
    BoundingBox,
    Claim,
    Detection,
    Invocation,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)
from inference_service.errors import StoreUnavailableError
from inference_service.stores.cache import CachingInvocationStore, entry_bytes
from inference_service.stores.memory import InMemoryInvocationStore

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class CountingStore(InMemoryInvocationStore):
    """Counts reads of the content (``gets``) apart from the small reads without it."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.basic_gets = 0

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        if with_content:
            self.gets += 1
        else:
            self.basic_gets += 1
        return await super().get(invocation_id, with_content=with_content)


def pending(invocation_id: str, size: int = 10) -> Invocation:
    return Invocation(
        input=ModelInput(invocation_id, b"x" * size, {"k": "v"}),
        content_sha256="0" * 64,
        state=State.PENDING,
        model=ModelInfo("face-detector", "v"),
        create_time=T0,
    )


def finished(invocation: Invocation) -> Invocation:
    return dataclasses.replace(
        invocation, state=State.SUCCEEDED, output=ModelOutput((), 1, 1), complete_time=T0
    )


async def run(store: CachingInvocationStore, invocation: Invocation) -> Invocation:
    assert await store.claim(invocation) is None
    done = finished(invocation)
    await store.complete(done)
    return done


async def test_finished_invocations_are_served_from_memory() -> None:
    inner = CountingStore()
    store = CachingInvocationStore(inner, max_bytes=1 << 20)
    done = await run(store, pending("a"))
    assert await store.get("a") == done
    basic = await store.get("a", with_content=False)
    assert basic is not None and basic.input.content == b""
    assert basic.content_sha256 == done.content_sha256
    assert inner.gets == 0
    assert inner.basic_gets == 2  # each hit revalidated with a read without the content


async def test_a_delete_by_another_process_is_never_served_from_the_cache() -> None:
    """Two server processes (two caches) over one store: both serve the invocation, one
    deletes it, and the other answers None at once; a re-Invoke then is served afresh."""
    inner = CountingStore()
    first = CachingInvocationStore(inner, max_bytes=1 << 20)
    second = CachingInvocationStore(inner, max_bytes=1 << 20)
    done = await run(first, pending("d"))
    assert await first.get("d") == done
    assert await second.get("d") == done
    assert await second.get("d") == done  # now from the second one's memory

    assert await first.delete("d") is True

    assert await second.get("d") is None
    assert await second.get("d", with_content=False) is None
    assert await first.get("d") is None
    assert await first.delete("d") is False
    again = dataclasses.replace(pending("d", size=3), create_time=T0 + dt.timedelta(seconds=1))
    await run(first, again)
    assert (await second.get("d")).input.content == b"xxx"


async def test_pending_invocations_are_read_from_the_store() -> None:
    inner = CountingStore()
    store = CachingInvocationStore(inner, max_bytes=1 << 20)
    assert await store.claim(pending("p")) is None
    assert (await store.get("p")).state is State.PENDING
    assert (await store.get("p")).state is State.PENDING
    assert inner.gets == 2


async def test_full_reads_fill_the_cache_and_basic_reads_are_one_read_without_content() -> None:
    inner = CountingStore()
    done = finished(pending("r"))
    await inner.claim(done)
    await inner.complete(done)
    store = CachingInvocationStore(inner, max_bytes=1 << 20)
    assert (await store.get("r", with_content=False)).input.content == b""
    assert (await store.get("r", with_content=False)).input.content == b""
    assert (inner.gets, inner.basic_gets) == (0, 2)
    # A BASIC read keeps nothing: the first FULL read is one read, no revalidation before it.
    assert await store.get("r") == done
    assert (inner.gets, inner.basic_gets) == (1, 2)
    assert await store.get("r") == done  # cached: revalidated without the content
    assert (await store.get("r", with_content=False)).input.content == b""
    assert (inner.gets, inner.basic_gets) == (1, 4)


async def test_a_basic_read_of_a_deleted_row_drops_its_entry() -> None:
    inner = CountingStore()
    first = CachingInvocationStore(inner, max_bytes=1 << 20)
    second = CachingInvocationStore(inner, max_bytes=1 << 20)
    done = await run(first, pending("b"))
    assert await second.get("b") == done
    assert await first.delete("b") is True
    assert await second.get("b", with_content=False) is None
    reads = (inner.gets, inner.basic_gets)
    assert await second.get("b") is None  # the entry is gone: one FULL read, no revalidation
    assert (inner.gets, inner.basic_gets) == (reads[0] + 1, reads[1])


async def test_least_recently_used_entries_go_first_to_stay_within_bytes() -> None:
    inner = CountingStore()
    entry = entry_bytes(finished(pending("a", size=100)))
    store = CachingInvocationStore(inner, max_bytes=2 * entry)
    for name in ("a", "b"):
        await run(store, pending(name, size=100))
    await store.get("a")  # a is now the most recently used
    await run(store, pending("c", size=100))  # evicts b
    inner.gets = 0
    await store.get("a")
    await store.get("c")
    assert inner.gets == 0
    assert await store.get("b") is not None
    assert inner.gets == 1


async def test_entries_larger_than_the_cache_are_not_kept() -> None:
    inner = CountingStore()
    store = CachingInvocationStore(inner, max_bytes=entry_bytes(finished(pending("big", 10))))
    await run(store, pending("big", size=11))
    await store.get("big")
    assert inner.gets == 1


async def test_entries_expire_with_their_rows() -> None:
    now = [T0]
    inner = CountingStore()
    store = CachingInvocationStore(inner, max_bytes=1 << 20, ttl_s=60, clock=lambda: now[0])
    await run(store, pending("t"))
    await store.get("t")
    assert inner.gets == 0
    now[0] = T0 + dt.timedelta(seconds=60)
    await store.get("t")  # expired in the cache: asks the store (which has no TTL here)
    assert inner.gets == 1


def test_needs_a_positive_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        CachingInvocationStore(InMemoryInvocationStore(), max_bytes=0)


def rich(invocation_id: str, *, detections: int, metadata: int) -> Invocation:
    """A finished invocation whose bytes are mostly not content: detections and metadata,
    every value a fresh object (as read from a store)."""
    found = tuple(
        Detection(BoundingBox(i + 0.5, i + 1.5, i + 2.5, i + 3.5), 0.5 + i / 1e6, "fa" + "ce")
        for i in range(detections)
    )
    return Invocation(
        input=ModelInput(
            invocation_id,
            b"c" * 10,
            {f"key-{i:04d}-{invocation_id}": f"value-{i}-" + "v" * 100 for i in range(metadata)},
        ),
        content_sha256=hashlib.sha256(invocation_id.encode()).hexdigest(),
        state=State.SUCCEEDED,
        model=ModelInfo("face-detector", "v" * 64),
        create_time=T0,
        content_type="image/png",
        output=ModelOutput(found, 640, 480),
        complete_time=T0,
    )


def test_every_byte_of_an_entry_is_counted() -> None:
    small = rich("s", detections=0, metadata=0)
    assert entry_bytes(rich("d", detections=1000, metadata=0)) >= entry_bytes(small) + 1000 * 250
    assert entry_bytes(rich("m", detections=0, metadata=64)) >= entry_bytes(small) + 64 * 150
    longer_id = dataclasses.replace(small, input=ModelInput("s" * 128, b"c" * 10))
    assert entry_bytes(longer_id) >= entry_bytes(small) + 127


class FreshReadStore(InMemoryInvocationStore):
    """Answers every read with a new invocation that nothing else references."""

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        return rich(invocation_id, detections=200, metadata=32)


async def test_the_cache_holds_no_more_memory_than_its_bound() -> None:
    max_bytes = 2 * 1024 * 1024
    store = CachingInvocationStore(FreshReadStore(), max_bytes=max_bytes)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(400):  # about 20 MB of invocations read through the cache
            await store.get(f"id-{i}")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert max_bytes // 2 < held <= max_bytes, held


class FailingCompleteStore(InMemoryInvocationStore):
    async def complete(self, invocation: Invocation) -> None:
        raise StoreUnavailableError("store down")


async def test_a_claim_whose_outcome_write_fails_is_dropped() -> None:
    store = CachingInvocationStore(FailingCompleteStore(), max_bytes=1 << 20)
    claim = pending("f", size=1000)
    assert await store.claim(claim) is None
    assert "f" in store._claimed
    with pytest.raises(StoreUnavailableError):
        await store.complete(finished(claim))
    assert "f" not in store._claimed
    assert store._bytes == 0  # and nothing was cached


async def test_an_outcome_fenced_off_by_a_take_over_is_never_cached() -> None:
    """Two server processes, each with its cache, one store: A's claim is taken over by B while
    A stalls; A's late outcome is not stored, so neither cache ever answers it."""
    inner = InMemoryInvocationStore()
    cache_a = CachingInvocationStore(inner, max_bytes=1 << 20)
    cache_b = CachingInvocationStore(inner, max_bytes=1 << 20)
    mine = dataclasses.replace(pending("t"), claim=Claim("a", T0))
    assert await cache_a.claim(mine) is None
    stale = await cache_b.get("t")
    theirs = dataclasses.replace(
        stale, input=mine.input, claim=Claim("b", T0), model=ModelInfo("face-detector", "v2")
    )
    assert await cache_b.take_over(stale, theirs) is None
    done_b = dataclasses.replace(finished(theirs), output=ModelOutput((), 2, 2))
    assert await cache_b.complete(done_b) is None

    late = await cache_a.complete(finished(mine))

    assert late == done_b
    assert await cache_a.get("t") == done_b
    assert await cache_b.get("t") == done_b
    assert await inner.get("t") == done_b
