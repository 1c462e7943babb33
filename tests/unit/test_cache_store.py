"""CachingInvocationStore: finished invocations are answered from memory, within its bounds."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from inference_service.domain import Invocation, ModelInfo, ModelInput, ModelOutput, State
from inference_service.stores.cache import ENTRY_OVERHEAD_BYTES, CachingInvocationStore
from inference_service.stores.memory import InMemoryInvocationStore

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class CountingStore(InMemoryInvocationStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        self.gets += 1
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


async def test_pending_invocations_are_read_from_the_store() -> None:
    inner = CountingStore()
    store = CachingInvocationStore(inner, max_bytes=1 << 20)
    assert await store.claim(pending("p")) is None
    assert (await store.get("p")).state is State.PENDING
    assert (await store.get("p")).state is State.PENDING
    assert inner.gets == 2


async def test_reads_fill_the_cache_and_basic_entries_answer_basic_reads_only() -> None:
    inner = CountingStore()
    done = finished(pending("r"))
    await inner.claim(done)
    store = CachingInvocationStore(inner, max_bytes=1 << 20)
    assert (await store.get("r", with_content=False)).input.content == b""  # cached, BASIC
    assert (await store.get("r", with_content=False)).input.content == b""
    assert inner.gets == 1
    assert await store.get("r") == done  # a BASIC entry cannot answer FULL: read, cached
    assert await store.get("r") == done
    assert (await store.get("r", with_content=False)).input.content == b""
    assert inner.gets == 2


async def test_least_recently_used_entries_go_first_to_stay_within_bytes() -> None:
    inner = CountingStore()
    entry = 100 + ENTRY_OVERHEAD_BYTES
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
    store = CachingInvocationStore(inner, max_bytes=ENTRY_OVERHEAD_BYTES + 10)
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
