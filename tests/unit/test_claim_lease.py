"""Nothing stuck: a claim whose owner is gone is taken over after its lease; a claim, once made,
runs to its end even when the call is cancelled (the in-memory store and a fake detector)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import threading

import pytest
from support.fakes import JPEG, NOW, PNG, FakeDetector

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
from inference_service.errors import (
    AlreadyExistsError,
    InvocationPendingError,
    StoreUnavailableError,
)
from inference_service.stores.memory import InMemoryInvocationStore

LEASE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_service(make_service, clock):
    """The shared builder (tests/unit/conftest.py) on a clock the test moves, with numbered claim
    tokens (each service its own), a lease of ``LEASE_S`` and a short wait for a pending claim."""

    def make(**arguments):
        tokens = iter(f"token-{n}" for n in range(1000))
        arguments.setdefault("new_token", lambda: next(tokens))
        arguments.setdefault("pending_wait_s", 0.05)
        return make_service(clock=clock, claim_lease_s=LEASE_S, **arguments)

    return make


async def orphan(store, invocation_id: str, content: bytes) -> None:
    """A claim whose owner died before storing its content and outcome."""
    orphaned = Invocation(
        input=ModelInput(invocation_id, content, {"first": "call"}),
        content_sha256=hashlib.sha256(content).hexdigest(),
        state=State.PENDING,
        model=FakeDetector().info,
        create_time=NOW,
        claim=Claim(token="dead-owner", time=NOW),
    )
    assert await store.claim(orphaned) is None


async def test_a_live_claim_is_not_taken_over(
    make_service, store, detector, executor, clock
) -> None:
    service = make_service()
    await orphan(store, "young", PNG)
    clock.advance(LEASE_S - 1)
    with pytest.raises(InvocationPendingError, match="still being processed"):
        await service.invoke(ModelInput("young", PNG))
    assert detector.calls == 0
    assert (await store.get("young")).claim.token == "dead-owner"


@pytest.mark.parametrize("speculate", [False, True])
async def test_an_expired_claim_is_taken_over_by_the_same_content(
    make_service, store, detector, executor, clock, speculate
) -> None:
    # With speculation the run started beside the claim is the take-over's: still one run.
    service = make_service(speculative_model_run=speculate)
    await orphan(store, "orphan", PNG)
    clock.advance(LEASE_S)

    done = await service.invoke(ModelInput("orphan", PNG, {"second": "call"}))

    assert done.state is State.SUCCEEDED
    assert detector.calls == 1
    stored = await store.get("orphan")
    assert stored == done
    assert stored.state is State.SUCCEEDED
    assert stored.input.content == PNG  # written by the take-over when the owner had not
    assert dict(stored.input.metadata) == {"first": "call"}  # the input stays as first stored
    assert stored.create_time == NOW
    assert stored.claim == Claim(token="token-0", time=clock.now)


async def test_an_expired_claim_with_other_content_is_already_exists(
    make_service, store, detector, executor, clock
) -> None:
    service = make_service()
    await orphan(store, "orphan", PNG)
    clock.advance(LEASE_S * 10)
    with pytest.raises(AlreadyExistsError):
        await service.invoke(ModelInput("orphan", JPEG))
    stored = await store.get("orphan")
    assert stored.state is State.PENDING
    assert stored.input.content == b""  # the dead owner never stored it; nobody else did
    assert stored.claim.token == "dead-owner"
    assert detector.calls == 0


async def test_of_concurrent_retries_exactly_one_takes_over(make_service, executor, clock) -> None:
    store = InMemoryInvocationStore()
    detector = FakeDetector(delay=0.05)
    service = make_service(store=store, detector=detector, pending_wait_s=5.0)
    await orphan(store, "orphan", PNG)
    clock.advance(LEASE_S + 1)

    results = await asyncio.gather(*(service.invoke(ModelInput("orphan", PNG)) for _ in range(8)))

    assert detector.calls == 1
    assert {r.state for r in results} == {State.SUCCEEDED}
    assert len({r.output for r in results}) == 1


class SlowStore(InMemoryInvocationStore):
    """Claims (and writes) take a while, so that a call can be cancelled in the middle."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def claim(self, invocation: Invocation) -> Invocation | None:
        await asyncio.sleep(self.delay)
        return await super().claim(invocation)


async def test_a_call_cancelled_during_its_claim_still_finishes_the_invocation(
    make_service, detector, executor, clock
) -> None:
    store = SlowStore(delay=0.2)
    service = make_service(store=store)
    call = asyncio.ensure_future(service.invoke(ModelInput("cancelled", PNG)))
    await asyncio.sleep(0.05)  # the claim is in flight
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await service.wait_idle()

    assert (await store.get("cancelled")).state is State.SUCCEEDED
    retry = await service.invoke(ModelInput("cancelled", PNG))
    assert retry.state is State.SUCCEEDED
    assert detector.calls == 1


