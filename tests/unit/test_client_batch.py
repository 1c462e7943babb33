"""The bundled client's retries: UNAVAILABLE and its own DEADLINE_EXCEEDED are retried with the
same id and content, for longer than the server's claim lease (a stub stands in for the server:
what is tested is the client's policy, not the wire)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb

from inference_client import batch
from inference_client.files import InputFile
from inference_service.settings import Settings


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")


class ScriptedStub:
    """GetInvocation: NOT_FOUND; Invoke: the scripted errors, then SUCCEEDED."""

    def __init__(self, errors: list[grpc.StatusCode]) -> None:
        self.errors = list(errors)
        self.requests: list[pb.InvokeRequest] = []

    async def GetInvocation(self, request, **_: object):
        raise rpc_error(grpc.StatusCode.NOT_FOUND)

    async def Invoke(self, request, **_: object):
        self.requests.append(request)
        if self.errors:
            raise rpc_error(self.errors.pop(0))
        invocation = pb.Invocation(id=request.input.id, state=pb.Invocation.STATE_SUCCEEDED)
        return pb.InvokeResponse(invocation=invocation)


@pytest.fixture
def item(tmp_path: Path) -> InputFile:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff pixels")
    return InputFile(path=path, relative="a.jpg")


def test_the_retry_budget_outlasts_the_claim_lease() -> None:
    settings = Settings()
    budget = batch.RETRY_BUDGET_S
    assert budget > settings.claim_lease_s + settings.pending_wait_s + 60.0  # + a call


async def test_its_own_deadline_exceeded_and_unavailable_are_retried_with_the_same_id(
    item: InputFile,
) -> None:
    stub = ScriptedStub([grpc.StatusCode.DEADLINE_EXCEEDED] * 3 + [grpc.StatusCode.UNAVAILABLE])
    outcome = await batch.invoke_one(
        stub, item, "a.jpg", 1.0, retry_budget_s=5.0, first_backoff_s=0.01
    )
    assert outcome.ok, outcome
    assert len(stub.requests) == 5
    assert {r.input.id for r in stub.requests} == {"a.jpg"}
    assert {r.input.content for r in stub.requests} == {item.path.read_bytes()}


async def test_other_errors_are_not_retried(item: InputFile) -> None:
    stub = ScriptedStub([grpc.StatusCode.ALREADY_EXISTS])
    outcome = await batch.invoke_one(stub, item, "a.jpg", 1.0, first_backoff_s=0.01)
    assert outcome.error.startswith("ALREADY_EXISTS")
    assert len(stub.requests) == 1


async def test_it_gives_up_when_the_budget_is_spent(item: InputFile) -> None:
    stub = ScriptedStub([grpc.StatusCode.UNAVAILABLE] * 1000)
    outcome = await batch.invoke_one(
        stub, item, "a.jpg", 1.0, retry_budget_s=0.2, first_backoff_s=0.02
    )
    assert outcome.error.startswith("UNAVAILABLE")
    assert 2 <= len(stub.requests) < 20
