"""envoy/envoy.yaml run by the real Envoy: validation, REST/JSON transcoding, gRPC pass-through.

The upstream is a small fake gRPC server with canned answers, so that these tests pin down
what Envoy does (routes, transcoding, status mapping, JSON errors), not what the service does.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.envoy_upstream import (
    DEFAULT_LIMITS,
    ERROR_PREFIX,
    LARGEST_PREFIX,
    REPO,
    REST_BODY_LIMIT,
    MiB,
    content_of,
    envoy_upstream_fixtures,
    largest_metadata,
    make_envoy,
    rest_client,
    running_envoy,
)
from support.http import RestClient, assert_status_json

from devstack.envoy import LocalEnvoy
from devstack.process import free_port
from inference_service.edge.config import EnvoyError, render_config
from inference_service.limits import RequestLimits

fake, envoy, api = envoy_upstream_fixtures("envoy")


@pytest.fixture(scope="module")
def envoy_without_upstream(tmp_path_factory) -> Iterator[LocalEnvoy]:
    """An Envoy whose only upstream port has nothing listening."""
    yield from running_envoy(tmp_path_factory.mktemp("envoy-down"), [free_port()])


@pytest.fixture(scope="module")
def api_without_upstream(envoy_without_upstream) -> RestClient:
    return rest_client(envoy_without_upstream)


def test_rendered_config_passes_envoy_validation(tmp_path):
    proxy = make_envoy(tmp_path, [50051, 50052])
    output = proxy.validate()
    assert "OK" in output
    assert "Deprecated" not in output, output
    config = proxy.config_path.read_text()
    # Every placeholder is filled (the console's inlined JavaScript has ${...} of its own).
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", proxy.template.read_text()))
    assert "CONSOLE_ROUTES" in placeholders
    assert not [name for name in placeholders if f"${{{name}}}" in config]
    assert '"port_value": 50052' in config


def test_default_render_is_plain_http_without_auth_with_the_documented_limits():
    """The one-command local stack: no TLS, no authentication, health and reflection on the
    internal listener only; the timeouts and limits of docs/operations.md's "Envoy" section."""
    template = (REPO / "envoy" / "envoy.yaml").read_text()
    config = render_config(template, descriptor=Path("d.binpb"))
    assert "transport_socket" not in config
    assert "envoy.filters.http.jwt_authn" not in config
    assert "envoy.filters.http.rbac" not in config
    assert "grpc\\.(health" not in config
    for line in (
        "request_headers_timeout: 10s",
        "request_timeout: 30s",
        "stream_idle_timeout: 90s",
        "idle_timeout: 300s",
        "route: { cluster: inference_grpc, timeout: 60s }",
        "route: { cluster: inference_grpc, timeout: 30s }",
        "max_concurrent_streams: 100",
        "max_heap_size_bytes: 1073741824",
        "max_active_downstream_connections: 10000",
        "max_requests: 1024",
        "use_remote_address: true",
        "preserve_external_request_id: false",
        "always_set_request_id_in_response: true",
        "suppress_envoy_headers: true",
        "address: 127.0.0.1, port_value: 8081",
    ):
        assert line in config, line


def test_render_refuses_values_that_would_break_the_yaml():
    template = (REPO / "envoy" / "envoy.yaml").read_text()
    with pytest.raises(EnvoyError):
        render_config(template, descriptor=Path("d.binpb"), listen_host="0.0.0.0\nadmin: {}")
    with pytest.raises(EnvoyError):
        render_config(template, descriptor=Path("d.binpb"), upstreams=[("server\n", 50051)])
    with pytest.raises(EnvoyError):
        render_config(template, descriptor=Path("d.binpb"), upstreams=[])
    with pytest.raises(EnvoyError):
        render_config(template, descriptor=Path("d.binpb"), admin_port=70000)


def test_rest_invoke_is_transcoded_with_proto_names_and_defaults(api, fake):
    content = b"\x89PNG fake image bytes"
    reply = api.post_json(
        "/v1/invocations",
        {"input": {"id": "img-1", "content": base64.b64encode(content).decode(), "metadata": {}}},
    )
    assert reply.status == 200, reply.body
    invocation = reply.json()["invocation"]
    assert invocation["id"] == "img-1"
    assert invocation["state"] == "STATE_SUCCEEDED"
    assert base64.b64decode(invocation["input"]["content"]) == content
    # Proto field names, and primitive fields printed even at their default value.
    assert invocation["model_version"] == ""
    assert invocation["content_sha256"] == ""
    assert invocation["error"] == ""
    assert invocation["output"]["image_width"] == 64
    assert invocation["output"]["image_height"] == 0
    assert invocation["output"]["detections"][0]["box"]["x_min"] == 1.5
    received = fake[0].requests[-1]
    assert isinstance(received, pb.InvokeRequest)
    assert received.input.content == content


