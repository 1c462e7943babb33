"""Every error Envoy answers itself is our JSON shape in our own words, lenient JSON is refused,
and streaming calls on the public listener are answered at once (issue 18 item 4, issue 21
items 1, 3, 4; docs/security.md).

The upstream is the fake service of ``support.envoy_upstream``, which records every call that
reaches it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.envoy_upstream import (
    calls,
    envoy_upstream_fixtures,
    rest_client,
    running_envoy,
)
from support.http import RestClient, assert_status_json

from devstack.envoy import LocalEnvoy

# Words of the transcoder's own messages that must never reach a client.
INTERNAL_WORDS = ("inference.v1", "type.googleapis", "Could not", "Unable to", "INVALID_ARGUMENT")
MARKER = "SECRETMARKER"


fake, envoy, api = envoy_upstream_fixtures("errors")


def post_raw(api: RestClient, body: bytes):
    return api.call("POST", "/v1/invocations", body, headers={"content-type": "application/json"})


def our_words(body: dict) -> None:
    for word in (*INTERNAL_WORDS, MARKER):
        assert word not in body["message"], body


# --- the transcoder's own refusals ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/invocations", b'{"input": {"content": 5, "id": "SECRETMARKER"}}'),
        ("POST", "/v1/invocations", b'{"input": {"content": "!!SECRETMARKER!!"}}'),
        ("POST", "/v1/invocations", b'{"model": SECRETMARKER}'),
        ("POST", "/v1/invocations", b'{"input": {"content": "AAAA"}, "view": "SECRETMARKER"}'),
        ("GET", "/v1/invocations?SECRETMARKER=1", None),
        ("GET", "/v1/invocations?view=SECRETMARKER", None),
        ("GET", "/v1/invocations/abc?view=SECRETMARKER", None),
    ],
)
def test_the_transcoders_refusals_are_in_our_words(api, fake, method, path, body):
    """Before: "Unable to parse number.\\n{...}", "Could not find field ... in the type
    inference.v1...", with the body's bytes."""
    before = calls(fake)
    headers = {"content-type": "application/json"} if body is not None else None
    reply = api.call(method, path, body, headers=headers)
    message = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)["message"]
    if body is None:  # the query is quoted, to tell which parameter
        assert message.startswith("a query parameter is unknown here or has a bad value: ")
        message = message.replace(path, "")
    our_words({"message": message})
    assert calls(fake) == before


@pytest.mark.parametrize("length", [50, 500])
def test_the_quoted_query_is_cut_at_100_bytes_and_marked(api, fake, length):
    """Issue 21 item 3: the quote of a refused query is at most 100 bytes, and says so when
    cut (before: cut silently, the client could not tell)."""
    path = "/v1/invocations?filler=" + "q" * length
    reply = api.call("GET", path, None)
    message = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)["message"]
    quoted = message.removeprefix("a query parameter is unknown here or has a bad value: ")
    if len(path) > 100:
        assert quoted == path[:100] + "...(cut)"
    else:
        assert quoted == path


