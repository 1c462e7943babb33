"""Whether the server can do its work: the store answers. Knows nothing of gRPC.

``StoreHealthMonitor`` checks the store at a fixed interval and reports a change: unhealthy once
every check has failed for ``unhealthy_after_s`` (a blip does not take a replica out of the load
balancer's rotation), healthy again at the first check that passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from inference_service.errors import StoreUnavailableError
from inference_service.ports import InvocationStore

logger = logging.getLogger(__name__)


class StoreHealthMonitor:
    """Calls ``on_change(healthy)`` whenever the store's health changes (it starts healthy)."""

    def __init__(
        self,
        store: InvocationStore,
        on_change: Callable[[bool], Awaitable[None]],
        *,
        interval_s: float = 1.0,
        unhealthy_after_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._interval_s = interval_s
        self._unhealthy_after_s = unhealthy_after_s
        self._clock = clock
        self._healthy = True
        self._failing_since: float | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def check_once(self) -> bool:
        """One check of the store; reports a change; returns the health after it."""
        try:
            await self._store.check()
        except StoreUnavailableError:
            now = self._clock()
            if self._failing_since is None:
                self._failing_since = now
                logger.warning("store check failed")
            if self._healthy and now - self._failing_since >= self._unhealthy_after_s:
                logger.error(
                    "store unreachable for %.1fs: health NOT_SERVING", now - self._failing_since
                )
                await self._set(False)
        else:
            self._failing_since = None
            if not self._healthy:
                logger.info("store answers again: health SERVING")
                await self._set(True)
        return self._healthy

    async def run(self) -> None:
        """Check forever (until cancelled)."""
        while True:
            started = self._clock()
            try:
                await self.check_once()
            except Exception:  # a bug in a check must not end the monitor
                logger.exception("store health check failed unexpectedly")
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.0, self._interval_s - elapsed))

    async def _set(self, healthy: bool) -> None:
        self._healthy = healthy
        await self._on_change(healthy)
