"""Envoy as an edge proxy, tried with hostile clients (docs/security.md lists these cases).

The upstream is the fake service of ``support.envoy_upstream``, which records every call that
reaches it, so each test can tell whether a hostile request got past Envoy. The Envoy under
test is rendered with short timeouts (a second or two instead of the defaults' tens of
seconds), so that every test ends within seconds; the defaults are checked for what they are.
"""

from __future__ import annotations

import re
import socket
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.envoy_upstream import (
    ERROR_PREFIX,
    SLOW_PREFIX,
    calls,
    envoy_stats,
    envoy_upstream_fixtures,
    rest_client,
    running_envoy,
)
from support.h2_streams import open_idle_streams, pump
from support.http import assert_status_json

from inference_service.edge.config import EnvoySettings

HEADERS_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 2.0
INVOKE_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 2.0
EDGE = EnvoySettings(
    envoy_request_headers_timeout_s=HEADERS_TIMEOUT_S,
    envoy_request_timeout_s=REQUEST_TIMEOUT_S,
    envoy_invoke_timeout_s=INVOKE_TIMEOUT_S,
    envoy_read_timeout_s=READ_TIMEOUT_S,
    envoy_stream_idle_timeout_s=10.0,
)
SLACK_S = 1.5  # how much later than its timeout a cut may come on a busy machine
# Envoy's timers may fire a little before our clock says the time is up (a coarser clock).
EARLY_S = 0.05
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


fake, envoy, api = envoy_upstream_fixtures("edge", settings=EDGE)


def invoke_body(invocation_id: str) -> dict:
    return {"input": {"id": invocation_id, "content": "AA=="}}


# --- what the public listener serves --------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        HEALTH_CHECK,
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/other.v1.Service/Do",
        # Path tricks: dot segments and doubled slashes are normalized before routing; an
        # escaped slash is not decoded (and no gRPC server decodes it either).
        "/inference.v1.InferenceService/../grpc.health.v1.Health/Check",
        "/inference.v1.InferenceService/%2e%2e/grpc.health.v1.Health/Check",
        "//grpc.health.v1.Health/Check",
        "/inference.v1.InferenceService%2F..%2Fgrpc.health.v1.Health/Check",
    ],
)
def test_only_the_api_is_routed_on_the_public_listener(envoy, method):
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        call = channel.unary_unary(method)
        with pytest.raises(grpc.RpcError) as raised:
            call(health_pb2.HealthCheckRequest().SerializeToString(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, raised.value
    assert not raised.value.details().startswith("{"), raised.value.details()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/invocations/abc/more"),
        ("GET", "/v1/invocations/abc/more"),
        ("GET", "/v1/models/abc/more"),
        ("GET", "/grpc.health.v1.Health/Check"),
        ("GET", "/v2/invocations"),
    ],
)
def test_only_the_rest_routes_of_the_api_are_routed(api, fake, method, path):
    before = calls(fake)
    assert_status_json(api.call(method, path), 404, grpc.StatusCode.NOT_FOUND)
    assert calls(fake) == before


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/invocations", "GET, POST"),
        ("PUT", "/v1/invocations", "GET, POST"),
        ("POST", "/v1/invocations/abc", "DELETE, GET"),
        ("PATCH", "/v1/invocations/abc", "DELETE, GET"),
        ("PUT", "/v1/invocations/abc", "DELETE, GET"),
        ("DELETE", "/v1/invocations/abc:render", "GET"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/abc", "GET"),
        ("OPTIONS", "/v1/models/abc", "GET"),
    ],
)
def test_an_undeclared_method_on_a_declared_path_is_405(api, fake, method, path, allowed):
    """Issue 18: before, 404 (or the transcoder's 400) for a path that exists."""
    before = calls(fake)
    reply = api.call(method, path)
    body = assert_status_json(reply, 405, grpc.StatusCode.UNIMPLEMENTED)
    assert reply.headers.get("allow") == allowed
    assert allowed in body["message"]
    assert calls(fake) == before


