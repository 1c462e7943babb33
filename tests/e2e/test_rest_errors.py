"""The REST error table on the real stack: HTTP status and google.rpc.Status-shaped JSON.

Every reply is also checked for leaked grpc-* headers (``support.http.request``).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.http import RestClient, assert_status_json

from inference_service.limits import RequestLimits

MAX_CONTENT = RequestLimits().max_content_bytes  # the server's default content limit
# Envoy's buffer filter cap (envoy.yaml), derived from that limit: about 12.1 MiB.
REST_BODY_LIMIT = RequestLimits().rest_request_body_bytes
JPEG_MAGIC = b"\xff\xd8\xff"


def invoke_body(invocation_id: str, content: bytes) -> dict[str, Any]:
    return {
        "input": {"id": invocation_id, "content": base64.b64encode(content).decode()},
        "view": "INVOCATION_VIEW_FULL",
    }


def assert_not_stored(api: RestClient, invocation_id: str) -> None:
    body = assert_status_json(
        api.get(f"/v1/invocations/{invocation_id}"), 404, grpc.StatusCode.NOT_FOUND
    )
    assert invocation_id in body["message"], body


def test_undecodable_image_is_400_and_not_stored(api: RestClient, id_prefix: str) -> None:
    invocation_id = f"{id_prefix}-not-an-image"
    reply = api.post_json("/v1/invocations", invoke_body(invocation_id, b"this is not an image"))
    body = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert body["message"] == "input.content is not a decodable image"
    assert_not_stored(api, invocation_id)


def test_content_that_is_not_base64_is_400_from_the_transcoder(
    api: RestClient, id_prefix: str
) -> None:
    invocation_id = f"{id_prefix}-not-base64"
    reply = api.post_json("/v1/invocations", {"input": {"id": invocation_id, "content": "no!"}})
    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert_not_stored(api, invocation_id)


@pytest.mark.parametrize(
    ("path", "shown_id"),
    [("/v1/invocations/bad%20id", "bad id"), ("/v1/invocations/a%2Fb", "a/b")],
    ids=["space", "slash"],
)
def test_get_with_malformed_id_is_400(api: RestClient, path: str, shown_id: str) -> None:
    body = assert_status_json(api.get(path), 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert f"id {shown_id!r} is invalid" in body["message"], body


def test_invoke_with_malformed_id_is_400(api: RestClient) -> None:
    reply = api.post_json("/v1/invocations", invoke_body("a/b", JPEG_MAGIC))
    body = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert "id 'a/b' is invalid" in body["message"], body


@pytest.mark.parametrize(
    "body",
    [b'{"input": ', b"not json", b'{"input": {"id": "x", "content": "AA=="}, "colour": 1}'],
    ids=["truncated", "not-json", "unknown-field"],
)
def test_malformed_json_is_400(api: RestClient, body: bytes) -> None:
    reply = api.call("POST", "/v1/invocations", body)
    message = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)["message"]
    assert message, "an empty message explains nothing"


def test_unknown_query_parameter_is_400(api: RestClient, id_prefix: str) -> None:
    reply = api.get(f"/v1/invocations/{id_prefix}-any?colour=blue")
    body = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert "colour" in body["message"], body


def test_unknown_id_is_404(api: RestClient, id_prefix: str) -> None:
    body = assert_status_json(
        api.get(f"/v1/invocations/{id_prefix}-never-stored"), 404, grpc.StatusCode.NOT_FOUND
    )
    assert body["message"] == f"invocation '{id_prefix}-never-stored' not found"


def test_unknown_path_is_404(api: RestClient) -> None:
    assert_status_json(api.call("GET", "/v2/invocations/x"), 404, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/v1/invocations"), ("PUT", "/v1/invocations/x")],
    ids=["delete-the-collection", "put"],
)
def test_an_undeclared_method_is_405(api: RestClient, method: str, path: str) -> None:
    assert_status_json(api.call(method, path), 405, grpc.StatusCode.UNIMPLEMENTED)


def test_same_id_with_other_content_is_409_and_stored_data_is_unchanged(
    api: RestClient, id_prefix: str, images_dir: Path
) -> None:
    invocation_id = f"{id_prefix}-taken"
    first = (images_dir / "face-2.jpg").read_bytes()
    other = (images_dir / "face-3.jpg").read_bytes()
    created = api.post_json("/v1/invocations", invoke_body(invocation_id, first))
    assert created.status == 200, created.body[:500]

    reply = api.post_json("/v1/invocations", invoke_body(invocation_id, other))
    body = assert_status_json(reply, 409, grpc.StatusCode.ALREADY_EXISTS)
    assert invocation_id in body["message"], body

    stored = api.get(f"/v1/invocations/{invocation_id}")
    assert stored.status == 200, stored.body[:500]
    assert stored.json()["invocation"] == created.json()["invocation"]
    assert base64.b64decode(stored.json()["invocation"]["input"]["content"]) == first


def test_content_just_over_the_limit_is_413_from_the_server(
    api: RestClient, id_prefix: str, channel: grpc.Channel
) -> None:
    """Under Envoy's body cap, so the server answers RESOURCE_EXHAUSTED: 413 for REST (not 429),
    RESOURCE_EXHAUSTED for native gRPC through the same Envoy."""
    invocation_id = f"{id_prefix}-just-too-large"
    content = JPEG_MAGIC + bytes(MAX_CONTENT + 1 - len(JPEG_MAGIC))
    payload = invoke_body(invocation_id, content)
    assert len(payload["input"]["content"]) + 100 < REST_BODY_LIMIT
    body = assert_status_json(
        api.post_json("/v1/invocations", payload), 413, grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert (
        body["message"] == f"input.content is {MAX_CONTENT + 1} bytes; the limit is {MAX_CONTENT}"
    )
    assert_not_stored(api, invocation_id)

    stub = pb_grpc.InferenceServiceStub(channel)
    request = pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=content))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Invoke(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == body["message"]


def test_body_over_envoys_cap_is_413_from_envoy(api: RestClient, id_prefix: str) -> None:
    invocation_id = f"{id_prefix}-way-too-large"
    content = JPEG_MAGIC + bytes(REST_BODY_LIMIT * 3 // 4 + 4096)
    payload = invoke_body(invocation_id, content)
    assert len(payload["input"]["content"]) > REST_BODY_LIMIT
    body = assert_status_json(
        api.post_json("/v1/invocations", payload), 413, grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert body["message"] == "Payload Too Large"
    assert_not_stored(api, invocation_id)
