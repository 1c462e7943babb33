"""StoreHealthMonitor: NOT_SERVING only after the store failed for a while, SERVING at once."""

from __future__ import annotations

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
