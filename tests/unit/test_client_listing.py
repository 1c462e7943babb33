"""How the client follows ``ListInvocations`` pages and deletes ids
(``inference_client.listing``), against a scripted stub: the paging and retry logic
only; tests/e2e/test_client_cli.py runs it against the real stack."""

from __future__ import annotations

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb

from inference_client.listing import RETRIES, delete_all, list_pages


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class ScriptedStub:
    """Answers each call with the next scripted page or raises the next scripted error."""

    def __init__(self, *answers: pb.ListInvocationsResponse | Failure) -> None:
        self.answers = list(answers)
        self.requests: list[pb.ListInvocationsRequest] = []
        self.deleted: list[pb.DeleteInvocationRequest] = []

    def ListInvocations(self, request, timeout, metadata=()):
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Failure):
            raise answer
        return answer

    def DeleteInvocation(self, request, timeout, metadata=()):
        self.deleted.append(request)
        if request.id.startswith("missing"):
            raise Failure(grpc.StatusCode.NOT_FOUND, f"no invocation {request.id}")


def page(*ids: str, token: str = "") -> pb.ListInvocationsResponse:
    return pb.ListInvocationsResponse(
        invocations=[pb.Invocation(id=i) for i in ids], next_page_token=token
    )


def test_follows_tokens_until_the_empty_one_keeping_filter_and_size() -> None:
    stub = ScriptedStub(page("a", "b", token="t1"), page(token="t2"), page("c"))
    pages = list(list_pages(stub, filter_text="state = FAILED", page_size=2, sleep=lambda _: None))
    assert [[i.id for i in p.invocations] for p in pages] == [["a", "b"], [], ["c"]]
    assert [r.page_token for r in stub.requests] == ["", "t1", "t2"]
    assert {(r.filter, r.page_size, r.view) for r in stub.requests} == {
        ("state = FAILED", 2, pb.INVOCATION_VIEW_BASIC)
    }


def test_unavailable_asks_for_the_same_page_again() -> None:
    unavailable = Failure(grpc.StatusCode.UNAVAILABLE, "store down")
    stub = ScriptedStub(page("a", token="t1"), unavailable, unavailable, page("b"))
    slept: list[float] = []
    ids = [i.id for p in list_pages(stub, sleep=slept.append) for i in p.invocations]
    assert ids == ["a", "b"]
    assert [r.page_token for r in stub.requests] == ["", "t1", "t1", "t1"]
    assert slept == [0.5, 1.0]


def test_other_errors_and_endless_unavailable_end_the_listing() -> None:
    stub = ScriptedStub(Failure(grpc.StatusCode.INVALID_ARGUMENT, "bad filter"))
    with pytest.raises(grpc.RpcError) as raised:
        list(list_pages(stub, sleep=lambda _: None))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(stub.requests) == 1

    stub = ScriptedStub(*[Failure(grpc.StatusCode.UNAVAILABLE)] * (RETRIES + 1))
    with pytest.raises(grpc.RpcError) as raised:
        list(list_pages(stub, sleep=lambda _: None))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(stub.requests) == RETRIES + 1


def test_delete_all_deletes_each_id_once_and_reports_failures() -> None:
    stub = ScriptedStub()
    outcomes = list(delete_all(stub, ["a", "missing-1", "a", "b"], allow_missing=True))
    assert [(o.id, o.ok) for o in outcomes] == [("a", True), ("missing-1", False), ("b", True)]
    assert outcomes[1].error == "NOT_FOUND: no invocation missing-1"
    assert [r.id for r in stub.deleted] == ["a", "missing-1", "b"]
    assert all(r.allow_missing for r in stub.deleted)