class FailingCompleteStore(InMemoryInvocationStore):
    """The outcome write fails (the store went away after the claim)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    async def complete(self, invocation: Invocation) -> Invocation | None:
        if self.failing:
            raise StoreUnavailableError("invocation store unavailable")
        return await super().complete(invocation)


async def test_an_outcome_that_could_not_be_stored_is_redone_after_the_lease(
    make_service, detector, executor, clock
) -> None:
    store = FailingCompleteStore()
    service = make_service(store=store)
    with pytest.raises(StoreUnavailableError):
        await service.invoke(ModelInput("lost-outcome", PNG))
    assert (await store.get("lost-outcome")).state is State.PENDING

    store.failing = False
    with pytest.raises(InvocationPendingError):  # within the lease: the owner may still write
        await service.invoke(ModelInput("lost-outcome", PNG))
    clock.advance(LEASE_S)
    done = await service.invoke(ModelInput("lost-outcome", PNG))
    assert done.state is State.SUCCEEDED
    assert (await store.get("lost-outcome")).state is State.SUCCEEDED
    assert detector.calls == 2


async def test_take_over_is_conditional_on_the_old_claim(clock) -> None:
    store = InMemoryInvocationStore()
    await orphan(store, "orphan", PNG)
    stale = await store.get("orphan")
    first = dataclasses.replace(stale, claim=Claim("first", clock.now))
    second = dataclasses.replace(stale, claim=Claim("second", clock.now))
    assert await store.take_over(stale, first) is None
    current = await store.take_over(stale, second)
    assert current is not None
    assert current.claim.token == "first"


class GatedDetector(FakeDetector):
    """A model run that stalls until released (the owner is paused: GC, SIGSTOP, a VM), with a
    version and a score of its own, so that whose outcome is stored shows."""

    def __init__(self, version: str, score: float, *, fail: bool = False) -> None:
        super().__init__(fail=fail)
        self.version = version
        self.score = score
        self.gate = threading.Event()
        self.gate.set()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name="face-detector", version=self.version)

    def detect(self, image):  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom")
        height, width = image.shape[:2]
        return ModelOutput((Detection(BoundingBox(0, 0, 1, 1), self.score, "face"),), width, height)


@pytest.mark.parametrize("late_run_fails", [False, True], ids=["late-success", "late-failure"])
async def test_an_owner_that_stalls_past_its_lease_never_overwrites_its_successor(
    make_service, executor, clock, late_run_fails
) -> None:
    """R1: server A claims and stalls in its model run past the lease; server B (a retry)
    takes the claim over and stores its outcome; A wakes up. A writes nothing, and both
    callers get B's outcome, the one stored."""
    store = InMemoryInvocationStore()
    slow = GatedDetector("v1", 0.9, fail=late_run_fails)
    fast = GatedDetector("v2", 0.5)
    server_a = make_service(store=store, detector=slow)
    server_b = make_service(store=store, detector=fast, new_token=lambda: "token-b")
    slow.gate.clear()
    stalled = asyncio.ensure_future(server_a.invoke(ModelInput("stall", PNG)))
    for _ in range(500):  # until A holds the claim and runs the model
        if await store.get("stall") is not None:
            break
        await asyncio.sleep(0.01)
    clock.advance(LEASE_S + 1)

    answered_b = await server_b.invoke(ModelInput("stall", PNG))
    slow.gate.set()
    answered_a = await stalled

    stored = await store.get("stall")
    assert answered_b.state is State.SUCCEEDED
    assert answered_b.model.version == "v2"
    assert stored == answered_b
    assert stored.output.detections[0].score == 0.5
    assert stored.claim.token == "token-b"
    assert answered_a == stored  # every caller gets the one stored result


class LateTakeOverStore(InMemoryInvocationStore):
    """A take-over whose answer says "not yours" although it was applied (what an uncertain
    take-over that Paxos completed later looks like to the old code)."""

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        await super().take_over(stale, invocation)
        return await self.get(invocation.id)


async def test_a_row_holding_the_callers_own_claim_is_finished_by_it(
    make_service, detector, executor, clock
) -> None:
    """R2, the waiting loop: the row holds this call's own claim (its take-over was applied,
    the answer said otherwise): it is this call's, so it runs the model at once instead of
    waiting for an outcome nobody else will write."""
    store = LateTakeOverStore()
    service = make_service(store=store)
    await orphan(store, "late", PNG)
    clock.advance(LEASE_S + 1)

    done = await service.invoke(ModelInput("late", PNG))

    assert done.state is State.SUCCEEDED
    assert detector.calls == 1
    stored = await store.get("late")
    assert stored == done
    assert stored.claim.token == "token-0"


async def test_a_claim_bound_to_a_model_no_longer_served_fails_after_the_lease(
    make_service, store, detector, executor, clock
) -> None:
    """R6: the id's claim is bound to a model that this server does not serve (removed from
    the configuration, or renamed). Before the lease: UNAVAILABLE, as for any pending id.
    After it: taken over and stored FAILED, "model ... is no longer served", never PENDING
    for good."""
    gone = Invocation(
        input=ModelInput("unserved", PNG, {"first": "call"}),
        content_sha256=hashlib.sha256(PNG).hexdigest(),
        state=State.PENDING,
        model=ModelInfo(name="retired-detector", version="old"),
        create_time=NOW,
        claim=Claim(token="dead-owner", time=NOW),
    )
    assert await store.claim(gone) is None
    service = make_service()
    with pytest.raises(InvocationPendingError):
        await service.invoke(ModelInput("unserved", PNG))
    clock.advance(LEASE_S)

    answered = await service.invoke(ModelInput("unserved", PNG))

    assert answered.state is State.FAILED
    assert answered.error == "model 'retired-detector' is no longer served"
    assert answered.model == ModelInfo(name="retired-detector", version="old")
    stored = await store.get("unserved")
    assert stored == answered
    assert stored.input.content == PNG
    assert detector.calls == 0
    replay = await service.invoke(ModelInput("unserved", PNG))
    assert replay == answered
