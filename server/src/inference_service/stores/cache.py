"""A read-through cache of finished invocations in front of another store.

A finished invocation (SUCCEEDED or FAILED) never changes again, but it may be deleted
(``DeleteInvocation``, on any server process) and its id invoked afresh. So an entry is never
served on trust: every hit first reads the row's identity from the store (a read without the
content: create time, claim, state) at the store's consistency, and the entry answers only when
that is still the row it was made from. A deleted row (or one deleted and claimed again) drops
the entry. The cache saves the read of the content, the large part, never the round trip; no
coherence traffic between processes is needed, and after a delete returns no process serves
the invocation. An outcome is cached only as the store answered it: a ``complete`` that
was applied (this claim's outcome is the stored one; the store fences ``complete`` on the
claim), or the row that a claim, a take-over, a fenced-off ``complete`` or a read returned;
never the outcome of a claim that was taken over. Pending invocations are never cached. With a
default TTL on the store, an entry expires when its row does (``create_time + ttl``, less a
margin).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable

from inference_service.domain import Invocation, InvocationPage, InvocationQuery, State
from inference_service.errors import InvocationGoneError
from inference_service.ports import InvocationStore

logger = logging.getLogger(__name__)

# An entry is dropped this long before its row expires (TTL rounding, clock differences).
EXPIRY_MARGIN = dt.timedelta(seconds=2)
# What an entry costs besides the bytes of its values: the objects holding them (the invocation,
# its input, model, output, times, metadata mapping) and its place in the LRU dict.
ENTRY_OVERHEAD_BYTES = 2048
# One detection: its object, its box, five floats (the label string is counted on its own).
DETECTION_BYTES = 320
# One metadata entry's slots in its dict (the key and value strings are counted on their own).
METADATA_ENTRY_BYTES = 64
# Claims won by this process whose outcome is not written yet (bounded: a call that dies
# between claim and complete must not leak).
MAX_CLAIMS_IN_FLIGHT = 1024


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CachingInvocationStore:
    """``InvocationStore`` that keeps up to ``max_bytes`` of finished invocations (LRU) in
    front of ``inner``; every write still goes to ``inner`` first."""

    def __init__(
        self,
        inner: InvocationStore,
        *,
        max_bytes: int,
        ttl_s: int = 0,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self._inner = inner
        self._max_bytes = max_bytes
        self._ttl = dt.timedelta(seconds=ttl_s) if ttl_s > 0 else None
        self._clock = clock
        self._entries: OrderedDict[str, Invocation] = OrderedDict()
        self._bytes = 0
        self._claimed: OrderedDict[str, Invocation] = OrderedDict()

    async def claim(self, invocation: Invocation) -> Invocation | None:
        existing = await self._inner.claim(invocation)
        if existing is not None:
            self._remember(existing)
        else:  # what was stored: the outcome is merged into it by ``complete``
            self._claimed[invocation.id] = invocation
            if len(self._claimed) > MAX_CLAIMS_IN_FLIGHT:
                self._claimed.popitem(last=False)
        return existing

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        current = await self._inner.take_over(stale, invocation)
        if current is not None:
            self._remember(current)
        else:
            self._claimed[invocation.id] = invocation
            if len(self._claimed) > MAX_CLAIMS_IN_FLIGHT:
                self._claimed.popitem(last=False)
        return current

    async def complete(self, invocation: Invocation) -> Invocation | None:
        try:
            current = await self._inner.complete(invocation)
        except InvocationGoneError:
            self._forget(invocation.id)
            raise
        finally:  # written or not, the claim is over: never keep its content past this call
            claimed = self._claimed.pop(invocation.id, None)
        if current is not None:
            # Fenced off (taken over): what is stored now, never this call's outcome.
            self._forget(invocation.id)
            self._remember(current)
            return current
        if claimed is not None and claimed.claim == invocation.claim:
            # As stored: the claimed input with this outcome, under the claim that wrote it.
            self._remember(
                dataclasses.replace(
                    claimed,
                    state=invocation.state,
                    output=invocation.output,
                    complete_time=invocation.complete_time,
                    error=invocation.error,
                )
            )
        return None

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        if not with_content:
            # One read without the content, cached or not: the very read a hit's revalidation
            # makes, so an entry has nothing to save here. It still drops an entry that is no
            # longer the row (deleted, or deleted and invoked again).
            current = await self._inner.get(invocation_id, with_content=False)
            cached = self._entries.get(invocation_id)
            if cached is not None and (current is None or not _same_row(cached, current)):
                self._forget(invocation_id)
            return current
        cached = self._lookup(invocation_id)
        if cached is not None:
            # Revalidate: the row's identity, without its content (see the module docstring).
            current = await self._inner.get(invocation_id, with_content=False)
            if current is not None and _same_row(cached, current):
                return cached
            self._forget(invocation_id)
            if current is None:
                return None
        stored = await self._inner.get(invocation_id, with_content=True)
        if stored is not None:
            self._remember(stored)
        return stored

    async def list(self, query: InvocationQuery) -> InvocationPage:
        return await self._inner.list(query)

    async def delete(self, invocation_id: str) -> bool:
        self._forget(invocation_id)
        self._claimed.pop(invocation_id, None)
        try:
            return await self._inner.delete(invocation_id)
        finally:  # a get that ran meanwhile may have put it back
            self._forget(invocation_id)

    async def check(self) -> None:
        await self._inner.check()

    async def close(self) -> None:
        self._entries.clear()
        self._claimed.clear()
        self._bytes = 0
        await self._inner.close()

    def _expired(self, invocation: Invocation) -> bool:
        return (
            self._ttl is not None
            and invocation.create_time + self._ttl - EXPIRY_MARGIN <= self._clock()
        )

    def _lookup(self, invocation_id: str) -> Invocation | None:
        cached = self._entries.get(invocation_id)
        if cached is None:
            return None
        if self._expired(cached):
            self._forget(invocation_id)
            return None
        self._entries.move_to_end(invocation_id)
        return cached

    def _remember(self, invocation: Invocation) -> None:
        """Keep a finished invocation with its content; drop the least recently used to fit.
        One without its content is never kept: it would answer nothing (a BASIC read is the
        same one read cached or not) and cost a FULL read a revalidation on top."""
        if (
            invocation.state is State.PENDING
            or not _has_content(invocation)
            or self._expired(invocation)
        ):
            return
        size = entry_bytes(invocation)
        if size > self._max_bytes:
            return
        self._forget(invocation.id)
        self._entries[invocation.id] = invocation
        self._bytes += size
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._forget(oldest)

    def _forget(self, invocation_id: str) -> None:
        removed = self._entries.pop(invocation_id, None)
        if removed is not None:
            self._bytes -= entry_bytes(removed)


def entry_bytes(invocation: Invocation) -> int:
    """Bytes an entry keeps in memory: its content, every string (ids, hash, type, model, error,
    metadata keys and values, labels) and every detection, on top of a fixed overhead."""
    strings = [
        invocation.input.id,
        invocation.content_sha256,
        invocation.content_type,
        invocation.model.name,
        invocation.model.version,
        invocation.error,
        *invocation.input.metadata.keys(),
        *invocation.input.metadata.values(),
    ]
    size = ENTRY_OVERHEAD_BYTES + sys.getsizeof(invocation.input.content)
    size += sum(sys.getsizeof(text) for text in strings)
    size += len(invocation.input.metadata) * METADATA_ENTRY_BYTES
    if invocation.output is not None:
        detections = invocation.output.detections
        size += sys.getsizeof(detections) + len(detections) * DETECTION_BYTES
        size += sum(sys.getsizeof(detection.label) for detection in detections)
    return size


def _same_row(cached: Invocation, current: Invocation) -> bool:
    """Whether ``current`` (just read) is the row ``cached`` was made from: the same create
    time, claim and state (a row deleted and invoked again has a new create time and claim)."""
    if cached.create_time != current.create_time or cached.state is not current.state:
        return False
    if cached.claim is not None and current.claim is not None:
        return cached.claim.token == current.claim.token
    return True


def _has_content(invocation: Invocation) -> bool:
    # Stored content is never empty (Invoke refuses empty content): empty means a BASIC read.
    return len(invocation.input.content) > 0