def test_rest_get_invocation_maps_path_and_query(api, fake):
    reply = api.get("/v1/invocations/img-1?view=INVOCATION_VIEW_BASIC")
    assert reply.status == 200, reply.body
    assert reply.json()["invocation"]["id"] == "img-1"
    received = fake[0].requests[-1]
    assert isinstance(received, pb.GetInvocationRequest)
    assert (received.id, received.view) == ("img-1", pb.INVOCATION_VIEW_BASIC)


def test_unknown_query_parameter_is_400_json(api):
    reply = api.get("/v1/invocations/img-1?colour=blue")
    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)


def test_bad_enum_in_query_is_400_json(api):
    reply = api.get("/v1/invocations/img-1?view=EVERYTHING")
    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)


def test_rest_list_invocations_maps_the_query(api, fake):
    reply = api.get(
        "/v1/invocations?page_size=7&page_token=abc&filter=state%20%3D%20FAILED"
        "&view=INVOCATION_VIEW_FULL"
    )
    assert reply.status == 200, reply.body
    assert reply.json()["invocations"][0]["id"] == "listed"
    assert reply.json()["next_page_token"] == "next"
    received = fake[0].requests[-1]
    assert isinstance(received, pb.ListInvocationsRequest)
    assert (received.page_size, received.page_token, received.filter, received.view) == (
        7,
        "abc",
        "state = FAILED",
        pb.INVOCATION_VIEW_FULL,
    )


