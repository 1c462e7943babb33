"""The seams of the service: what the service layer needs, as Protocols."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from inference_service.domain import (
    Invocation,
    InvocationPage,
    InvocationQuery,
    ModelDescription,
    ModelInfo,
    ModelOutput,
)


class Detector(Protocol):
    """Runs one model on decoded images.

    ``detect`` takes an RGB ``uint8`` array of shape (H, W, 3) (EXIF orientation
    already applied) and returns detections in pixels of that array. It is
    blocking and CPU-bound: callers run it off the event loop. Implementations
    must be safe to call from several threads at once.
    """

    @property
    def info(self) -> ModelInfo: ...

    def detect(self, image: np.ndarray) -> ModelOutput: ...

    def close(self) -> None: ...


class ModelSource(Protocol):
    """Finds a model artifact (a file, or a folder such as a SavedModel) and returns a local
    path to it, fetching (and unpacking) it if needed. Raises ``ModelFetchError`` with a clear
    message when it is missing, unreachable or not the expected bytes."""

    def fetch(self) -> str: ...


class ModelLease(Protocol):
    """A detector held for one unit of work: a reload never closes a detector that is leased;
    ``release`` (idempotent) gives it back."""

    @property
    def detector(self) -> Detector: ...

    def release(self) -> None: ...


class ModelRegistry(Protocol):
    """The models a server serves, by name or alias (``inference_service.models.registry``)."""

    def acquire(self, name: str) -> ModelLease:
        """The current version of model ``name`` (``""``: the default), held until
        ``release``. Raises ``NotFoundError`` for an unknown name."""
        ...

    def describe(self, name: str) -> ModelDescription:
        """One model by name or alias; ``NotFoundError`` for an unknown name."""
        ...

    def list(self) -> list[ModelDescription]:
        """Every model, the default first, then by name."""
        ...


class InvocationStore(Protocol):
    """Keeps invocations, keyed by input id. All methods are coroutines.

    Every write is conditional on who owns the id (``claim``: nobody; ``take_over``: the stale
    claim; ``complete``: the caller's own claim): the claim protocol, docs/architecture.md.
    Errors: a store that cannot be reached raises ``StoreUnavailableError``.
    """

    async def claim(self, invocation: Invocation) -> Invocation | None:
        """Insert ``invocation`` (state PENDING, owned by ``invocation.claim``) unless its id
        exists: everything but the content, which the owner stores with the outcome
        (``complete``).

        Returns ``None`` when this call owns the id (it inserted it, also when a retried
        attempt of its own insert is what it finds), else the invocation already stored under
        that id, unchanged, with its content (once stored) and its ``claim``. First writer
        wins under concurrency.
        """
        ...

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        """Move the claim of ``stale`` (a PENDING invocation as read from the store) to
        ``invocation.claim``, only if ``stale.claim`` still owns it and no outcome is stored,
        and record ``invocation.model`` (the version the new owner runs). The input stays as
        stored; the new owner stores the content with the outcome (``complete``: the same bytes,
        the caller checked the hash), as the first owner would have.

        Returns ``None`` when this call now owns the id (of several callers exactly one does;
        also when what it finds is its own claim: an earlier attempt of this take-over won),
        else the invocation as stored now. Raises ``InvocationGoneError`` when no invocation is
        stored under the id any more.
        """
        ...

    async def complete(self, invocation: Invocation) -> Invocation | None:
        """Record the content and the outcome (state, output, error, complete time) of an
        invocation this caller claimed, in one write: an invocation with an outcome always has
        its content. The content is the bytes whose hash the claim holds; the rest of the input
        is never rewritten. Idempotent.

        Fenced by the claim: the write is applied only while ``invocation.claim`` still owns the
        id (nobody took it over since). Returns ``None`` when it was applied (what is stored now
        is this outcome), else the invocation as stored now, unchanged by this call: owned by
        the claim that took this one over, with its outcome once stored (the caller answers with
        that). Raises ``InvocationGoneError`` when no invocation is stored under the id any more
        (deleted, or expired, while the caller held the claim; also for an id nobody claimed):
        nothing is written, so a late outcome can never bring a removed invocation back."""
        ...

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        """Return the stored invocation, or ``None``. Without content,
        ``input.content`` is ``b""`` (``content_sha256`` is still set)."""
        ...

    async def list(self, query: InvocationQuery) -> InvocationPage:
        """One page of stored invocations matching ``query.filter``, newest first (by
        ``create_time``, ties by id), after ``query.after``: at most ``query.limit`` of them,
        and the position of the next page (``None`` at the end). A store may bound the work of
        one page and return fewer (even none) with a position to go on from. Never returns an
        invocation that a ``get`` would not (deleted, expired)."""
        ...

    async def delete(self, invocation_id: str) -> bool:
        """Erase the invocation from every table; ``True`` when there was one. After it
        returns, no ``get`` or ``list`` of any process returns it, and no later write of an
        Invoke that claimed it before (``complete``) brings it back; a new ``claim`` of the id
        starts afresh. Idempotent (a retry answers ``False`` once the first one applied)."""
        ...

    async def check(self) -> None:
        """Return when the store can serve reads and writes now; raise
        ``StoreUnavailableError`` otherwise (the server's health check)."""
        ...

    async def close(self) -> None: ...


class AdmissionTicket(Protocol):
    """What an admitted request holds (a place in the work queue, a share of the memory
    budget) until ``release``, which may be called more than once."""

    def release(self) -> None: ...


class Admission(Protocol):
    """Decides whether a request may decode its image now (``inference_service.admission``)."""

    async def admit(self, content: bytes) -> AdmissionTicket:
        """Wait (bounded) for room to decode ``content``; raises ``ServerBusyError`` when there
        is none, ``InvalidArgumentError`` when the image could never fit."""
        ...
