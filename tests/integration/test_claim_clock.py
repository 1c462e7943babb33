"""The claim lease is measured by Cassandra's clock, never by comparing two servers' clocks: a
claim's age is the read's coordinator ``now()`` minus the claim's write time (set by Paxos).

A server whose clock is 30 s ahead of the claimer's does not take a live claim over (before: it
took over at once, a lease of 10 s being 30 s gone by its clock); one 30 s behind takes an
orphaned claim over once the lease has passed (before: 30 s later than that).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio
from support.fakes import PNG, FakeDetector, fake_decode

from inference_service.domain import Claim, Invocation, ModelInput, State
from inference_service.errors import InvocationPendingError
from inference_service.service import InferenceService, RequestLimits
from inference_service.stores.cassandra import CassandraInvocationStore

SKEW = dt.timedelta(seconds=30)


@pytest_asyncio.fixture(loop_scope="session")
async def store(cassandra_endpoint) -> AsyncIterator[CassandraInvocationStore]:
    store = await CassandraInvocationStore.connect(cassandra_endpoint)
    yield store
    await store.close()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def service(store, executor, *, skew: dt.timedelta, lease_s: float) -> InferenceService:
    return InferenceService(
        store=store,
        detector=FakeDetector(),
        decode=fake_decode,
        executor=executor,
        limits=RequestLimits(max_content_bytes=1000, max_image_pixels=100),
        clock=lambda: dt.datetime.now(dt.UTC) + skew,
        claim_lease_s=lease_s,
        pending_wait_s=0.5,
    )


async def orphan(store: CassandraInvocationStore) -> str:
    """A claim made now (by a server with a correct clock) whose owner then died."""
    invocation_id = f"clock-{uuid.uuid4().hex[:12]}"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    orphaned = Invocation(
        input=ModelInput(invocation_id, PNG),
        content_sha256=hashlib.sha256(PNG).hexdigest(),
        state=State.PENDING,
        model=FakeDetector().info,
        create_time=now,
        claim=Claim(token=uuid.uuid4().hex, time=now),
    )
    assert await store.claim(orphaned) is None
    return invocation_id


@pytest.mark.asyncio(loop_scope="session")
async def test_a_server_clock_ahead_does_not_take_a_live_claim_over(store, executor) -> None:
    invocation_id = await orphan(store)
    ahead = service(store, executor, skew=SKEW, lease_s=10.0)
    with pytest.raises(InvocationPendingError, match="still being processed"):
        await ahead.invoke(ModelInput(invocation_id, PNG))
    stored = await store.get(invocation_id, with_content=False)
    assert stored is not None and stored.state is State.PENDING
    assert stored.claim is not None and stored.claim.age is not None
    assert stored.claim.age < dt.timedelta(seconds=10)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_server_clock_behind_takes_an_orphan_over_after_the_lease(store, executor) -> None:
    invocation_id = await orphan(store)
    behind = service(store, executor, skew=-SKEW, lease_s=2.0)
    await asyncio.sleep(2.2)  # the lease, by every clock but this server's
    done = await behind.invoke(ModelInput(invocation_id, PNG))
    assert done.state is State.SUCCEEDED
