"""Admission control: what one server process takes on at once, before it does the work.

An Invoke that passed validation is admitted in two steps, both before its image is decoded:

1. a place in the **work queue**: at most ``max_admitted`` Invokes (the workers plus a bounded
   queue in front of the executor) are past this point at once, so the executor never holds
   more than that many tasks;
2. its share of the **memory budget**: the bytes its decode will allocate, as computed from the
   image header (``estimate``, run on the executor), out of ``memory_budget_bytes`` for all the
   images being decoded or held (waiting for the model or in it) at once.

Each step waits in line (first come, first served) for at most ``wait_s`` in all; then the
request is refused with ``ServerBusyError`` (UNAVAILABLE: retry). The admission is released when
the model run of the request ends (or when the request fails before it), not when its call is
cancelled: a run that outlives its call still holds its image.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from inference_service.errors import InvalidArgumentError, ServerBusyError

logger = logging.getLogger(__name__)

BUSY_QUEUE_MESSAGE = "server busy, retry later: too many images are in progress"
BUSY_MEMORY_MESSAGE = "server busy, retry later: no memory free to decode this image now"


class FifoCapacity:
    """A capacity of units (bytes, places) shared by asyncio tasks, first come first served:
    an acquire waits while earlier waiters are in line, even if its own amount would fit."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def in_use(self) -> int:
        """Units held now."""
        return self._used

    @property
    def waiting(self) -> int:
        """Acquires waiting in line now."""
        return sum(1 for _, future in self._waiters if not future.done())

    async def acquire(self, amount: int, *, max_wait_s: float) -> None:
        """Take ``amount`` units, waiting at most ``max_wait_s`` seconds in line (``TimeoutError``
        then, and nothing is held)."""
        if not 0 <= amount <= self.capacity:
            raise ValueError(f"cannot acquire {amount} of a capacity of {self.capacity}")
        if not self._waiters and self._used + amount <= self.capacity:
            self._used += amount
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((amount, future))
        try:
            async with asyncio.timeout(max_wait_s):
                await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(amount)  # granted just as the wait ended: give it back
            else:
                future.cancel()
                self._grant()  # the line moved: those behind may fit now
            raise

    def release(self, amount: int) -> None:
        """Give back ``amount`` units taken by ``acquire``."""
        self._used -= amount
        if self._used < 0:
            raise RuntimeError("released more than was acquired")
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            amount, future = self._waiters[0]
            if future.done():  # gave up waiting
                self._waiters.popleft()
                continue
            if self._used + amount > self.capacity:
                return
            self._waiters.popleft()
            self._used += amount
            future.set_result(None)


class Admitted:
    """What an admitted request holds; ``release`` gives it back (once, however often called)."""

    def __init__(self, release: Callable[[], None] | None = None, nbytes: int = 0) -> None:
        self._release = release
        self.nbytes = nbytes

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class UnlimitedAdmission:
    """Admits everything at once (no budget): for tests and embedded use."""

    async def admit(self, content: bytes) -> Admitted:
        return Admitted()


class AdmissionController:
    """The work queue and the memory budget of one server process (see the module doc)."""

    def __init__(
        self,
        *,
        estimate: Callable[[bytes], int],
        executor: Executor,
        memory_budget_bytes: int,
        max_admitted: int,
        wait_s: float,
    ) -> None:
        """``estimate(content)`` returns the bytes decoding ``content`` takes, or raises
        ``InvalidArgumentError`` (unsupported, too large); it runs on ``executor``."""
        self._estimate = estimate
        self._executor = executor
        self._places = FifoCapacity(max_admitted)
        self._memory = FifoCapacity(memory_budget_bytes)
        self._wait_s = wait_s

    @property
    def admitted(self) -> int:
        """Requests admitted (holding a place in the work queue) now."""
        return self._places.in_use

    @property
    def memory_in_use(self) -> int:
        """Bytes of the memory budget held now."""
        return self._memory.in_use

    @property
    def waiting(self) -> int:
        """Requests waiting for a place in the work queue or for memory now."""
        return self._places.waiting + self._memory.waiting

    @property
    def max_admitted(self) -> int:
        """Places in the work queue (workers plus the queue behind them)."""
        return self._places.capacity

    @property
    def memory_budget_bytes(self) -> int:
        """The image memory budget."""
        return self._memory.capacity

    async def admit(self, content: bytes) -> Admitted:
        """Admit a request to decode ``content``: ``ServerBusyError`` when there is no room
        within ``wait_s``; ``InvalidArgumentError`` from ``estimate``, or when the image needs
        more than the whole budget."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        try:
            await self._places.acquire(1, max_wait_s=self._wait_s)
        except TimeoutError:
            logger.info("busy: %d requests admitted, work queue full", self._places.in_use)
            raise ServerBusyError(BUSY_QUEUE_MESSAGE) from None
        try:
            nbytes = await loop.run_in_executor(self._executor, self._estimate, content)
            if nbytes > self._memory.capacity:
                raise InvalidArgumentError(
                    f"decoding this image would take {nbytes} bytes of memory; this server's "
                    f"image memory budget is {self._memory.capacity}"
                )
            try:
                await self._memory.acquire(nbytes, max_wait_s=max(0.0, deadline - loop.time()))
            except TimeoutError:
                logger.info(
                    "busy: %d of %d bytes of the image memory budget in use, %d bytes wanted",
                    self._memory.in_use,
                    self._memory.capacity,
                    nbytes,
                )
                raise ServerBusyError(BUSY_MEMORY_MESSAGE) from None
        except BaseException:
            self._places.release(1)
            raise

        def release() -> None:
            self._memory.release(nbytes)
            self._places.release(1)

        return Admitted(release, nbytes)
