"""An invocation store that lives in the process: for unit tests and demos. Lost on exit."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable

from inference_service.domain import Invocation, InvocationPage, InvocationQuery, PageCursor, State
from inference_service.errors import InvocationGoneError, quote


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class InMemoryInvocationStore:
    """``InvocationStore`` on a dict, guarded by an asyncio lock (first writer wins).

    ``ttl_s`` (0: never) is the retention: an invocation is gone ``ttl_s`` after its create
    time, as a Cassandra row with that TTL is."""

    def __init__(self, *, ttl_s: int = 0, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self._items: dict[str, Invocation] = {}
        self._lock = asyncio.Lock()
        self._ttl = dt.timedelta(seconds=ttl_s) if ttl_s > 0 else None
        self._clock = clock

    def _live(self, invocation_id: str) -> Invocation | None:
        stored = self._items.get(invocation_id)
        ttl = self._ttl
        if ttl is not None and stored is not None and stored.create_time + ttl <= self._clock():
            del self._items[invocation_id]
            return None
        return stored

    async def claim(self, invocation: Invocation) -> Invocation | None:
        async with self._lock:
            existing = self._live(invocation.id)
            if existing is not None:
                return existing
            # As a real store: the content comes with the outcome (``complete``).
            self._items[invocation.id] = invocation.without_content()
            return None

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        async with self._lock:
            stored = self._items.get(invocation.id)
            if stored is None:
                raise InvocationGoneError(f"invocation {quote(invocation.id)} was removed")
            if stored.claim == invocation.claim:  # ours already (an earlier attempt won it)
                return None
            if stored.state is not State.PENDING or stored.claim != stale.claim:
                return stored
            self._items[invocation.id] = dataclasses.replace(
                stored, claim=invocation.claim, model=invocation.model
            )
            return None

    async def complete(self, invocation: Invocation) -> Invocation | None:
        async with self._lock:
            stored = self._items.get(invocation.id)
            if stored is None:
                raise InvocationGoneError(
                    f"invocation {invocation.id!r} was removed while it ran; "
                    "its outcome is not stored"
                )
            if stored.claim != invocation.claim:  # taken over: fenced off
                return stored
            # The content and the outcome fields; the rest of the input is never rewritten.
            content = invocation.input.content
            self._items[invocation.id] = dataclasses.replace(
                stored,
                input=dataclasses.replace(stored.input, content=content),
                state=invocation.state,
                output=invocation.output,
                complete_time=invocation.complete_time,
                error=invocation.error,
            )
            return None

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        stored = self._live(invocation_id)
        if stored is None or with_content:
            return stored
        return stored.without_content()

    async def list(self, query: InvocationQuery) -> InvocationPage:
        matching = sorted(
            (
                stored
                for stored in list(self._items.values())
                if self._live(stored.id) is not None
                and query.filter.matches(stored)
                and (query.after is None or query.after.before(stored.create_time, stored.id))
            ),
            key=lambda stored: (-stored.create_time.timestamp(), stored.id),
        )
        page = matching[: query.limit]
        if query.max_content_bytes is not None and query.with_content:
            content = 0
            for index, stored in enumerate(page):
                content += len(stored.input.content)
                if content >= query.max_content_bytes:
                    page = page[: index + 1]
                    break
        if not query.with_content:
            page = [stored.without_content() for stored in page]
        more = len(matching) > len(page)
        return InvocationPage(
            invocations=tuple(page), next=PageCursor.of(page[-1]) if more else None
        )

    async def delete(self, invocation_id: str) -> bool:
        async with self._lock:
            if self._live(invocation_id) is None:
                return False
            del self._items[invocation_id]
            return True

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        self._items.clear()
