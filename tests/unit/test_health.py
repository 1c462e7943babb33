"""StoreHealthMonitor: NOT_SERVING only after the store failed for a while, SERVING at once."""

from __future__ import annotations

import asyncio
import time

from inference_service.errors import StoreUnavailableError
from inference_service.health import StoreHealthMonitor


class ToggledStore:
    def __init__(self) -> None:
        self.up = True

    async def check(self) -> None:
        if not self.up:
            raise StoreUnavailableError("invocation store unavailable")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_health_follows_the_store_with_a_grace_period() -> None:
    store = ToggledStore()
    clock = FakeClock()
    changes: list[bool] = []

    async def record(healthy: bool) -> None:
        changes.append(healthy)

    monitor = StoreHealthMonitor(store, record, unhealthy_after_s=3.0, clock=clock)
    assert await monitor.check_once() is True
    store.up = False
    assert await monitor.check_once() is True  # a blip is not an outage
    clock.now += 2.9
    assert await monitor.check_once() is True
    clock.now += 0.1
    assert await monitor.check_once() is False
    clock.now += 60
    assert await monitor.check_once() is False
    store.up = True
    assert await monitor.check_once() is True
    store.up = False  # a new outage counts from its own start
    assert await monitor.check_once() is True
    assert changes == [False, True]


class SlowFailingStore:
    """Fails, but only after ``delay_s`` (a store that hangs until the driver's timeout);
    ``advance`` moves the fake clock by that much, as the real time would."""

    def __init__(self, clock: FakeClock | None, delay_s: float) -> None:
        self.clock = clock
        self.delay_s = delay_s

    async def check(self) -> None:
        if self.clock is not None:
            self.clock.now += self.delay_s
        else:
            await asyncio.sleep(self.delay_s)
        raise StoreUnavailableError("invocation store unavailable")


async def test_an_outage_counts_from_the_start_of_the_failing_check() -> None:
    """R3: the first failing check took 5 s (the request timeout) to fail: the store has been
    failing for 5 s when it returns, past the 3 s threshold."""
    clock = FakeClock()
    changes: list[bool] = []

    async def record(healthy: bool) -> None:
        changes.append(healthy)

    monitor = StoreHealthMonitor(
        SlowFailingStore(clock, 5.0), record, unhealthy_after_s=3.0, clock=clock
    )
    assert await monitor.check_once() is False
    assert changes == [False]


async def test_a_store_that_hangs_is_not_serving_within_the_threshold() -> None:
    """R3: the check has its own timeout, no longer than the threshold: a store that holds the
    connection (answers after 2 s, or never) is NOT_SERVING after about the threshold, not
    after the store's own timeout plus another check."""
    changes: list[float] = []
    started = time.monotonic()

    async def record(healthy: bool) -> None:
        if not healthy:
            changes.append(time.monotonic() - started)

    monitor = StoreHealthMonitor(
        SlowFailingStore(None, 2.0), record, interval_s=0.05, unhealthy_after_s=0.3
    )
    task = asyncio.create_task(monitor.run())
    try:
        await asyncio.sleep(1.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert changes, "never NOT_SERVING"
    assert changes[0] < 0.8, changes


class BrokenStore:
    """Not transient: the table was dropped (or permissions revoked); every call fails."""

    def __init__(self) -> None:
        self.broken = True

    async def check(self) -> None:
        if self.broken:
            raise RuntimeError("unconfigured table invocations")


async def test_any_failed_check_is_unhealthy() -> None:
    """R7: a non-transient store error is an outage too, with the same grace period."""
    store = BrokenStore()
    clock = FakeClock()
    changes: list[bool] = []

    async def record(healthy: bool) -> None:
        changes.append(healthy)

    monitor = StoreHealthMonitor(store, record, unhealthy_after_s=3.0, clock=clock)
    assert await monitor.check_once() is True
    clock.now += 3.0
    assert await monitor.check_once() is False
    store.broken = False
    assert await monitor.check_once() is True
    assert changes == [False, True]
