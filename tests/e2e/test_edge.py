"""The edge on the real stack: the request id Envoy makes is in the servers' log lines, and
1,000 idle streams neither reach the servers nor starve real Invokes.

(Envoy's hostile cases one by one, against a fake upstream with short timeouts:
tests/integration/test_envoy_edge.py.)
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.envoy_upstream import envoy_stats
from support.h2_streams import RawGrpcConnection, grpc_frame, open_idle_streams, pump
from support.http import RestClient

from devstack.stack import LocalStack

INVOKE = "/inference.v1.InferenceService/Invoke"


def server_log_lines(stack: LocalStack, needle: str, timeout_s: float = 5.0) -> list[str]:
    """Lines of the servers' logs that contain ``needle`` (waiting a little for the write)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            line
            for server in stack.servers
            for line in server.log_file.read_text(errors="replace").splitlines()
            if needle in line
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_the_request_id_envoy_sent_is_in_the_servers_log_lines(
    stack: LocalStack,
    api: RestClient,
    channel: grpc.Channel,
    id_prefix: str,
    images_dir: Path,
) -> None:
    content = (images_dir / "face-3.jpg").read_bytes()
    forged = f"{id_prefix}-forged-request-id"
    payload = {
        "input": {"id": f"{id_prefix}-rid-rest", "content": base64.b64encode(content).decode()}
    }
    reply = api.post_json("/v1/invocations", payload, headers={"x-request-id": forged})
    assert reply.status == 200, reply.body[:500]
    request_id = reply.headers["x-request-id"]
    assert request_id != forged
    (line,) = server_log_lines(stack, f"[{request_id}]")
    assert f"{INVOKE} OK " in line, line

    _, call = pb_grpc.InferenceServiceStub(channel).Invoke.with_call(
        pb.InvokeRequest(input=pb.ModelInput(id=f"{id_prefix}-rid-grpc", content=content)),
        metadata=[("x-request-id", forged)],
        timeout=30,
    )
    grpc_request_id = dict(call.initial_metadata())["x-request-id"]
    assert grpc_request_id not in (forged, request_id)
    (line,) = server_log_lines(stack, f"[{grpc_request_id}]")
    assert f"{INVOKE} OK " in line, line

    # An error is logged with its id too.
    reply = api.get(f"/v1/invocations/{id_prefix}-never-stored")
    assert reply.status == 404
    (line,) = server_log_lines(stack, f"[{reply.headers['x-request-id']}]")
    assert "GetInvocation NOT_FOUND" in line, line
    assert not server_log_lines(stack, forged, timeout_s=0)


def test_a_thousand_idle_streams_do_not_starve_real_calls(
    stack: LocalStack, api: RestClient, channel: grpc.Channel, id_prefix: str, images_dir: Path
) -> None:
    """10 connections x 100 unfinished requests (REST and native gRPC Invokes): Envoy holds
    them all without one request to a server, and real Invokes meanwhile take their usual
    time. The test closes the idle connections itself (Envoy would cut them at its request
    timeout, 30 s by default)."""
    content = (images_dir / "face-5.jpg").read_bytes()
    stub = pb_grpc.InferenceServiceStub(channel)

    def invoke_both(suffix: str) -> float:
        started = time.monotonic()
        payload = {
            "input": {"id": f"{id_prefix}-{suffix}", "content": base64.b64encode(content).decode()}
        }
        reply = api.post_json("/v1/invocations", payload, timeout=30)
        assert reply.status == 200, reply.body[:500]
        request = pb.InvokeRequest(
            input=pb.ModelInput(id=f"{id_prefix}-{suffix}-g", content=content)
        )
        assert stub.Invoke(request, timeout=30).invocation.state == pb.Invocation.STATE_SUCCEEDED
        return time.monotonic() - started

    baseline = invoke_both("before-idle")
    clients = open_idle_streams(
        stack.envoy.listen_host,
        stack.envoy.listen_port,
        connections=10,
        streams_per_connection=100,
    )
    try:
        pump(clients, 1.0)
        assert not any(client.closed for client in clients)
        stats = envoy_stats(
            stack.envoy,
            r"^(http\.public\.downstream_rq_active|cluster\.inference_grpc\.upstream_rq_active)$",
        )
        assert stats["http.public.downstream_rq_active"] >= 1000, stats
        assert stats["cluster.inference_grpc.upstream_rq_active"] == 0, stats
        during = [invoke_both(f"during-idle-{index}") for index in range(3)]
        pump(clients, 0.1)
        assert not any(o.finished for client in clients for o in client.outcomes.values())
    finally:
        for client in clients:
            client.close()
    # Generous: a loaded 2-core machine; the point is "served", not a benchmark.
    assert max(during) < max(5 * baseline, 10.0), (baseline, during)


