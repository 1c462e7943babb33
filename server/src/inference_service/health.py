"""Whether the server can do its work: the store answers. Knows nothing of gRPC.

``StoreHealthMonitor`` checks the store at a fixed interval and reports a change: unhealthy once
the store has failed every check for ``unhealthy_after_s``, counted from the *start* of the
first failing check (a blip does not take a replica out of the load balancer's rotation),
healthy again at the first check that passes.

A check fails when the store refuses (``StoreUnavailableError``), when it raises anything else
(a dropped table, revoked permissions: every call would fail too), or when it does not answer
within its own timeout, which is never longer than ``unhealthy_after_s``: a store that hangs
instead of refusing makes the server NOT_SERVING as soon as one that refuses does, not after
the driver's request timeout on top.
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
        # The check's own timeout: no longer than the threshold (with a threshold of 0, any
        # failure is unhealthy at once, and a check may take up to one interval).
        self._check_timeout_s = unhealthy_after_s if unhealthy_after_s > 0 else interval_s
        self._clock = clock
        self._healthy = True
        self._failing_since: float | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def check_timeout_s(self) -> float:
        return self._check_timeout_s

    async def check_once(self) -> bool:
        """One check of the store; reports a change; returns the health after it."""
        started = self._clock()
        try:
            # Not ``wait_for``: on Python 3.11 it can swallow a cancellation that arrives as
            # the check completes, and the monitor would never stop.
            async with asyncio.timeout(self._check_timeout_s):
                await self._store.check()
        except StoreUnavailableError:
            await self._failed(started, "unavailable")
        except TimeoutError:
            await self._failed(started, f"no answer within {self._check_timeout_s:.1f}s")
        except Exception as exc:  # not transient (a dropped table, permissions): as bad
            await self._failed(started, f"{type(exc).__name__}: {exc}")
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

    async def _failed(self, started: float, why: str) -> None:
        """A failed check that started at ``started``: the outage counts from there."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = started
            logger.warning("store check failed: %s", why)
        if self._healthy and now - self._failing_since >= self._unhealthy_after_s:
            logger.error(
                "store failing for %.1fs (%s): health NOT_SERVING", now - self._failing_since, why
            )
            await self._set(False)

    async def _set(self, healthy: bool) -> None:
        self._healthy = healthy
        await self._on_change(healthy)
