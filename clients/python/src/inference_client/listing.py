"""Follow ``ListInvocations`` page by page, and erase invocations by id.

A page is asked for again with the same token when the call fails with ``UNAVAILABLE`` (the
store or every server briefly unreachable): the token names a position in the list, so the
retry neither repeats nor skips an invocation. Any other error ends the listing. An empty
``next_page_token`` is the only end of the list; a page may be empty and still have a next one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

RETRIES = 4
FIRST_BACKOFF_S = 0.5


def _page(
    stub: pb_grpc.InferenceServiceStub,
    request: pb.ListInvocationsRequest,
    deadline_s: float,
    sleep: Callable[[float], None],
    metadata: Sequence[tuple[str, str]] = (),
) -> pb.ListInvocationsResponse:
    backoff = FIRST_BACKOFF_S
    for attempt in range(RETRIES + 1):
        try:
            page: pb.ListInvocationsResponse = stub.ListInvocations(
                request, timeout=deadline_s, metadata=metadata
            )
            return page
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == RETRIES:
                raise
        sleep(backoff)
        backoff *= 2
    raise AssertionError("unreachable")


def list_pages(
    stub: pb_grpc.InferenceServiceStub,
    *,
    filter_text: str = "",
    page_size: int = 0,
    view: pb.InvocationView = pb.INVOCATION_VIEW_BASIC,
    deadline_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    metadata: Sequence[tuple[str, str]] = (),
) -> Iterator[pb.ListInvocationsResponse]:
    """Every page of the listing, first to last (``UNAVAILABLE`` retried with backoff)."""
    token = ""
    while True:
        request = pb.ListInvocationsRequest(
            page_size=page_size, page_token=token, filter=filter_text, view=view
        )
        page = _page(stub, request, deadline_s, sleep, metadata)
        yield page
        token = page.next_page_token
        if not token:
            return


@dataclasses.dataclass(frozen=True)
class Deletion:
    """What became of one id given to ``delete``."""

    id: str
    error: str = ""
    """``CODE: message`` of the failed call; empty when the invocation is erased."""

    @property
    def ok(self) -> bool:
        return not self.error


def delete_all(
    stub: pb_grpc.InferenceServiceStub,
    ids: list[str],
    *,
    allow_missing: bool = False,
    deadline_s: float = 30.0,
    metadata: Sequence[tuple[str, str]] = (),
) -> Iterator[Deletion]:
    """Delete each id once (in the order given, repeats dropped); a failure does not stop the
    others. Not retried: a retry of a delete that did land would answer NOT_FOUND."""
    for invocation_id in dict.fromkeys(ids):
        request = pb.DeleteInvocationRequest(id=invocation_id, allow_missing=allow_missing)
        try:
            stub.DeleteInvocation(request, timeout=deadline_s, metadata=metadata)
        except grpc.RpcError as error:
            yield Deletion(invocation_id, f"{error.code().name}: {error.details()}")
        else:
            yield Deletion(invocation_id)
