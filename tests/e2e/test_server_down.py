"""Stopping the stack's gRPC servers: with one left Envoy still serves every call (a draining
server leaves the rotation, and refused connections are retried on the other server); with none,
REST gets 503 and gRPC UNAVAILABLE.

Marked ``stops_servers``: the e2e conftest runs these after every other e2e test, so the stack
need not be restarted.
"""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.http import RestClient, assert_status_json

from devstack.process import port_open
from devstack.server import LocalServer
from devstack.stack import LocalStack


def stop(server: LocalServer) -> None:
    """Stop one server (SIGTERM, drained) and check that it is gone."""
    code = server.stop()
    assert code == 0, f"server {server.address} exited with status {code}"
    assert not port_open(server.host, server.port)


def rest_client(stack: LocalStack) -> RestClient:
    return RestClient(stack.envoy.listen_host, stack.envoy.listen_port)


@pytest.mark.stops_servers
def test_one_server_down_the_others_serve_every_call(
    e2e_stack: LocalStack, id_prefix: str, images_dir: Path
) -> None:
    if len(e2e_stack.servers) < 2:
        pytest.skip("needs a stack of two or more servers")
    stop(e2e_stack.servers[0])
    api = rest_client(e2e_stack)
    content = (images_dir / "face-13.jpg").read_bytes()
    # Enough calls that round-robin picks the stopped server several times.
    for index in range(4):
        invocation_id = f"{id_prefix}-one-down-{index}"
        payload = {"input": {"id": invocation_id, "content": base64.b64encode(content).decode()}}
        created = api.post_json("/v1/invocations", payload)
        assert created.status == 200, created.body[:500]
        read = api.get(f"/v1/invocations/{invocation_id}?view=INVOCATION_VIEW_BASIC")
        assert read.status == 200, read.body[:500]
        assert len(read.json()["invocation"]["output"]["detections"]) == 2
    with grpc.insecure_channel(e2e_stack.grpc_target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        for index in range(4):
            request = pb.GetInvocationRequest(id=f"{id_prefix}-one-down-{index}")
            assert stub.GetInvocation(request, timeout=10).invocation.input.content == content


@pytest.mark.stops_servers
def test_every_server_down_is_503_over_rest_and_unavailable_over_grpc(
    e2e_stack: LocalStack, id_prefix: str
) -> None:
    for server in e2e_stack.servers:
        if server.poll() is None:
            stop(server)
    assert e2e_stack.envoy.ready()
    api = rest_client(e2e_stack)

    reply = api.post_json(
        "/v1/invocations", {"input": {"id": f"{id_prefix}-down", "content": "AA=="}}
    )
    body = assert_status_json(reply, 503, grpc.StatusCode.UNAVAILABLE)
    # Each drained server said NOT_SERVING before it stopped: Envoy knows none is left.
    assert body["message"] == "no healthy upstream", body
    assert_status_json(
        api.get(f"/v1/invocations/{id_prefix}-down"), 503, grpc.StatusCode.UNAVAILABLE
    )

    with (
        grpc.insecure_channel(e2e_stack.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        pb_grpc.InferenceServiceStub(channel).GetInvocation(
            pb.GetInvocationRequest(id=f"{id_prefix}-down"), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not raised.value.details().startswith("{"), raised.value.details()