def test_health_and_reflection_are_served_on_the_internal_listener(envoy):
    with grpc.insecure_channel(envoy.internal_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        (listed,) = list(reflection.ServerReflectionInfo(requests, timeout=10))
        assert "grpc.health.v1.Health" in {s.name for s in listed.list_services_response.service}


def test_health_and_reflection_are_public_only_when_enabled(fake, tmp_path):
    settings = EDGE.model_copy(update={"envoy_public_health_and_reflection": True})
    for proxy in running_envoy(tmp_path, [fake[1]], settings=settings):
        with grpc.insecure_channel(proxy.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            # A stream: neither held whole nor cut by a route timeout.
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            (listed,) = list(reflection.ServerReflectionInfo(requests, timeout=10))
            names = {s.name for s in listed.list_services_response.service}
            assert "inference.v1.InferenceService" in names
            # Anything else stays unrouted.
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary("/other.v1.Service/Do")(b"", timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- headers from clients ---------------------------------------------------------------


def test_client_x_envoy_headers_never_reach_the_server(api, envoy, fake):
    forged = {
        "x-envoy-original-path": "/forged",
        "x-envoy-internal": "true",
        "x-envoy-decorator-operation": "forged",
        "x-envoy-anything": "forged",
    }
    reply = api.post_json("/v1/invocations", invoke_body("x-envoy-rest"), headers=forged)
    assert reply.status == 200, reply.body
    received = fake[0].metadata[-1]
    # Only the transcoder's own, with the true values.
    assert {k: v for k, v in received.items() if k.startswith("x-envoy-")} == {
        "x-envoy-original-path": "/v1/invocations",
        "x-envoy-original-method": "POST",
    }
    assert not any(name.startswith("x-envoy-") for name in reply.headers)

    with grpc.insecure_channel(envoy.grpc_target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        _, call = stub.Invoke.with_call(
            pb.InvokeRequest(input=pb.ModelInput(id="x-envoy-grpc")),
            metadata=list(forged.items()),
            timeout=10,
        )
        assert not any(key.startswith("x-envoy-") for key in fake[0].metadata[-1])
        assert not any(key.startswith("x-envoy-") for key, _ in call.initial_metadata())
        # A forged x-envoy-original-path does not make Envoy answer a gRPC client in JSON.
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/other.v1.Service/Do")(
                b"", metadata=[("x-envoy-original-path", "/v1/x")], timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert not raised.value.details().startswith("{")


def test_client_timeout_and_retry_headers_have_no_effect(api, envoy, fake):
    # x-envoy-upstream-rq-timeout-ms would cut this 1 s call after 100 ms.
    reply = api.post_json(
        "/v1/invocations",
        invoke_body(f"{SLOW_PREFIX}1000"),
        headers={"x-envoy-upstream-rq-timeout-ms": "100"},
    )
    assert reply.status == 200, reply.body

    # x-envoy-retry-on / x-envoy-retry-grpc-on would send a failing call again and again.
    retry_headers = {
        "x-envoy-retry-on": "5xx,retriable-status-codes",
        "x-envoy-retry-grpc-on": "unavailable,internal",
        "x-envoy-max-retries": "5",
        "x-envoy-retriable-status-codes": "503",
    }
    before = calls(fake)
    reply = api.post_json(
        "/v1/invocations", invoke_body(f"{ERROR_PREFIX}UNAVAILABLE"), headers=retry_headers
    )
    assert_status_json(reply, 503, grpc.StatusCode.UNAVAILABLE)
    assert calls(fake) == before + 1
    with grpc.insecure_channel(envoy.grpc_target) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.InferenceServiceStub(channel).Invoke(
            pb.InvokeRequest(input=pb.ModelInput(id=f"{ERROR_PREFIX}UNAVAILABLE")),
            metadata=list(retry_headers.items()),
            timeout=10,
        )
    assert calls(fake) == before + 2


def test_every_request_gets_a_new_request_id_returned_to_the_client(api, envoy, fake):
    reply = api.post_json(
        "/v1/invocations", invoke_body("rid-rest"), headers={"x-request-id": "chosen-by-client"}
    )
    assert reply.status == 200, reply.body
    sent = fake[0].metadata[-1]["x-request-id"]
    assert sent != "chosen-by-client"
    assert reply.headers["x-request-id"] == sent
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        _, call = pb_grpc.InferenceServiceStub(channel).Invoke.with_call(
            pb.InvokeRequest(input=pb.ModelInput(id="rid-grpc")),
            metadata=[("x-request-id", "chosen-by-client")],
            timeout=10,
        )
    sent_grpc = fake[0].metadata[-1]["x-request-id"]
    assert sent_grpc not in ("chosen-by-client", sent)
    assert dict(call.initial_metadata())["x-request-id"] == sent_grpc
    # An error reply carries it too (Envoy's own, here).
    assert api.get("/v1/nothing-here").headers["x-request-id"]


def test_header_names_with_underscores_are_refused(api, fake):
    before = calls(fake)
    reply = api.post_json(
        "/v1/invocations", invoke_body("underscore"), headers={"x_forwarded_user": "admin"}
    )
    assert reply.status == 400
    assert calls(fake) == before


# --- slow clients (slowloris) -------------------------------------------------------------


def trickle(
    sock: socket.socket, data: bytes, interval_s: float, budget_s: float
) -> tuple[float, bytes]:
    """Send ``data`` a byte every ``interval_s`` until Envoy answers or closes the connection,
    or ``budget_s`` passes. Returns (seconds until Envoy answered or closed, what it sent)."""
    sock.settimeout(interval_s)
    started = time.monotonic()
    received = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            chunk = None
        except OSError:
            chunk = b""
        if chunk == b"":
            break
        if chunk:
            received += chunk
            break
        if time.monotonic() - started > budget_s:
            break
    elapsed = time.monotonic() - started
    sock.settimeout(2)
    try:  # the rest of the answer, then the close
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    return elapsed, received


def test_slow_request_headers_are_cut(envoy, fake):
    before = calls(fake)
    headers = (
        b"POST /v1/invocations HTTP/1.1\r\nHost: edge\r\ncontent-type: application/json\r\n"
        + b"x-padding: "
        + b"a" * 200
        + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", envoy.listen_port)) as sock:
        elapsed, answer = trickle(sock, headers, interval_s=0.1, budget_s=HEADERS_TIMEOUT_S * 5)
    assert elapsed < HEADERS_TIMEOUT_S + SLACK_S, (elapsed, answer)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert calls(fake) == before


def test_slow_request_body_is_cut_with_408_json(envoy, fake):
    before = calls(fake)
    body = b'{"input": {"id": "slow-body", "content": "' + b"A" * 400 + b'"}}'
    head = (
        b"POST /v1/invocations HTTP/1.1\r\nHost: edge\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", envoy.listen_port)) as sock:
        sock.sendall(head)
        elapsed, answer = trickle(sock, body, interval_s=0.1, budget_s=REQUEST_TIMEOUT_S * 5)
    assert elapsed < REQUEST_TIMEOUT_S + SLACK_S, (elapsed, answer)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    assert b'"code":4' in rest.replace(b" ", b""), answer
    assert calls(fake) == before


def test_slow_grpc_message_is_cut_before_the_server(envoy, fake):
    before = calls(fake)
    (client,) = open_idle_streams(
        "127.0.0.1", envoy.listen_port, connections=1, streams_per_connection=2
    )
    try:
        started = time.monotonic()
        pump([client], REQUEST_TIMEOUT_S + 5, until_finished=True)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    outcomes = list(client.outcomes.values())
    assert all(outcome.finished for outcome in outcomes), outcomes
    assert elapsed < REQUEST_TIMEOUT_S + SLACK_S
    rest, native = outcomes  # streams alternate: REST, then native gRPC
    assert rest.status == "408", rest
    assert (native.status, native.grpc_status) == ("200", "4"), native  # DEADLINE_EXCEEDED
    assert calls(fake) == before


# --- route timeouts -----------------------------------------------------------------------


def test_route_timeouts_bound_the_wait_for_the_server(api, envoy):
    started = time.monotonic()
    reply = api.post_json("/v1/invocations", invoke_body(f"{SLOW_PREFIX}6000"))
    assert_status_json(reply, 504, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert INVOKE_TIMEOUT_S - EARLY_S <= time.monotonic() - started < INVOKE_TIMEOUT_S + SLACK_S

    started = time.monotonic()
    reply = api.get(f"/v1/invocations/{SLOW_PREFIX}6000")
    assert_status_json(reply, 504, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert READ_TIMEOUT_S - EARLY_S <= time.monotonic() - started < READ_TIMEOUT_S + SLACK_S

    with grpc.insecure_channel(envoy.grpc_target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id=f"{SLOW_PREFIX}6000")))
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert INVOKE_TIMEOUT_S - EARLY_S <= time.monotonic() - started < INVOKE_TIMEOUT_S + SLACK_S
        # A client's shorter deadline applies; a longer one is capped by the route's.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id=f"{SLOW_PREFIX}6000")), timeout=1)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1 + SLACK_S
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetInvocation(pb.GetInvocationRequest(id=f"{SLOW_PREFIX}6000"), timeout=60)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < READ_TIMEOUT_S + SLACK_S


# --- many idle streams --------------------------------------------------------------------


def test_a_thousand_idle_streams_never_reach_a_server_and_are_cut(api, envoy, fake):
    """10 connections of 100 unfinished requests each (REST and native gRPC in turn), and one
    stream more on one of them: Envoy refuses the 101st stream of a connection, holds the
    1,000 others without a single upstream request, still serves real calls meanwhile, and
    cuts every idle one at the request timeout."""
    before = calls(fake)
    clients = open_idle_streams(
        "127.0.0.1", envoy.listen_port, connections=10, streams_per_connection=100
    )
    extra = clients[0].open(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", clients[0].authority),
            (":path", "/v1/invocations"),
            ("content-type", "application/json"),
        ],
        b"{",
    )
    clients[0].flush()
    try:
        pump(clients, 0.5)
        assert all(client.remote_max_streams == 100 for client in clients)
        assert clients[0].outcomes[extra].reset_code == 7  # REFUSED_STREAM
        stats = envoy_stats(
            envoy,
            r"^(http\.public\.downstream_rq_active|cluster\.inference_grpc\.upstream_rq_active)$",
        )
        assert stats["http.public.downstream_rq_active"] >= 1000, stats
        assert stats["cluster.inference_grpc.upstream_rq_active"] == 0, stats
        # Real calls go through meanwhile.
        reply = api.post_json("/v1/invocations", invoke_body("while-idle"), timeout=5)
        assert reply.status == 200, reply.body
        with grpc.insecure_channel(envoy.grpc_target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="while-idle-grpc")), timeout=5)
        assert calls(fake) == before + 2
        pump(clients, REQUEST_TIMEOUT_S + 5, until_finished=True)
    finally:
        for client in clients:
            client.close()
    outcomes = [
        o for c in clients for sid, o in c.outcomes.items() if sid != extra or c is not clients[0]
    ]
    assert len(outcomes) == 1000
    assert all(outcome.finished for outcome in outcomes)
    rest, native = outcomes[0::2], outcomes[1::2]
    assert {o.status for o in rest} == {"408"}
    assert {(o.status, o.grpc_status) for o in native} == {("200", "4")}  # DEADLINE_EXCEEDED
    assert calls(fake) == before + 2


# --- circuit breakers, the overload manager, the connection limit -----------------------------


def test_circuit_breaker_answers_503_json_at_once_when_the_servers_are_busy(fake, tmp_path):
    settings = EDGE.model_copy(
        update={"envoy_upstream_max_requests": 1, "envoy_upstream_max_pending_requests": 1}
    )
    for proxy in running_envoy(tmp_path, [fake[1]], settings=settings):
        api = rest_client(proxy)
        with futures.ThreadPoolExecutor(max_workers=1) as pool:
            busy = pool.submit(api.post_json, "/v1/invocations", invoke_body(f"{SLOW_PREFIX}1500"))
            time.sleep(0.5)  # the slow call holds the only request slot
            started = time.monotonic()
            reply = api.post_json("/v1/invocations", invoke_body("overflow"))
            body = assert_status_json(reply, 503, grpc.StatusCode.UNAVAILABLE)
            assert "overflow" in body["message"], body
            assert time.monotonic() - started < 1.0
            with grpc.insecure_channel(proxy.grpc_target) as channel:
                with pytest.raises(grpc.RpcError) as raised:
                    pb_grpc.InferenceServiceStub(channel).Invoke(
                        pb.InvokeRequest(input=pb.ModelInput(id="overflow-grpc")), timeout=10
                    )
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert busy.result().status == 200
        stats = envoy_stats(proxy, r"^cluster\.inference_grpc\.upstream_rq_\w+_overflow$")
        assert sum(stats.values()) >= 2, stats


def test_overload_manager_refuses_requests_over_the_heap_limit(fake, tmp_path):
    """A heap limit Envoy is already over (1 MiB): every new request gets 503, as JSON through
    REST and UNAVAILABLE through gRPC, and nothing reaches a server."""
    settings = EDGE.model_copy(update={"envoy_max_heap_bytes": 1024 * 1024})
    active = "overload.envoy.overload_actions.stop_accepting_requests.active"
    for proxy in running_envoy(tmp_path, [fake[1]], settings=settings):
        deadline = time.monotonic() + 10  # the heap is measured every 0.25 s
        while envoy_stats(proxy, rf"^{re.escape(active)}$").get(active) != 1:
            assert time.monotonic() < deadline, "the overload action never became active"
            time.sleep(0.1)
        before = calls(fake)
        reply = rest_client(proxy).post_json("/v1/invocations", invoke_body("overloaded"))
        body = assert_status_json(reply, 503, grpc.StatusCode.UNAVAILABLE)
        assert body["message"] == "envoy overloaded", body
        with grpc.insecure_channel(proxy.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                pb_grpc.InferenceServiceStub(channel).Invoke(
                    pb.InvokeRequest(input=pb.ModelInput(id="overloaded-grpc")), timeout=10
                )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert calls(fake) == before


def test_connections_over_the_limit_are_refused_but_the_internal_listener_stays_open(
    fake, tmp_path
):
    settings = EDGE.model_copy(update={"envoy_max_connections": 3})
    for proxy in running_envoy(tmp_path, [fake[1]], settings=settings):
        held = [socket.create_connection(("127.0.0.1", proxy.listen_port)) for _ in range(3)]
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5) as extra:
                extra.sendall(b"GET /v1/invocations/x HTTP/1.1\r\nHost: edge\r\n\r\n")
                try:
                    answer = extra.recv(1024)
                except OSError:
                    answer = b""
            assert answer == b"", answer  # closed without an answer
            with grpc.insecure_channel(proxy.internal_target) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert check.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)
        reply = rest_client(proxy).post_json("/v1/invocations", invoke_body("after-limit"))
        assert reply.status == 200, reply.body
