"""An invocation store that lives in the process: for unit tests and demos. Lost on exit."""

from __future__ import annotations

import asyncio
import dataclasses

from inference_service.domain import Invocation, State
from inference_service.errors import InvocationGoneError


class InMemoryInvocationStore:
    """``InvocationStore`` on a dict, guarded by an asyncio lock (first writer wins)."""

    def __init__(self) -> None:
        self._items: dict[str, Invocation] = {}
        self._lock = asyncio.Lock()

    async def claim(self, invocation: Invocation) -> Invocation | None:
        async with self._lock:
            existing = self._items.get(invocation.id)
            if existing is not None:
                return existing
            # As a real store: the content comes with the outcome (``complete``).
            self._items[invocation.id] = invocation.without_content()
            return None

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        async with self._lock:
            stored = self._items.get(invocation.id)
            if stored is None:
                raise InvocationGoneError(f"invocation {invocation.id!r} was removed")
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
        stored = self._items.get(invocation_id)
        if stored is None or with_content:
            return stored
        return stored.without_content()

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        self._items.clear()
