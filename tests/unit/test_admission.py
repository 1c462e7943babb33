"""Admission control: the FIFO capacity, the work queue and the memory budget, and how the
service holds an admission from before the decode to the end of the model run."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from support.fakes import FakeDetector, RecordingStore

from inference_service.admission import (
    BUSY_MEMORY_MESSAGE,
    BUSY_QUEUE_MESSAGE,
    AdmissionController,
    FifoCapacity,
)
from inference_service.domain import ModelInput
from inference_service.errors import InvalidArgumentError, ServerBusyError, StoreUnavailableError
from inference_service.service import InferenceService

PNG = b"\x89PNG\r\n\x1a\n" + b"rest-of-a-png"


@pytest.fixture(scope="module")
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


# --- FifoCapacity ------------------------------------------------------------------------


async def test_acquire_takes_room_at_once_while_there_is_some() -> None:
    capacity = FifoCapacity(10)
    await capacity.acquire(4, max_wait_s=0)
    await capacity.acquire(6, max_wait_s=0)
    assert capacity.in_use == 10
    with pytest.raises(TimeoutError):
        await capacity.acquire(1, max_wait_s=0)
    assert capacity.in_use == 10 and capacity.waiting == 0


async def test_a_waiter_gets_room_when_it_is_released() -> None:
    capacity = FifoCapacity(10)
    await capacity.acquire(8, max_wait_s=0)
    waiter = asyncio.create_task(capacity.acquire(5, max_wait_s=5))
    await asyncio.sleep(0.01)
    assert not waiter.done() and capacity.waiting == 1
    capacity.release(8)
    await asyncio.wait_for(waiter, 1)
    assert capacity.in_use == 5


async def test_waiters_are_served_first_come_first_served() -> None:
    capacity = FifoCapacity(10)
    await capacity.acquire(6, max_wait_s=0)
    big = asyncio.create_task(capacity.acquire(8, max_wait_s=5))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(capacity.acquire(1, max_wait_s=5))  # would fit, but is behind
    await asyncio.sleep(0.01)
    assert not big.done() and not small.done()
    capacity.release(6)
    await asyncio.wait_for(asyncio.gather(big, small), 1)
    assert capacity.in_use == 9


async def test_a_waiter_that_gives_up_holds_nothing_and_lets_the_next_in() -> None:
    capacity = FifoCapacity(10)
    await capacity.acquire(6, max_wait_s=0)
    big = asyncio.create_task(capacity.acquire(8, max_wait_s=0.05))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(capacity.acquire(2, max_wait_s=5))
    with pytest.raises(TimeoutError):
        await big
    await asyncio.wait_for(small, 1)  # the line moved when the big one left it
    assert capacity.in_use == 8 and capacity.waiting == 0


async def test_a_cancelled_waiter_holds_nothing() -> None:
    capacity = FifoCapacity(1)
    await capacity.acquire(1, max_wait_s=0)
    waiter = asyncio.create_task(capacity.acquire(1, max_wait_s=5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    capacity.release(1)
    assert capacity.in_use == 0 and capacity.waiting == 0


def test_amounts_outside_the_capacity_are_bugs() -> None:
    capacity = FifoCapacity(4)
    with pytest.raises(ValueError, match="cannot acquire 5"):
        asyncio.run(capacity.acquire(5, max_wait_s=0))
    with pytest.raises(RuntimeError, match="released more"):
        capacity.release(1)
    with pytest.raises(ValueError, match="positive"):
        FifoCapacity(0)


# --- AdmissionController -----------------------------------------------------------------


def controller(executor, *, budget: int = 100, places: int = 2, wait_s: float = 0.05, **kw):
    estimate = kw.pop("estimate", len)
    return AdmissionController(
        estimate=estimate,
        executor=executor,
        memory_budget_bytes=budget,
        max_admitted=places,
        wait_s=wait_s,
    )


async def test_admission_holds_the_estimate_and_a_place_until_released(executor) -> None:
    admission = controller(executor)
    admitted = await admission.admit(b"x" * 30)
    assert (admitted.nbytes, admission.memory_in_use, admission.admitted) == (30, 30, 1)
    admitted.release()
    admitted.release()  # idempotent
    assert (admission.memory_in_use, admission.admitted) == (0, 0)


async def test_a_full_work_queue_is_busy(executor) -> None:
    admission = controller(executor, places=2)
    held = [await admission.admit(b"x"), await admission.admit(b"x")]
    with pytest.raises(ServerBusyError, match=f"^{BUSY_QUEUE_MESSAGE}$"):
        await admission.admit(b"x")
    held[0].release()
    assert (await admission.admit(b"x")).nbytes == 1


async def test_a_full_memory_budget_is_busy_and_gives_its_place_back(executor) -> None:
    admission = controller(executor, budget=100, places=5)
    held = await admission.admit(b"x" * 80)
    with pytest.raises(ServerBusyError, match=r"^server busy, retry later: no memory free"):
        await admission.admit(b"x" * 30)
    assert (admission.memory_in_use, admission.admitted) == (80, 1)
    assert BUSY_MEMORY_MESSAGE.startswith("server busy, retry later")
    held.release()
    assert (await admission.admit(b"x" * 30)).nbytes == 30


async def test_a_request_waits_for_room_within_the_wait(executor) -> None:
    admission = controller(executor, budget=100, wait_s=5)
    held = await admission.admit(b"x" * 80)
    later = asyncio.create_task(admission.admit(b"x" * 30))
    await asyncio.sleep(0.05)
    assert not later.done()
    held.release()
    assert (await asyncio.wait_for(later, 1)).nbytes == 30


async def test_refusals_of_the_estimate_hold_nothing(executor) -> None:
    def refuse(content: bytes) -> int:
        raise InvalidArgumentError("input.content is in the PSD format")

    admission = controller(executor, estimate=refuse)
    with pytest.raises(InvalidArgumentError, match="PSD"):
        await admission.admit(b"8BPS")
    assert (admission.memory_in_use, admission.admitted) == (0, 0)


async def test_an_image_larger_than_the_whole_budget_is_invalid(executor) -> None:
    admission = controller(executor, budget=100)
    with pytest.raises(InvalidArgumentError, match=r"image memory budget is 100$"):
        await admission.admit(b"x" * 101)
    assert admission.admitted == 0


async def test_the_estimate_runs_off_the_event_loop(executor) -> None:
    threads: list[str] = []

    def estimate(content: bytes) -> int:
        threads.append(threading.current_thread().name)
        return 1

    await controller(executor, estimate=estimate).admit(b"x")
    assert threads and threads[0] != threading.main_thread().name


# --- the service holds its admission until the model run ends -----------------------------


class BlockingDetector(FakeDetector):
    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.proceed = threading.Event()

    def detect(self, image: np.ndarray):
        self.started.set()
        self.proceed.wait(10)
        return super().detect(image)


def service_with(admission, store, detector, executor) -> InferenceService:
    return InferenceService(
        store=store,
        detector=detector,
        decode=lambda content, max_pixels: np.zeros((4, 4, 3), dtype=np.uint8),
        executor=executor,
        admission=admission,
    )


async def test_the_admission_lasts_until_the_model_run_ends_even_if_the_call_is_cancelled(
    executor,
) -> None:
    admission = controller(executor, budget=1000)
    detector = BlockingDetector()
    service = service_with(admission, RecordingStore(), detector, executor)
    call = asyncio.create_task(service.invoke(ModelInput("held", PNG)))
    await asyncio.to_thread(detector.started.wait, 5)
    assert admission.memory_in_use == len(PNG)
    call.cancel()
    await asyncio.sleep(0.05)
    assert admission.memory_in_use == len(PNG)  # the run goes on, and holds its image
    detector.proceed.set()
    await service.wait_idle()
    assert (admission.memory_in_use, admission.admitted) == (0, 0)


class FailingClaimStore(RecordingStore):
    async def claim(self, invocation):
        raise StoreUnavailableError("store down")


async def test_the_admission_is_released_when_the_request_fails_or_repeats(executor) -> None:
    admission = controller(executor, budget=1000)
    failing = service_with(admission, FailingClaimStore(), FakeDetector(), executor)
    with pytest.raises(StoreUnavailableError):
        await failing.invoke(ModelInput("down", PNG))
    assert (admission.memory_in_use, admission.admitted) == (0, 0)

    service = service_with(admission, RecordingStore(), FakeDetector(), executor)
    first = await service.invoke(ModelInput("twice", PNG))
    assert await service.invoke(ModelInput("twice", PNG)) == first
    assert (admission.memory_in_use, admission.admitted) == (0, 0)


async def test_a_busy_server_stores_nothing(executor) -> None:
    admission = controller(executor, budget=1000, places=1, wait_s=0.05)
    detector = BlockingDetector()
    store = RecordingStore()
    service = service_with(admission, store, detector, executor)
    first = asyncio.create_task(service.invoke(ModelInput("first", PNG)))
    await asyncio.to_thread(detector.started.wait, 5)
    with pytest.raises(ServerBusyError):
        await service.invoke(ModelInput("second", PNG))
    assert store.claimed == ["first"]
    detector.proceed.set()
    await first
