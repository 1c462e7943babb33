"""Requests Envoy refuses or cleans before they reach a server (issue 18, docs/security.md).

The upstream is the fake service of ``support.envoy_upstream``: a plain ``grpc.server`` with
grpc-core's default HPACK settings, i.e. as open to a poisoned header as the real server was
before issue 18. So these tests hold the edge's own fix, whatever the server does.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support import wire
from support.envoy_upstream import (
    calls,
    envoy_upstream_fixtures,
)
from support.h2_streams import RawGrpcConnection, grpc_frame
from support.http import Reply, assert_status_json

from devstack.envoy import LocalEnvoy

INVALID_ARGUMENT = str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
GET_MESSAGE = grpc_frame(wire.get_invocation_request(id=b"poisoner"))
# How long the other clients are watched after the bad header. Before issue 18 the first of
# their calls failed at once (the poisoned HPACK entry is used by the next header of that
# name), and kept failing until other headers pushed the entry out of the table (about 30 s
# of the traffic; here, with nothing else on the connection, for as long as it stays
# open). So the call at once decides; the ones after it hold that nothing fails later.
WATCH_S = 3.0


fake, envoy, api = envoy_upstream_fixtures("guards")


def other_clients_with_deadlines_are_served(envoy: LocalEnvoy, seconds: float) -> None:
    """Fresh channels call GetInvocation with a deadline (as our CLI does), at once and then
    every 0.5 s for ``seconds``: each must succeed."""
    deadline = time.monotonic() + seconds
    while True:
        with grpc.insecure_channel(envoy.grpc_target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            for timeout in (10, 9.999876, 0.5 * 3600):
                reply = stub.GetInvocation(pb.GetInvocationRequest(id="victim"), timeout=timeout)
                assert reply.invocation.id == "victim"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)


# --- reserved gRPC headers -------------------------------------------------------------------

REFUSED = {
    "timeout-not-a-number": ("grpc-timeout", "abc"),
    "timeout-nine-digits": ("grpc-timeout", "123456789S"),
    "timeout-no-unit": ("grpc-timeout", "10"),
    "timeout-unknown-unit": ("grpc-timeout", "10x"),
    "encoding-unknown": ("grpc-encoding", "br"),
    "encoding-garbage": ("grpc-encoding", "gzip;q=1"),
    "accept-encoding-garbage": ("grpc-accept-encoding", "gzip,,@"),
}


@pytest.mark.parametrize(("name", "value"), REFUSED.values(), ids=REFUSED.keys())
def test_a_malformed_grpc_header_is_refused_and_poisons_nobody(envoy, fake, name, value):
    before = calls(fake)
    with RawGrpcConnection(envoy.listen_host, envoy.listen_port) as attacker:
        reply = attacker.call(wire.GET_INVOCATION, GET_MESSAGE, [(name, value)])
    assert reply.grpc_status == INVALID_ARGUMENT, reply
    assert reply.grpc_message == f"invalid {name} header"
    assert calls(fake) == before  # refused at the edge
    other_clients_with_deadlines_are_served(envoy, WATCH_S)


# Headers grpc-core parses (and refused, poisoning the connection, when malformed) that mean
# nothing in a request to this API: removed at the edge, the call itself goes on.
REMOVED = {
    "grpc-status": "abc",
    "grpc-message": "x",
    "grpc-previous-rpc-attempts": "x",
    "grpc-retry-pushback-ms": "x",
    "grpc-internal-encoding-request": "zz",
    "grpc-trace-bin": "!!",
    "grpc-tags-bin": "!!",
    "x-custom-bin": "!!",
}


@pytest.mark.parametrize(("name", "value"), REMOVED.items(), ids=REMOVED.keys())
def test_other_reserved_headers_are_removed_and_poison_nobody(envoy, fake, name, value):
    with RawGrpcConnection(envoy.listen_host, envoy.listen_port) as attacker:
        reply = attacker.call(wire.GET_INVOCATION, GET_MESSAGE, [(name, value)])
    assert reply.grpc_status == "0", reply
    assert name not in fake[0].metadata[-1]
    other_clients_with_deadlines_are_served(envoy, WATCH_S)


def test_valid_grpc_headers_pass(envoy, fake):
    headers = [
        ("grpc-timeout", "9999876u"),
        ("grpc-encoding", "gzip"),
        ("grpc-accept-encoding", "identity, deflate, gzip"),
    ]
    with RawGrpcConnection(envoy.listen_host, envoy.listen_port) as client:
        reply = client.call(wire.GET_INVOCATION, GET_MESSAGE, headers)
    assert reply.grpc_status == "0", reply
    remaining = fake[0].time_remaining[-1]
    assert remaining is not None and 8 < remaining <= 10


def test_a_malformed_grpc_header_on_a_rest_call_is_400_json(api, fake):
    before = calls(fake)
    reply = api.get("/v1/invocations/abc", headers={"grpc-timeout": "abc"})
    body = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert body["message"] == "invalid grpc-timeout header"
    assert calls(fake) == before


# --- query parameters naming fields the path binds ---------------------------------------------

PATH_FIELD_QUERIES = [
    ("GET", "/v1/invocations/A?id=B"),
    ("GET", "/v1/invocations/A?view=INVOCATION_VIEW_BASIC&id=B"),
    ("GET", "/v1/invocations/A?id"),
    ("GET", "/v1/invocations/A:render?id=B"),
    ("GET", "/v1/models/x?name=y"),
    ("DELETE", "/v1/invocations/A?id=B"),
]


@pytest.mark.parametrize(("method", "path"), PATH_FIELD_QUERIES)
def test_a_query_parameter_naming_a_path_field_is_400(api, fake, method, path):
    before = calls(fake)
    reply = api.call(method, path)
    body = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert "the path sets it" in body["message"]
    assert calls(fake) == before


@pytest.mark.parametrize("query", ["%69d=B", "i%64=B", "ID=B", "id%00=B"])
def test_spellings_of_a_path_field_never_override_the_path(api, fake, query):
    """Whatever the transcoder makes of them, the id read is the path's."""
    before = calls(fake)
    reply = api.get(f"/v1/invocations/A?{query}")
    if reply.status == 200:
        assert reply.json()["invocation"]["id"] == "A"
        assert fake[0].requests[-1].id == "A"
    else:
        assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
        assert calls(fake) == before