# --- issue 18: poisoned headers, incomplete messages, path fields overridden by the query ----

GET_MODEL_PATH = "/inference.v1.InferenceService/GetModel"
GET_INVOCATION_PATH = "/inference.v1.InferenceService/GetInvocation"


def _get_model_frame() -> bytes:
    return grpc_frame(pb.GetModelRequest(name="face-detector").SerializeToString())


def test_a_bad_grpc_timeout_from_one_client_never_fails_another_clients_calls(
    stack: LocalStack,
) -> None:
    """The issue's repro: one native call with ``grpc-timeout: abc`` (and ``grpc-encoding: br``)
    through the public port, then other clients' calls with deadlines, at once and for 3 s."""
    envoy = stack.envoy
    with RawGrpcConnection(envoy.listen_host, envoy.listen_port) as attacker:
        replies = [
            attacker.call(GET_MODEL_PATH, _get_model_frame(), [(name, value)])
            for name, value in (("grpc-timeout", "abc"), ("grpc-encoding", "br"))
        ]
    deadline = time.monotonic() + 3
    while True:
        with grpc.insecure_channel(stack.grpc_target) as fresh:
            stub = pb_grpc.InferenceServiceStub(fresh)
            for timeout in (10, 9.999876):
                assert stub.GetModel(pb.GetModelRequest(name="face-detector"), timeout=timeout)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    # The bad calls themselves: refused by Envoy (before issue 18: INTERNAL from the server).
    for reply in replies:
        assert reply.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), reply


def test_a_half_closed_call_without_a_whole_message_is_refused_at_once(
    stack: LocalStack,
) -> None:
    """The issue's repro (a frame announcing 100,000 bytes, 3 sent, end of stream) and no
    message at all: INVALID_ARGUMENT within a second, through Envoy and on a server's port."""
    envoy = stack.envoy
    host, _, port = stack.servers[0].address.rpartition(":")
    for target in ((envoy.listen_host, envoy.listen_port), (host, int(port))):
        for body in (b"\x00\x00\x01\x86\xa0\x0a\x01x", b""):
            with RawGrpcConnection(*target) as client:
                reply = client.call(GET_INVOCATION_PATH, body, wait=10)
            assert reply.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), (
                target,
                reply,
            )
            assert reply.seconds < 1.5, (target, reply)


def test_query_parameters_never_override_the_path(api: RestClient) -> None:
    for path in (
        "/v1/invocations/A?id=B",
        "/v1/invocations/A:render?id=B",
        "/v1/models/face-detector?name=other",
        "/v1/invocations/A?%69d=B",
    ):
        reply = api.get(path)
        assert reply.status == 400, (path, reply.status, reply.body[:300])
        assert reply.json()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    reply = api.call("DELETE", "/v1/invocations/A?id=B")
    assert reply.status == 400, reply.body[:300]
    assert reply.json()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_request_headers_up_to_envoys_limit_are_served_and_over_it_431_json(
    api: RestClient,
) -> None:
    """docs/api.md (Errors): request headers up to 60 KiB (Envoy's limit); over it 431. Before
    issue 18 the server's own 8 KiB limit answered 413 with grpc-core's text (header names and
    sizes)."""
    for size in (9 * 1024, 30 * 1024, 50 * 1024):
        reply = api.get("/v1/models", headers={"x-padding": "p" * size})
        assert reply.status == 200, (size, reply.status, reply.body[:300])
    reply = api.get("/v1/models", headers={"x-padding": "p" * (61 * 1024)})
    assert reply.status == 431, (reply.status, reply.body[:300])
    body = reply.json()
    assert body == {"code": 8, "message": "request headers too large", "details": []}
