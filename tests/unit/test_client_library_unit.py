"""``inference_client.Client`` against an in-process gRPC server whose servicer is scripted (the
wire, the channel's service config and the client's own retries are real; the service is not):
ids are chosen by the client and kept across retries, ``UNAVAILABLE`` is retried by the
channel's ``retryPolicy``, the token travels as a bearer header, and a delete is never retried.
Also: the client is its own distribution, and the server's no longer carries the CLI's
dependencies."""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_client import Client
from inference_client.client import RETRIED_METHODS, channel_options, service_config

REPO = Path(__file__).resolve().parents[2]


class ScriptedServicer(pb_grpc.InferenceServiceServicer):
    """Answers UNAVAILABLE ``failures`` times per method, then succeeds; records every call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, object, dict[str, str]]] = []

    def _record(self, name: str, request: object, context: grpc.ServicerContext) -> None:
        self.calls.append((name, request, dict(context.invocation_metadata())))
        if sum(1 for call in self.calls if call[0] == name) <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def Invoke(self, request, context):
        self._record("Invoke", request, context)
        invocation = pb.Invocation(
            id=request.input.id, model=request.model, state=pb.Invocation.STATE_SUCCEEDED
        )
        return pb.InvokeResponse(invocation=invocation)

    def ListInvocations(self, request, context):
        self._record("ListInvocations", request, context)
        if request.page_token == "":
            return pb.ListInvocationsResponse(
                invocations=[pb.Invocation(id="a"), pb.Invocation(id="b")], next_page_token="t"
            )
        return pb.ListInvocationsResponse(invocations=[pb.Invocation(id="c")])

    def DeleteInvocation(self, request, context):
        self._record("DeleteInvocation", request, context)
        return empty_pb2.Empty()


def serve(servicer: ScriptedServicer) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def flaky() -> Iterator[tuple[ScriptedServicer, str]]:
    servicer = ScriptedServicer(failures=2)
    for target in serve(servicer):
        yield servicer, target


def test_invoke_without_an_id_gets_one_uuid_kept_across_retries(flaky):
    servicer, target = flaky
    with Client(target, token="t0k3n", retry_for=0) as client:
        invocation = client.invoke(b"image", model="face-detector-slim", metadata={"k": "v"})
    invokes = [call for call in servicer.calls if call[0] == "Invoke"]
    # Two UNAVAILABLE answers, retried by the channel's retryPolicy (retry_for=0: the client's
    # own loop does not retry), then the answer; every attempt carried the same client id.
    assert len(invokes) == 3
    ids = {call[1].input.id for call in invokes}
    assert ids == {invocation.id}
    assert uuid.UUID(invocation.id).version == 4
    assert invocation.model == "face-detector-slim"
    assert all(call[2]["authorization"] == "Bearer t0k3n" for call in invokes)


def test_an_explicit_id_is_sent_as_it_is(flaky):
    servicer, target = flaky
    with Client(target) as client:
        assert client.invoke(b"image", id="mine-1").id == "mine-1"
    assert "authorization" not in servicer.calls[-1][2]


def test_the_clients_own_loop_outlasts_the_channels_attempts():
    servicer = ScriptedServicer(failures=7)  # more than gRPC's 5 attempts
    slept: list[float] = []
    for target in serve(servicer):
        with Client(target, retry_for=30, sleep=slept.append) as client:
            invocation = client.invoke(b"image", id="x")
    assert invocation.id == "x"
    assert len([call for call in servicer.calls if call[0] == "Invoke"]) == 8
    assert slept  # backed off between the rounds


def test_list_invocations_follows_pages_and_delete_is_not_retried(flaky):
    servicer, target = flaky
    with Client(target, token="t") as client:
        assert [inv.id for inv in client.list_invocations(page_size=2)] == ["a", "b", "c"]
        with pytest.raises(grpc.RpcError) as raised:
            client.delete("a")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len([call for call in servicer.calls if call[0] == "DeleteInvocation"]) == 1


def test_service_config_retries_unavailable_on_the_idempotent_methods_only():
    config = service_config(max_attempts=9)
    (method_config,) = config["methodConfig"]
    methods = {name["method"] for name in method_config["name"]}
    assert methods == set(RETRIED_METHODS)
    assert "DeleteInvocation" not in methods
    service = pb.DESCRIPTOR.services_by_name["InferenceService"]
    assert methods <= {method.name for method in service.methods}
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] == 5  # capped as gRPC caps it
    options = dict(channel_options())
    assert options["grpc.enable_retries"] == 1
    assert json.loads(options["grpc.service_config"]) == service_config()


def test_the_client_is_its_own_distribution_and_the_server_has_no_cli_dependencies():
    client = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())
    server = tomllib.loads((REPO / "server/pyproject.toml").read_text())
    assert client["project"]["scripts"] == {"inference-client": "inference_client.cli:main"}
    assert "inference-client" not in server["project"]["scripts"]
    names = {re.split(r"[<>=\[ ]", dep)[0] for dep in server["project"]["dependencies"]}
    assert not names & {"typer", "rich"}
    client_names = {re.split(r"[<>=\[ ]", dep)[0] for dep in client["project"]["dependencies"]}
    assert {"typer", "rich", "grpcio"} <= client_names
    # The server image copies server/ only: no client code in it.
    dockerfile = (REPO / "server" / "Dockerfile").read_text()
    server_stage = dockerfile.split("AS server\n")[1].split("\nFROM ")[0]
    assert "clients/" not in server_stage