def test_other_query_parameters_still_work(api, fake):
    reply = api.get("/v1/invocations/A?view=INVOCATION_VIEW_BASIC")
    assert reply.status == 200, reply.body
    assert fake[0].requests[-1].id == "A"


# --- the Content-Type of a REST body -----------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_body_not_declared_json_is_415_json(api, fake, content_type):
    before = calls(fake)
    body = b'{"input": {"id": "csrf", "content": "AA=="}}'
    if content_type is None:  # support.http always declares JSON: a bare request here
        conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
        try:
            conn.request("POST", "/v1/invocations", body=body)
            response = conn.getresponse()
            reply = Reply(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()
    else:
        reply = api.call("POST", "/v1/invocations", body, headers={"content-type": content_type})
    assert_status_json(reply, 415, grpc.StatusCode.INVALID_ARGUMENT)
    assert calls(fake) == before


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
def test_a_json_body_is_served(api, fake, content_type):
    body = b'{"input": {"id": "json-ok", "content": "AA=="}}'
    reply = api.call("POST", "/v1/invocations", body, headers={"content-type": content_type})
    assert reply.status == 200, reply.body[:300]


# --- native gRPC on REST paths -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/invocations", "/v1/invocations/abc", "/v1/models/x"])
def test_native_grpc_on_a_rest_path_is_unimplemented_in_our_words(envoy, fake, path):
    before = calls(fake)
    with RawGrpcConnection(envoy.listen_host, envoy.listen_port) as client:
        reply = client.call(path, GET_MESSAGE)
    assert reply.grpc_status == str(grpc.StatusCode.UNIMPLEMENTED.value[0]), reply
    assert "no gRPC method at this path" in urllib.parse.unquote(reply.grpc_message or "")
    assert calls(fake) == before
