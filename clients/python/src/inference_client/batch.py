"""Invoke the service on many files at once, resumably.

For each file: a BASIC read of its id first; an invocation stored from the same content (same
sha256) and finished is taken as it is, without uploading the file again (resume). Otherwise
Invoke, which stores and runs the model (or returns what a concurrent or earlier Invoke of the
same content stored). UNAVAILABLE and DEADLINE_EXCEEDED (this client's own deadline, or a
proxy's) are retried with the same id and content, as the API allows, with backoff, for up to
``retry_budget_s`` (``RETRY_BUDGET_S``): longer than the server's claim lease (60 s by
default) plus its pending wait, so that an id whose server died (or stalled) while holding its
claim is taken over by a retry and finished, as docs/api.md promises a retrying client. At most
``concurrency`` files are read and in flight at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_client.files import InputFile, input_id

RETRY_BUDGET_S = 150.0
"""How long one file's Invoke is retried: more than the server's claim lease (60 s by default,
``INFERENCE_CLAIM_LEASE_S``) plus its pending wait (5 s) plus a call's deadline."""
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Safe to retry with the same id and content: the server stores one result per id."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one file."""

    file: InputFile
    id: str
    state: str = ""
    """``SUCCEEDED``, ``FAILED`` or ``PENDING`` when the service answered; empty on error."""
    faces: int | None = None
    resumed: bool = False
    """Already stored from the same content: nothing was sent but a read."""
    error: str = ""
    """``CODE: message`` of a failed call, or why a stored invocation failed."""

    @property
    def ok(self) -> bool:
        return not self.error and self.state == "SUCCEEDED"


def _state(invocation: pb.Invocation) -> str:
    return pb.Invocation.State.Name(invocation.state).removeprefix("STATE_")


def _outcome(item: InputFile, invocation: pb.Invocation, *, resumed: bool) -> Outcome:
    state = _state(invocation)
    return Outcome(
        file=item,
        id=invocation.id,
        state=state,
        faces=len(invocation.output.detections) if state == "SUCCEEDED" else None,
        resumed=resumed,
        error=f"the model failed: {invocation.error}" if state == "FAILED" else "",
    )


def _error(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or ''}".strip()


async def invoke_one(
    stub: pb_grpc.InferenceServiceStub,
    item: InputFile,
    invocation_id: str,
    deadline_s: float,
    *,
    retry_budget_s: float = RETRY_BUDGET_S,
    first_backoff_s: float = FIRST_BACKOFF_S,
    model: str = "",
    metadata: Sequence[tuple[str, str]] = (),
) -> Outcome:
    try:
        content = await asyncio.to_thread(item.path.read_bytes)
    except OSError as exc:
        return Outcome(file=item, id=invocation_id, error=f"cannot read: {exc.strerror or exc}")
    sha256 = hashlib.sha256(content).hexdigest()
    try:
        stored = await stub.GetInvocation(
            pb.GetInvocationRequest(id=invocation_id, view=pb.INVOCATION_VIEW_BASIC),
            timeout=deadline_s,
            metadata=metadata,
        )
        invocation = stored.invocation
        if invocation.content_sha256 != sha256:
            return Outcome(
                file=item,
                id=invocation_id,
                error="ALREADY_EXISTS: the id is stored with different content",
            )
        if invocation.state in (pb.Invocation.STATE_SUCCEEDED, pb.Invocation.STATE_FAILED):
            return _outcome(item, invocation, resumed=True)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            return Outcome(file=item, id=invocation_id, error=_error(error))
    request = pb.InvokeRequest(
        input=pb.ModelInput(id=invocation_id, content=content, metadata={"path": item.relative}),
        model=model,
    )
    loop = asyncio.get_running_loop()
    give_up = loop.time() + retry_budget_s
    delay = first_backoff_s
    while True:
        try:
            response = await stub.Invoke(request, timeout=deadline_s, metadata=metadata)
            return _outcome(item, response.invocation, resumed=False)
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRIED_CODES or loop.time() + delay > give_up:
                return Outcome(file=item, id=invocation_id, error=_error(error))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter)
        delay = min(delay * 2, MAX_BACKOFF_S)


async def invoke_all(
    channel: grpc.aio.Channel,
    files: Sequence[InputFile],
    *,
    id_prefix: str = "",
    concurrency: int = 4,
    deadline_s: float = 60.0,
    retry_budget_s: float = RETRY_BUDGET_S,
    model: str = "",
    metadata: Sequence[tuple[str, str]] = (),
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Outcomes in the order of ``files``; ``on_done`` is called as each finishes."""
    stub = pb_grpc.InferenceServiceStub(channel)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def run(item: InputFile) -> Outcome:
        async with gate:
            outcome = await invoke_one(
                stub,
                item,
                input_id(item.relative, id_prefix),
                deadline_s,
                retry_budget_s=retry_budget_s,
                model=model,
                metadata=metadata,
            )
        on_done(outcome)
        return outcome

    return list(await asyncio.gather(*(run(item) for item in files)))
