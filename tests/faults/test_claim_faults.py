"""Faults at the store's boundary with the Cassandra driver, on a real Cassandra: a claim whose
answer is lost, sent twice, or "CAS write outcome unknown"; writes that fail for a moment; and
calls cancelled in the middle of their claim or content write (through a real gRPC server).

Each fault is injected around the real statement (it still runs against the real node)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cassandra import OperationTimedOut
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.policies import FallthroughRetryPolicy
from cassandra.protocol import ErrorMessage
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_service.app import Application
from inference_service.domain import Claim, Invocation, ModelInfo, ModelInput, ModelOutput, State
from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraInvocationStore
from inference_service.stores.cassandra.retry import CAS_WRITE_UNKNOWN

pytestmark = pytest.mark.asyncio(loop_scope="session")

Real = Callable[[], Awaitable[list[Any]]]
Fault = Callable[[Real], Awaitable[list[Any]]]


class FaultyCassandraStore(CassandraInvocationStore):
    """The real store, with faults around chosen statements (each fault fires once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults: dict[str, list[Fault]] = {}
        self.executed: list[str] = []

    def inject(self, statement: str, fault: Fault) -> None:
        self.faults.setdefault(statement, []).append(fault)

    def _name(self, statement: object) -> str:
        for name in ("claim", "take_over", "complete", "delete"):
            if getattr(self, f"_{name}") is statement:
                return name
        return "read"

    async def _execute(self, statement, params, *, profile=EXEC_PROFILE_DEFAULT):  # type: ignore[override]
        name = self._name(statement)
        self.executed.append(name)

        def real() -> Awaitable[list[Any]]:
            return super(FaultyCassandraStore, self)._execute(statement, params, profile=profile)

        pending = self.faults.get(name)
        if pending:
            return await pending.pop(0)(real)
        return await real()


def cas_unknown() -> ErrorMessage:
    return ErrorMessage(
        code=CAS_WRITE_UNKNOWN,
        message="CAS operation result is unknown - proposal accepted by 1 but not a quorum.",
        info=None,
    )


def pending(invocation_id: str | None = None, content: bytes | None = None) -> Invocation:
    content = content or f"content {uuid.uuid4()}".encode()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return Invocation(
        input=ModelInput(id=invocation_id or f"fault-{uuid.uuid4()}", content=content),
        content_sha256=hashlib.sha256(content).hexdigest(),
        state=State.PENDING,
        model=ModelInfo(name="face-detector", version="1"),
        create_time=now,
        claim=Claim(uuid.uuid4().hex, now),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def store(cassandra_endpoint) -> AsyncIterator[FaultyCassandraStore]:
    store = await FaultyCassandraStore.connect(
        dataclasses.replace(cassandra_endpoint, retry_budget_s=5.0)
    )
    yield store
    await store.close()


async def assert_owned(store: CassandraInvocationStore, invocation: Invocation) -> None:
    """The caller owns the id: its claim is stored, and its content and outcome go in."""
    stored = await store.get(invocation.id)
    assert stored is not None
    assert stored.claim == invocation.claim
    await store.complete(succeeded(invocation))
    stored = await store.get(invocation.id)
    assert stored.state is State.SUCCEEDED
    assert stored.input.content == invocation.input.content


def succeeded(invocation: Invocation) -> Invocation:
    return dataclasses.replace(
        invocation,
        state=State.SUCCEEDED,
        output=ModelOutput(detections=(), image_width=1, image_height=1),
        complete_time=invocation.create_time,
    )


async def test_the_claim_is_never_retried_by_the_driver(store: FaultyCassandraStore) -> None:
    assert isinstance(store._claim.retry_policy, FallthroughRetryPolicy)
    assert isinstance(store._take_over.retry_policy, FallthroughRetryPolicy)
    assert store._claim.is_idempotent is False


async def test_a_claim_sent_twice_knows_it_won(store: FaultyCassandraStore) -> None:
    """What the driver's default retry policy did after a dropped connection: the first attempt
    was applied, the second finds the row of the first."""
    invocation = pending()

    async def sent_twice(real: Real) -> list[Any]:
        await real()
        return await real()

    store.inject("claim", sent_twice)
    assert await store.claim(invocation) is None
    await assert_owned(store, invocation)


@pytest.mark.parametrize(
    "lost_answer",
    [cas_unknown, lambda: OperationTimedOut(errors={"127.0.0.1": "timed out"})],
    ids=["cas-write-unknown", "client-timeout"],
)
async def test_an_applied_claim_whose_answer_was_lost_knows_it_won(
    store: FaultyCassandraStore, lost_answer
) -> None:
    invocation = pending()

    async def applied_then_lost(real: Real) -> list[Any]:
        await real()
        raise lost_answer()

    store.inject("claim", applied_then_lost)
    assert await store.claim(invocation) is None
    await assert_owned(store, invocation)


async def test_a_claim_lost_before_it_was_applied_is_sent_again(
    store: FaultyCassandraStore,
) -> None:
    invocation = pending()

    async def never_applied(real: Real) -> list[Any]:
        raise cas_unknown()

    store.inject("claim", never_applied)
    store.executed.clear()
    assert await store.claim(invocation) is None
    assert store.executed[:3] == ["claim", "read", "claim"]  # the serial read settled it
    await assert_owned(store, invocation)


async def test_an_uncertain_claim_that_lost_returns_the_winner(
    store: FaultyCassandraStore,
) -> None:
    winner = pending()
    loser = dataclasses.replace(
        pending(winner.id), claim=Claim(uuid.uuid4().hex, winner.create_time)
    )

    async def a_competitor_won(real: Real) -> list[Any]:
        assert await CassandraInvocationStore.claim(store, winner) is None
        await store.complete(succeeded(winner))
        raise cas_unknown()

    store.inject("claim", a_competitor_won)
    existing = await store.claim(loser)
    assert existing is not None
    assert existing.claim == winner.claim
    assert existing.input.content == winner.input.content
    assert existing.state is State.SUCCEEDED


async def test_an_applied_take_over_whose_answer_was_lost_knows_it_won(
    store: FaultyCassandraStore,
) -> None:
    orphan = pending()
    assert await store.claim(orphan) is None
    stale = await store.get(orphan.id)
    successor = dataclasses.replace(stale, claim=Claim(uuid.uuid4().hex, stale.create_time))

    async def applied_then_lost(real: Real) -> list[Any]:
        await real()
        raise cas_unknown()

    store.inject("take_over", applied_then_lost)
    assert await store.take_over(stale, successor) is None
    assert (await store.get(orphan.id)).claim == successor.claim


async def test_an_uncertain_take_over_that_paxos_completes_later_is_won(
    store: FaultyCassandraStore,
) -> None:
    """R2: the take-over's answer is lost before its Paxos round is done; the serial read
    still shows the old claim; the round completes afterwards. The taker owns the id (the
    same own-claim rule as the claim's), it does not answer UNAVAILABLE and leave the id
    pending for another lease."""
    orphan = pending()
    assert await store.claim(orphan) is None
    stale = await store.get(orphan.id)
    successor = dataclasses.replace(stale, claim=Claim(uuid.uuid4().hex, stale.create_time))
    late: list[asyncio.Task[list[Any]]] = []

    async def completed_later(real: Real) -> list[Any]:
        executed = len(store.executed)

        async def after_the_read() -> list[Any]:
            for _ in range(500):  # once the serial read that settles it has run
                if "read" in store.executed[executed:]:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.02)
            return await real()

        late.append(asyncio.ensure_future(after_the_read()))
        raise cas_unknown()

    store.inject("take_over", completed_later)
    assert await store.take_over(stale, successor) is None
    await asyncio.gather(*late)
    assert (await store.get(orphan.id)).claim == successor.claim
    await assert_owned(store, successor)


async def test_a_fenced_off_outcome_whose_answer_was_lost_writes_nothing(
    store: FaultyCassandraStore,
) -> None:
    """R1 with an uncertain answer: the old owner's late write is not applied (taken over);
    its answer is lost; the serial read settles it: the taker's claim, not ours."""
    owner = pending()
    assert await store.claim(owner) is None
    stale = await store.get(owner.id)
    taker = dataclasses.replace(stale, claim=Claim(uuid.uuid4().hex, stale.create_time))
    assert await store.take_over(stale, taker) is None

    async def lost(real: Real) -> list[Any]:
        await real()
        raise OperationTimedOut(errors={"127.0.0.1": "timed out"})

    store.inject("complete", lost)
    current = await store.complete(succeeded(owner))
    assert current is not None
    assert current.claim == taker.claim
    assert current.state is State.PENDING
    assert await store.complete(succeeded(taker)) is None
    assert (await store.get(owner.id)).claim == taker.claim


async def test_the_content_and_outcome_write_is_retried(store: FaultyCassandraStore) -> None:
    invocation = pending()

    async def fails(real: Real) -> list[Any]:
        raise OperationTimedOut(errors={"127.0.0.1": "timed out"})

    for _ in range(3):
        store.inject("complete", fails)
    assert await store.claim(invocation) is None
    done = dataclasses.replace(
        invocation, state=State.FAILED, error="x", complete_time=invocation.create_time
    )
    await store.complete(done)
    stored = await store.get(invocation.id)
    assert stored == done
    assert stored.input.content == invocation.input.content


# --- cancellation, through a real gRPC server -----------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(store: FaultyCassandraStore, shared_dir) -> AsyncIterator[Application]:
    app = Application(Settings(port=0, shared_dir=shared_dir, workers=1), store=store)
    await app.start()
    yield app
    await app.stop(grace=1)


def slow_answer(seconds: float) -> Fault:
    """The statement is applied at once; its answer comes ``seconds`` later (a slow node): a
    call cancelled meanwhile must still go on to its content, model run and outcome."""

    async def fault(real: Real) -> list[Any]:
        rows = await real()
        await asyncio.sleep(seconds)
        return rows

    return fault


@pytest.mark.parametrize(
    "lost_answer",
    [cas_unknown, lambda: OperationTimedOut(errors={"127.0.0.1": "timed out"})],
    ids=["cas-write-unknown", "client-timeout"],
)
async def test_an_applied_delete_whose_answer_was_lost_knows_it_deleted(
    store: FaultyCassandraStore, lost_answer
) -> None:
    invocation = pending()
    assert await store.claim(invocation) is None

    async def applied_then_lost(real: Real) -> list[Any]:
        await real()
        raise lost_answer()

    store.inject("delete", applied_then_lost)
    store.executed.clear()
    assert await store.delete(invocation.id) is True
    assert store.executed[:3] == ["read", "delete", "read"]  # the serial read settled it
    assert await store.get(invocation.id) is None


async def test_an_uncertain_delete_that_was_not_applied_deleted_nothing(
    store: FaultyCassandraStore,
) -> None:
    invocation = pending()
    assert await store.claim(invocation) is None

    async def never_applied(real: Real) -> list[Any]:
        raise cas_unknown()

    store.inject("delete", never_applied)
    assert await store.delete(invocation.id) is False  # the row is still there: not deleted
    stored = await store.get(invocation.id)
    assert stored is not None and stored.claim == invocation.claim


@pytest.mark.parametrize("statement", ["claim", "complete"])
async def test_a_call_cancelled_during_its_write_is_finished_and_a_retry_succeeds(
    store: FaultyCassandraStore, server: Application, shared_dir, statement: str
) -> None:
    content = (shared_dir / "images" / "face-8.jpg").read_bytes()
    request = pb.InvokeRequest(input=pb.ModelInput(id=f"cancel-{uuid.uuid4()}", content=content))
    store.inject(statement, slow_answer(1.0))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as cancelled:
            await stub.Invoke(request, timeout=0.3)
        assert cancelled.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        retry = await stub.Invoke(request, timeout=30)
        assert retry.invocation.state == pb.Invocation.STATE_SUCCEEDED
        stored = await stub.GetInvocation(pb.GetInvocationRequest(id=request.input.id))
    assert stored.invocation.state == pb.Invocation.STATE_SUCCEEDED
    assert stored.invocation.input.content == content
    assert stored.invocation.output == retry.invocation.output
    assert stored.invocation.complete_time == retry.invocation.complete_time  # one outcome