def test_rest_delete_invocation_maps_path_and_query(api, fake):
    reply = api.call("DELETE", "/v1/invocations/img-9?allow_missing=true", b"")
    assert reply.status == 200, reply.body
    assert reply.json() == {}
    received = fake[0].requests[-1]
    assert isinstance(received, pb.DeleteInvocationRequest)
    assert (received.id, received.allow_missing) == ("img-9", True)
    missing = api.call("DELETE", "/v1/invocations/missing", b"")
    assert_status_json(missing, 404, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_other_methods_on_invocations_are_405_json(api, method):
    reply = api.call(method, "/v1/invocations/img-1", b"{}")
    assert_status_json(reply, 405, grpc.StatusCode.UNIMPLEMENTED)
    assert reply.headers["allow"] == "DELETE, GET"


@pytest.mark.parametrize("path", ["/v2/invocations", "/", "/ready", "/stats", "/v1/invocation"])
def test_unknown_path_is_404_json(api, path):
    # /ready and /stats are admin paths: the listener never leads to the admin interface.
    reply = api.get(path)
    assert_status_json(reply, 404, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize(
    "body",
    [b'{"input": ', b"not json", b'{"input": {"content": "not base64!"}}', b'{"input": 7}'],
)
def test_malformed_json_is_400_json(api, body):
    reply = api.call("POST", "/v1/invocations", body)
    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize(
    ("code", "http_status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_grpc_errors_map_to_http_status_with_json_status(api, code, http_status):
    reply = api.post_json(
        "/v1/invocations", {"input": {"id": f"{ERROR_PREFIX}{code.name}", "content": "AA=="}}
    )
    body = assert_status_json(reply, http_status, code)
    assert body["message"] == f"canned {code.name}"


def test_get_unknown_id_is_404_json(api):
    body = assert_status_json(api.get("/v1/invocations/missing"), 404, grpc.StatusCode.NOT_FOUND)
    assert body["message"] == "no invocation with id missing"


def test_rest_body_over_the_limit_is_413_json_before_the_server(api, fake):
    calls = len(fake[0].requests)
    content = base64.b64encode(b"\0" * (REST_BODY_LIMIT * 3 // 4 + 1024)).decode()
    reply = api.post_json("/v1/invocations", {"input": {"id": "too-big", "content": content}})
    assert_status_json(reply, 413, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert len(fake[0].requests) == calls


def test_rest_body_of_8_mib_content_reaches_the_server(api, fake):
    content = b"\1" * (8 * 1024 * 1024)
    payload = {"input": {"id": "eight-mib", "content": base64.b64encode(content).decode()}}
    reply = api.post_json("/v1/invocations", payload)
    assert reply.status == 200, reply.body[:500]
    assert fake[0].requests[-1].input.content == content


def test_the_largest_invocation_is_transcoded_both_ways(api, fake):
    """An Invoke of the largest input (8 MiB of content, the most and largest metadata, escaped
    to six bytes a byte) and the invocation echoed back: the largest request and response."""
    content = content_of(DEFAULT_LIMITS.max_content_bytes)
    metadata = largest_metadata(DEFAULT_LIMITS.max_metadata_entries)
    payload = {
        "input": {
            "id": "largest",
            "content": base64.b64encode(content).decode(),
            "metadata": metadata,
        }
    }
    body = json.dumps(payload).encode()
    assert len(body) > 11 * MiB
    reply = api.call("POST", "/v1/invocations", body)
    assert reply.status == 200, reply.body[:500]
    assert len(reply.body) > 11 * MiB
    model_input = reply.json()["invocation"]["input"]
    assert base64.b64decode(model_input["content"]) == content
    assert model_input["metadata"] == metadata
    assert fake[0].requests[-1].input.content == content


@pytest.mark.parametrize("size", [MiB + 1, 8 * MiB], ids=["1MiB+1", "8MiB"])
def test_rest_get_of_a_large_invocation_is_transcoded(api, size):
    """Over 1 MiB a GET response (no request body to raise the stream's buffer) used to fail
    with 500: the transcoder's response limit is now set, from the content limit."""
    reply = api.get(f"/v1/invocations/{LARGEST_PREFIX}{size}")
    assert reply.status == 200, reply.body[:500]
    invocation = reply.json()["invocation"]
    assert base64.b64decode(invocation["input"]["content"]) == content_of(size)
    assert invocation["input"]["metadata"] == largest_metadata(DEFAULT_LIMITS.max_metadata_entries)


def test_rest_response_over_the_limit_is_500_json(api):
    """A response larger than the content limit allows (a server with a larger limit than the
    one Envoy was rendered for) cannot be transcoded: 500, INTERNAL, as JSON."""
    reply = api.get(f"/v1/invocations/{LARGEST_PREFIX}{DEFAULT_LIMITS.rest_response_body_bytes}")
    assert_status_json(reply, 500, grpc.StatusCode.INTERNAL)


def test_raising_the_content_limit_raises_envoys_request_and_response_limits(api, fake, tmp_path):
    limits = RequestLimits(max_content_bytes=16 * MiB)
    content = content_of(limits.max_content_bytes)
    payload = {"input": {"id": "sixteen-mib", "content": base64.b64encode(content).decode()}}
    largest = f"/v1/invocations/{LARGEST_PREFIX}{limits.max_content_bytes}"
    # Over what the Envoy of the default limits takes: a larger body (413, see above) and a
    # larger response (500).
    assert len(json.dumps(payload)) > REST_BODY_LIMIT
    assert_status_json(api.get(largest), 500, grpc.StatusCode.INTERNAL)

    proxy = make_envoy(tmp_path, [fake[1]], limits)
    proxy.start(timeout=60)
    try:
        raised = rest_client(proxy)
        reply = raised.post_json("/v1/invocations", payload)
        assert reply.status == 200, reply.body[:500]
        assert base64.b64decode(reply.json()["invocation"]["input"]["content"]) == content
        reply = raised.get(largest)
        assert reply.status == 200, reply.body[:500]
        assert base64.b64decode(reply.json()["invocation"]["input"]["content"]) == content
    finally:
        proxy.stop()


def test_upstream_down_is_503_json(api_without_upstream):
    reply = api_without_upstream.post_json(
        "/v1/invocations", {"input": {"id": "a", "content": "AA=="}}
    )
    assert_status_json(reply, 503, grpc.StatusCode.UNAVAILABLE)
    reply = api_without_upstream.get("/v1/invocations/a")
    assert_status_json(reply, 503, grpc.StatusCode.UNAVAILABLE)


def test_native_grpc_passes_through(envoy, fake):
    limits = [
        ("grpc.max_send_message_length", 32 * 1024 * 1024),
        ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ]
    with grpc.insecure_channel(envoy.grpc_target, options=limits) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.InvokeRequest(input=pb.ModelInput(id="grpc-1", content=b"\1\2\3"))
        invocation = stub.Invoke(request, timeout=10).invocation
        assert (invocation.id, invocation.input.content) == ("grpc-1", b"\1\2\3")

        # Native gRPC requests are held whole too, up to the same limit (the gRPC framing and
        # the other fields are a few bytes): under it they reach the server (which has its own,
        # smaller limit), over it Envoy answers RESOURCE_EXHAUSTED itself.
        size = REST_BODY_LIMIT - 64
        big = pb.InvokeRequest(input=pb.ModelInput(id="grpc-big", content=b"\1" * size))
        assert len(stub.Invoke(big, timeout=30).invocation.input.content) == size
        calls = len(fake[0].requests)
        too_big = pb.InvokeRequest(
            input=pb.ModelInput(id="grpc-too-big", content=b"\1" * REST_BODY_LIMIT)
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.Invoke(too_big, timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.value.details() == "Payload Too Large"
        assert len(fake[0].requests) == calls

        with pytest.raises(grpc.RpcError) as error:
            stub.Invoke(
                pb.InvokeRequest(input=pb.ModelInput(id="error-RESOURCE_EXHAUSTED")), timeout=10
            )
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.value.details() == "canned RESOURCE_EXHAUSTED"

        with pytest.raises(grpc.RpcError) as error:
            stub.GetInvocation(pb.GetInvocationRequest(id="missing"), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_calls_keep_their_deadline(envoy, fake):
    """The route timeouts (tests/integration/test_envoy_edge.py) are Envoy's own; a client's
    shorter deadline reaches the server as it is."""
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="deadline")), timeout=5)
        assert 0 < fake[0].time_remaining[-1] < 6  # grpc-timeout is rounded up
        assert not any(key.startswith("x-envoy-") for key in fake[0].metadata[-1])


def test_grpc_health_and_reflection_pass_through_the_internal_listener(envoy):
    with grpc.insecure_channel(envoy.internal_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        reflection_stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        (response,) = list(reflection_stub.ServerReflectionInfo(requests, timeout=10))
        names = {service.name for service in response.list_services_response.service}
        assert "inference.v1.InferenceService" in names
        assert "grpc.health.v1.Health" in names


def test_grpc_through_envoy_without_upstream_is_unavailable_in_plain_text(envoy_without_upstream):
    with (
        grpc.insecure_channel(envoy_without_upstream.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as error,
    ):
        pb_grpc.InferenceServiceStub(channel).GetInvocation(
            pb.GetInvocationRequest(id="a"), timeout=10
        )
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not error.value.details().startswith("{"), error.value.details()


def test_stop_ends_the_process(fake, tmp_path):
    proxy = make_envoy(tmp_path, [fake[1]])
    proxy.start(timeout=60)
    pid = proxy.pid
    assert pid is not None and proxy.running_pid() == pid
    proxy.stop()
    assert proxy.running_pid() is None
    assert not proxy.pid_file.exists()
    assert not proxy.ready()


@pytest.mark.parametrize(
    ("path", "content_type", "starts"),
    [
        ("/console/", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/console/index.html", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/console/app.js", "text/javascript; charset=utf-8", b"// The console"),
        ("/console/api.js", "text/javascript; charset=utf-8", b"// The REST API"),
        ("/console/console.css", "text/css; charset=utf-8", b":root"),
    ],
)
def test_the_console_is_served_as_its_files_are(api, path, content_type, starts):
    reply = api.get(path)
    assert reply.status == 200
    assert reply.headers["content-type"] == content_type
    name = "index.html" if path.endswith("/") else path.rsplit("/", 1)[1]
    assert reply.body == (REPO / "console" / name).read_bytes()
    assert reply.body.startswith(starts)
    assert "script-src 'self'" in reply.headers["content-security-policy"]
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_console_redirects_and_unknown_console_files_are_404_json(api):
    reply = api.get("/console")
    assert reply.status == 301 and reply.headers["location"].endswith("/console/")
    assert_status_json(api.get("/console/nope.js"), 404, grpc.StatusCode.NOT_FOUND)
    assert_status_json(api.call("POST", "/console/", b"{}"), 404, grpc.StatusCode.NOT_FOUND)
