"""The use cases of the inference service, shared by every protocol.

``InferenceService`` knows the domain, the store and the models (a registry of detectors)
through their protocols; it knows nothing of gRPC, HTTP or Cassandra. Blocking work (image
decoding, the model) runs in an executor, never on the event loop. Invoke follows the claim
protocol (claim, wait or take over, the fenced complete, the replay): docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from typing import cast

import numpy as np

from inference_service.admission import UnlimitedAdmission
from inference_service.domain import (
    Claim,
    Invocation,
    InvocationQuery,
    ModelDescription,
    ModelInput,
    ModelOutput,
    PageCursor,
    State,
)
from inference_service.errors import (
    AlreadyExistsError,
    InferenceError,
    InvalidArgumentError,
    InvocationPendingError,
    NotFoundError,
    quote,
)
from inference_service.images.formats import sniff_content_type
from inference_service.images.validation import check_content, check_metadata, validate_id
from inference_service.limits import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    RequestLimits,
    invocation_response_bytes,
    list_page_bytes,
)
from inference_service.listing import PageTokens, parameters_digest, parse_filter
from inference_service.ports import Admission, Detector, InvocationStore, ModelLease, ModelRegistry

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("inference_service.audit")
"""One JSON line per erasure (``DeleteInvocation``): what was asked, by whom, what happened."""

FAILED_MESSAGE = "the model failed on this input"

ImageDecoder = Callable[[bytes, int], np.ndarray]
"""Decodes content into an RGB uint8 (H, W, 3) array, given the pixel limit;
raises ``InvalidArgumentError`` for content that is not a usable image."""


def _utcnow() -> dt.datetime:
    """Now, in UTC, to the millisecond: what every store (Cassandra too) keeps exactly."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class InferenceService:
    """Invoke a model on inputs, read stored invocations back, tell which models are served."""

    def __init__(
        self,
        *,
        store: InvocationStore,
        models: ModelRegistry | None = None,
        detector: Detector | None = None,
        decode: ImageDecoder,
        executor: Executor,
        limits: RequestLimits | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        new_token: Callable[[], str] = lambda: uuid.uuid4().hex,
        pending_wait_s: float = 5.0,
        claim_lease_s: float = 60.0,
        admission: Admission | None = None,
        speculative_model_run: bool = False,
        page_tokens: PageTokens | None = None,
    ) -> None:
        """``models``: the registry the model of each Invoke comes from; or ``detector``, the
        one model served (tests). ``speculative_model_run``: start the model beside the claim
        (a loser of the claim discards its run). ``page_tokens``: signs ListInvocations page
        tokens (default: a random secret of this process alone, so tokens are valid only on
        this process: give every replica the same secrets)."""
        if models is None:
            if detector is None:
                raise TypeError("InferenceService needs models or a detector")
            from inference_service.models.registry import LoadedModelRegistry

            models = LoadedModelRegistry.single(detector)
        self._store = store
        self._models = models
        self._decode = decode
        self._executor = executor
        self._limits = limits or RequestLimits()
        self._clock = clock
        self._new_id = new_id
        self._new_token = new_token
        self._pending_wait_s = pending_wait_s
        self._admission = admission or UnlimitedAdmission()
        # Model runs of won claims; they finish (and store their outcome) even when the call
        # that started them is cancelled, so that no claimed id stays PENDING.
        self._runs: set[asyncio.Future[Invocation]] = set()
        self._lease = dt.timedelta(seconds=claim_lease_s)
        self._speculate = speculative_model_run
        self._page_tokens = page_tokens or PageTokens(secrets=[secrets.token_bytes(32)])

    async def invoke(self, model_input: ModelInput, model: str = "") -> Invocation:
        """Validate, claim the id, run the model, store and return the invocation.

        ``model`` is a model's name or alias (``""``: the default; unknown: ``NotFoundError``).
        The current version of that model is held from here to the end of the unit of work: a
        reload meanwhile lets this call finish on it, and the invocation records the model and
        version that ran.

        Idempotent per id: the same id with the same content returns the stored
        invocation (``replayed`` set) without running the model (whichever model it asks for:
        the id is bound to the model that first ran it, which the invocation names); with other
        content it raises ``AlreadyExistsError``. Invalid input raises before anything is stored.
        """
        lease = self._models.acquire(model)
        try:
            if not model_input.id:
                model_input = dataclasses.replace(model_input, id=self._new_id())
            validate_id(model_input.id)
            check_content(model_input.content, self._limits)
            check_metadata(model_input.metadata, self._limits)
            # Room to decode (work queue, memory budget), held until the unit of work ends.
            admitted = await self._admission.admit(model_input.content)
        except BaseException:
            lease.release()
            raise
        try:
            loop = asyncio.get_running_loop()
            image, sha256 = await loop.run_in_executor(
                self._executor, self._decode_and_hash, model_input.content
            )
        except BaseException:
            admitted.release()
            lease.release()
            raise
        now = self._clock()
        pending = Invocation(
            input=model_input,
            content_sha256=sha256,
            content_type=sniff_content_type(model_input.content),
            state=State.PENDING,
            model=lease.detector.info,
            create_time=now,
            claim=Claim(token=self._new_token(), time=now),
        )
        # One unit of work: the claim, the content, the model run and the outcome run to the
        # end once started, even when the call is cancelled (a client's deadline, a REST client
        # gone); stopped half-way, they would hold the id until the claim's lease passes.
        work = asyncio.ensure_future(self._claim_and_run(pending, image, lease.detector))
        del image  # held by the unit of work only, until the admission is released
        self._runs.add(work)
        work.add_done_callback(self._runs.discard)
        work.add_done_callback(lambda _: admitted.release())
        work.add_done_callback(lambda _: lease.release())
        work.add_done_callback(_settle_unit_of_work)
        return await asyncio.shield(work)

    def list_models(self) -> list[ModelDescription]:
        """Every served model, the default first, then by name."""
        return self._models.list()

    def get_model(self, name: str) -> ModelDescription:
        """One model by name or alias; ``NotFoundError`` when none has it."""
        if not name:
            raise InvalidArgumentError("name is empty: give a model's name or alias")
        return self._models.describe(name)

    async def wait_idle(self) -> None:
        """Wait for the units of work in flight (e.g. of cancelled calls) to finish."""
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)

    async def _claim_and_run(
        self, pending: Invocation, image: np.ndarray, detector: Detector
    ) -> Invocation:
        """Claim the id, then run the model and store the outcome (owner), or answer with the
        owner's outcome (loser). With speculation, the model already runs during the claim;
        every path waits for that run to end before the unit of work does (it holds the image,
        which the admission's memory budget counts until then)."""
        model_run = self._start_model(detector, image) if self._speculate else None
        try:
            existing = await self._store.claim(pending)
            if existing is None:
                return await self._run_model(pending, image, detector, model_run)
            if existing.content_sha256 != pending.content_sha256:
                raise AlreadyExistsError(
                    f"id {quote(existing.id)} is already used by an input with different content"
                )
            return await self._await_outcome(existing, pending, image, (detector, model_run))
        finally:
            if model_run is not None:
                # The loser's (or a failed claim's) run is discarded, its error too.
                await asyncio.gather(model_run, return_exceptions=True)

    def _start_model(self, detector: Detector, image: np.ndarray) -> asyncio.Future[ModelOutput]:
        return asyncio.get_running_loop().run_in_executor(self._executor, detector.detect, image)

    def _decode_and_hash(self, content: bytes) -> tuple[np.ndarray, str]:
        """Blocking: the decoded image and the content's sha256 (hex), off the event loop."""
        image = self._decode(content, self._limits.max_image_pixels)
        return image, hashlib.sha256(content).hexdigest()

    async def _run_model(
        self,
        owned: Invocation,
        image: np.ndarray,
        detector: Detector,
        model_run: asyncio.Future[ModelOutput] | None = None,
    ) -> Invocation:
        """The owner of a claim: run ``detector`` (the model that ``owned.model`` names), or
        finish ``model_run``, its run started already; then store the content and the outcome
        (success or failure) in one write, fenced by the claim. When the claim was taken over
        meanwhile (this owner stalled past its lease) nothing is written and the caller gets
        what is stored (or, while the new owner runs, waits for it like any other caller)."""
        if model_run is None:
            model_run = self._start_model(detector, image)
        try:
            output: ModelOutput = await asyncio.shield(model_run)
        except Exception:
            # A failure is the invocation's outcome, stored and answered like a success (OK,
            # state FAILED, a client-safe error), to this caller as to every replay: one rule.
            # Final for the id, also when the cause was not the input (e.g. out of memory).
            logger.exception("model %s failed on input %s", owned.model.name, owned.id)
            failed = dataclasses.replace(
                owned, state=State.FAILED, error=FAILED_MESSAGE, complete_time=self._clock()
            )
            stored = await self._store.complete(failed)
            if stored is None:
                return failed
            return await self._answer_stored(stored, owned, image, (detector, model_run))
        done = dataclasses.replace(
            owned, state=State.SUCCEEDED, output=output, complete_time=self._clock()
        )
        stored = await self._store.complete(done)
        if stored is None:
            return done
        return await self._answer_stored(stored, owned, image, (detector, model_run))

    async def _answer_stored(
        self,
        stored: Invocation,
        owned: Invocation,
        image: np.ndarray,
        started: tuple[Detector, asyncio.Future[ModelOutput] | None],
    ) -> Invocation:
        """A fenced-off owner (its claim was taken over): answer with the stored outcome, the
        one every caller gets, as a caller that lost the claim would."""
        logger.warning(
            "invocation %r: the claim of %s was taken over before its outcome was stored; "
            "answering with the stored invocation",
            owned.id,
            owned.claim.time.isoformat() if owned.claim is not None else "?",
        )
        return await self._await_outcome(stored, owned, image, started)

    async def get_invocation(self, invocation_id: str, *, with_content: bool = True) -> Invocation:
        """The stored invocation; ``NotFoundError`` when there is none."""
        validate_id(invocation_id)
        invocation = await self._store.get(invocation_id, with_content=with_content)
        if invocation is None:
            raise NotFoundError(f"invocation {quote(invocation_id)} not found")
        return invocation

    async def list_invocations(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        filter_text: str = "",
        full: bool = False,
    ) -> tuple[list[Invocation], str]:
        """One page of stored invocations, newest first, and the token of the next page (``""``
        at the end). ``page_size`` 0 means ``DEFAULT_PAGE_SIZE``, more than ``MAX_PAGE_SIZE``
        is lowered to it, negative is ``InvalidArgumentError``; ``filter_text``: see
        ``inference_service.listing``; ``full``: with the content (the page is then also cut
        to ``list_page_bytes``). A ``page_token`` must come from a page of the same filter and
        view."""
        if page_size < 0:
            raise InvalidArgumentError(f"page_size is {page_size}: it must be 0 or more")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        parameters = parameters_digest(filter_text, "FULL" if full else "BASIC")
        after = self._page_tokens.read(page_token, parameters) if page_token else None
        query = InvocationQuery(
            filter=parse_filter(filter_text, self._model_names),
            after=after,
            limit=size,
            with_content=full,
            max_content_bytes=list_page_bytes(self._limits) if full else None,
        )
        page = await self._store.list(query)
        invocations, next_cursor = list(page.invocations), page.next
        budget = list_page_bytes(self._limits)
        used = 0
        for index, invocation in enumerate(invocations):
            used += invocation_response_bytes(
                len(invocation.input.content),
                dict(invocation.input.metadata),
                len(invocation.output.detections) if invocation.output is not None else 0,
            )
            if used > budget and index > 0:  # the first one always fits (it is an invocation)
                invocations = invocations[:index]
                next_cursor = PageCursor.of(invocations[-1])
                break
        token = self._page_tokens.make(next_cursor, parameters) if next_cursor else ""
        return invocations, token

    async def delete_invocation(
        self,
        invocation_id: str,
        *,
        allow_missing: bool = False,
        request_id: str = "",
        caller: str = "",
    ) -> None:
        """Erase an invocation from the store (every table); ``NotFoundError`` when there is
        none, unless ``allow_missing``. Writes one JSON audit line (``inference_service.audit``:
        the id, ``request_id``, ``caller``, the outcome; never the content)."""
        validate_id(invocation_id)
        outcome = "error"
        try:
            deleted = await self._store.delete(invocation_id)
            outcome = "deleted" if deleted else "not_found"
        finally:
            audit_logger.info(
                json.dumps(
                    {
                        "event": "invocation.delete",
                        "invocation_id": invocation_id,
                        "request_id": request_id,
                        "caller": caller,
                        "allow_missing": allow_missing,
                        "outcome": outcome,
                    },
                    ensure_ascii=False,
                )
            )
        if not deleted and not allow_missing:
            raise NotFoundError(f"invocation {quote(invocation_id)} not found")

    def _model_names(self, name: str) -> frozenset[str]:
        """What ``model = name`` in a filter matches: the name, and when a served model has it
        as its name or alias, that model's name (invocations record the name)."""
        try:
            described = self._models.describe(name)
        except NotFoundError:
            return frozenset({name})
        return frozenset({name, described.info.name})

    # -- helpers -------------------------------------------------------------

    async def _await_outcome(
        self,
        existing: Invocation,
        pending: Invocation,
        image: np.ndarray,
        started: tuple[Detector, asyncio.Future[ModelOutput] | None],
    ) -> Invocation:
        """Another Invoke of the same id and content owns the id: its stored outcome, once there
        (waiting up to ``pending_wait_s``); or, when the owner's lease has passed (it died, or
        its store writes failed), the claim itself, taken over to run the model here (the
        speculative run of ``started``, when it is of the model the id is bound to). A row that
        holds this call's own claim is this call's to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._pending_wait_s
        delay = 0.01
        while existing.state is State.PENDING:
            claim = existing.claim
            # The own-claim rule (as the store's): a row that holds this call's own claim is
            # this call's (a take-over whose answer was lost, completed by Paxos since).
            own = claim is not None and claim.token == cast(Claim, pending.claim).token
            if own or (claim is not None and claim.expired(self._clock(), self._lease)):
                won, existing = await self._take_over(existing, pending, image, started, own=own)
                if won:
                    return existing
                continue
            if loop.time() >= deadline:
                raise InvocationPendingError(
                    f"invocation {quote(existing.id)} is still being processed; retry later"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            # Without the content, which the claim already returned.
            refreshed = await self._store.get(existing.id, with_content=False)
            if refreshed is None:  # expired meanwhile (TTL)
                raise InvocationPendingError(f"invocation {quote(existing.id)} expired; retry")
            existing = dataclasses.replace(refreshed, input=existing.input)
        # The stored content is the caller's, byte for byte (same hash): it may not be written
        # yet when the claim was read, and need not be read back.
        content = pending.input.content
        return dataclasses.replace(
            existing, input=dataclasses.replace(existing.input, content=content), replayed=True
        )

    async def _take_over(
        self,
        existing: Invocation,
        pending: Invocation,
        image: np.ndarray,
        started: tuple[Detector, asyncio.Future[ModelOutput] | None],
        *,
        own: bool,
    ) -> tuple[bool, Invocation]:
        """Take over the expired claim of ``existing`` (or, ``own``, finish the one this call
        holds already) and run the model: ``(True, answer)``; or ``(False, current)`` when
        another call took it over first.

        The id is bound to the model that claimed it first: that one runs (its current
        version, which the outcome records), whatever this call asked for. When this server
        does not serve that model (any more), the claim is taken over all the same and
        finished with a FAILED outcome, "model ... is no longer served": an id bound to a model
        that no server serves would otherwise stay PENDING for good."""
        try:
            lease: ModelLease | None = self._models.acquire(existing.model.name)
        except NotFoundError:
            lease = None
        try:
            content = dataclasses.replace(existing.input, content=pending.input.content)
            if own:  # already this call's claim, with the model it recorded
                successor = dataclasses.replace(existing, input=content)
            else:
                successor = dataclasses.replace(
                    existing,
                    input=content,
                    claim=Claim(token=cast(Claim, pending.claim).token, time=self._clock()),
                    model=lease.detector.info if lease is not None else existing.model,
                )
                current = await self._store.take_over(existing, successor)
                if current is not None:
                    return False, current
            logger.warning(
                "invocation %r: the claim of %s expired without an outcome; taken over",
                existing.id,
                existing.claim.time.isoformat() if existing.claim is not None else "?",
            )
            if lease is None:
                return True, await self._fail_unserved(successor, image, started)
            detector, model_run = started
            reuse = model_run if lease.detector is detector else None
            return True, await self._run_model(successor, image, lease.detector, reuse)
        finally:
            if lease is not None:
                lease.release()

    async def _fail_unserved(
        self,
        owned: Invocation,
        image: np.ndarray,
        started: tuple[Detector, asyncio.Future[ModelOutput] | None],
    ) -> Invocation:
        """Finish a taken-over claim whose model this server does not serve: FAILED."""
        logger.warning(
            "invocation %r is bound to model %r, which this server does not serve: "
            "stored as FAILED",
            owned.id,
            owned.model.name,
        )
        failed = dataclasses.replace(
            owned,
            state=State.FAILED,
            error=f"model {owned.model.name!r} is no longer served",
            complete_time=self._clock(),
        )
        stored = await self._store.complete(failed)
        if stored is None:
            return failed
        return await self._answer_stored(stored, owned, image, started)


def _settle_unit_of_work(work: asyncio.Future[Invocation]) -> None:
    """Its outcome is stored; an error nobody awaits any more (the call was cancelled) is
    logged here rather than as "exception never retrieved"."""
    if work.cancelled():
        return
    error = work.exception()
    if error is not None and not isinstance(error, InferenceError):
        logger.error("an Invoke failed after its call had gone", exc_info=error)