# --- strict JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            b'{"input": {"id": "a", "id": "b", "content": "AAAA"}}',
            "duplicate key in the JSON body: input.id",
        ),
        (
            b'{"input": {"content": "AAAA"}, "input": {"content": "BBBB"}}',
            "duplicate key in the JSON body: input",
        ),
        (
            b'{"model": "a", "\\u006dodel": "b", "input": {"content": "AAAA"}}',
            "duplicate key in the JSON body: model",
        ),
        (
            b'{"input": {"content": "AAAA", "metadata": {"k": "1", "k": "2"}}}',
            "duplicate key in the JSON body: input.metadata.k",
        ),
        (b"{'input': {'content': 'AAAA'}}", "double quotes"),
        (b'{"input": {"content": \'AAAA\'}}', "double quotes"),
        (b'{"input": {"content": "AAAA"},}', "not JSON"),
    ],
)
def test_lenient_json_is_refused(api, fake, body, words):
    """Before: accepted, the last duplicate winning (issue 18)."""
    before = calls(fake)
    found = assert_status_json(post_raw(api, body), 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert words in found["message"], found
    assert calls(fake) == before


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"input": {"content": "AAAA"}, "id": "x"}, "id"),
        ({"input": {"contnet": "AAAA"}}, "input.contnet"),
        ({"input": {"content": "AAAA"}, "modle": "face-detector"}, "modle"),
    ],
)
def test_an_unknown_field_is_refused_by_name(api, fake, payload, field):
    """Issue 21 item 4. Before: dropped silently, the call served without it."""
    before = calls(fake)
    found = assert_status_json(
        api.post_json("/v1/invocations", payload), 400, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert found["message"] == f"unknown field in the JSON body: {field}", found
    assert calls(fake) == before


def test_an_error_repeats_at_most_100_bytes_of_the_input(api, fake):
    """Issue 21 item 3: a 10 kB field name comes back cut, and marked so."""
    name = "x" * 10_000
    found = assert_status_json(
        api.post_json("/v1/invocations", {"input": {"content": "AAAA"}, name: 1}),
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert found["message"] == "unknown field in the JSON body: " + "x" * 100 + "...(cut)"


def test_strict_valid_json_is_served(api, fake):
    payload = {
        "input": {"id": "ok-1", "content": "AAAA", "metadata": {"any key": "v", "k2": "\u00e9"}},
        "model": "face-detector",
        "view": "INVOCATION_VIEW_FULL",
    }
    reply = api.post_json("/v1/invocations", payload)
    assert reply.status == 200, reply.body[:300]
    request = fake[0].requests[-1]
    assert request.input.id == "ok-1"
    assert dict(request.input.metadata) == {"any key": "v", "k2": "\u00e9"}
    # The JSON (camelCase) names are fields too, and escapes and nesting are JSON's.
    reply = post_raw(api, b'{ "input" : { "content" : "AAAA", "id" : "a\\"b" } , "model":"m" }')
    assert reply.status == 200, reply.body[:300]
    assert fake[0].requests[-1].input.id == 'a"b'


# --- requests refused before any route --------------------------------------------------------


def raw_http1(envoy: LocalEnvoy, head: bytes) -> tuple[int, dict]:
    """Sends ``head`` (a whole HTTP/1.1 request) and returns the status and the JSON body."""
    with socket.create_connection((envoy.listen_host, envoy.listen_port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    assert b"content-type: application/json" in header.lower(), data[:500]
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"GET /v1/invocations/a%00b HTTP/1.1\r\nHost: x\r\n\r\n", "malformed path"),
        (b"GET /v1/invocations/a#frag HTTP/1.1\r\nHost: x\r\n\r\n", "malformed path"),
        (b"GET /v1/invocations/a HTTP/1.1\r\n\r\n", "missing Host header"),
        (b"QUERY /v1/invocations HTTP/1.1\r\nHost: x\r\n\r\n", "malformed HTTP request"),
    ],
)
def test_requests_refused_before_routing_get_a_json_message(envoy, fake, head, words):
    """Issue 18: before, 400 with an empty message."""
    before = calls(fake)
    status, body = raw_http1(envoy, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert status == 400
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert words in body["message"], body
    assert calls(fake) == before


def test_an_unsupported_transfer_encoding_is_501_json(envoy, fake):
    """Issue 18: before, 501 with {"code": 2, "message": "Not Implemented"}."""
    status, body = raw_http1(
        envoy,
        b"POST /v1/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    assert status == 501
    assert body["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "Transfer-Encoding" in body["message"]


# --- query strings ----------------------------------------------------------------------------


def test_a_plus_in_a_query_parameter_is_a_space(api, fake):
    """Before, the transcoder kept '+' literally: filter=state+%3D+x reached the server as
    'state+=+x'."""
    reply = api.get("/v1/invocations?filter=a+b%2Bc")
    assert reply.status == 200, reply.body[:300]
    assert fake[0].requests[-1].filter == "a b+c"


# --- streams on the public listener (issue 21 item 1) -----------------------------------------

PROMPT_S = 2.0  # before the fix: the stream idle timeout (90 s by default, 300 s here)


def never_ending(message: bytes) -> Iterator[bytes]:
    yield message
    threading.Event().wait(30)


def test_reflection_on_the_public_listener_is_unimplemented_at_once(envoy):
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            for _ in stub.ServerReflectionInfo(iter([request]), timeout=20):
                pass
        assert time.monotonic() - started < PROMPT_S
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/other.v1.Service/Chat",
        "/inference.v1.NoSuchService/Stream",
    ],
)
def test_an_open_bidi_stream_on_the_public_listener_is_answered_at_once(envoy, method):
    """A client that never half-closes (grpcurl's reflection, any bidi call): before, Envoy's
    buffer filter held it until the stream idle timeout."""
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        call = channel.stream_stream(method)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            for _ in call(never_ending(b"\x0a\x00"), timeout=20):
                pass
        assert time.monotonic() - started < PROMPT_S
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_watch_on_the_public_listener_is_answered_at_once(envoy):
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            for _ in stub.Watch(health_pb2.HealthCheckRequest(), timeout=20):
                pass
        assert time.monotonic() - started < PROMPT_S
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- operations on the public listener (issue 21 item 7) --------------------------------------


def test_healthz_is_200_while_a_server_is_healthy(api, fake):
    before = calls(fake)
    deadline = time.monotonic() + 10
    while (reply := api.get("/healthz")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)  # the first health checks of the cluster
    assert reply.status == 200, reply.body[:300]
    assert reply.json() == {"code": 0, "message": "serving", "details": []}
    assert calls(fake) == before


def test_healthz_is_503_json_without_a_healthy_server(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    for proxy in running_envoy(tmp_path, [dead_port]):
        time.sleep(2.5)  # two failed health checks
        body = assert_status_json(
            rest_client(proxy).get("/healthz"), 503, grpc.StatusCode.UNAVAILABLE
        )
        assert body["message"] == "not serving"


def test_the_access_log_shows_the_clients_method_and_path(api, envoy):
    """Before, a REST call was logged as the transcoded POST /inference.v1.../..."""
    assert api.call("DELETE", "/v1/invocations/logged-id-1").status == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = envoy.log_file.read_text()
        if "logged-id-1" in log:
            break
        time.sleep(0.2)
    lines = [line for line in log.splitlines() if "logged-id-1" in line]
    assert lines and '"DELETE /v1/invocations/logged-id-1 HTTP/1.1"' in lines[0], lines
