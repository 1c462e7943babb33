"""POST /v1/invocations:upload (issue 21 item 5): the body is the image itself, the id, model,
view and metadata are query parameters. The same call as Invoke: its limits (the content limit
at it and one over, through REST, gRPC straight to a server and gRPC through Envoy), its errors
and its idempotency (the replay marker), on the real stack.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.http import RestClient, assert_status_json

UPLOAD = "/v1/invocations:upload"
CURL_DEFAULT = "application/x-www-form-urlencoded"  # what curl --data-binary sends
TIMEOUT_S = 60.0


def upload(
    api: RestClient, body: bytes | None, content_type: str | None = CURL_DEFAULT, **query: object
):
    params: list[tuple[str, str]] = []
    for name, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            params.append((name, str(item)))
    path = UPLOAD + ("?" + urllib.parse.urlencode(params) if params else "")
    headers = {"content-type": content_type} if content_type else {}
    return api.call("POST", path, body, headers=headers)


@pytest.fixture(scope="module")
def face(shared_dir: Path) -> bytes:
    return (shared_dir / "images" / "face-1.jpg").read_bytes()


def test_curl_data_binary_upload_runs_the_model(api, face, id_prefix):
    """The README's curl line: the body is the JPEG, curl's default Content-Type."""
    reply = upload(api, face, id=f"{id_prefix}-up-1", metadata=["camera:front", "site:a:b"])
    body = reply.json()
    assert reply.status == 200, body
    invocation = body["invocation"]
    assert invocation["id"] == f"{id_prefix}-up-1"
    assert invocation["state"] == "STATE_SUCCEEDED"
    assert invocation["output"]["detections"], invocation
    assert invocation["content_sha256"] == hashlib.sha256(face).hexdigest()
    assert invocation["input"]["metadata"] == {"camera": "front", "site": "a:b"}
    assert invocation["input"]["content"] == ""  # BASIC by default, as Invoke
    assert body["replayed"] is False
    assert "inference-replayed" not in reply.headers
    # Stored like any Invoke: read back through the JSON API.
    stored = api.get(f"/v1/invocations/{id_prefix}-up-1?view=INVOCATION_VIEW_BASIC").json()
    assert stored["invocation"]["content_sha256"] == invocation["content_sha256"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_line_verbatim(stack, shared_dir, id_prefix):
    """`curl --data-binary @face.jpg '.../v1/invocations:upload?id=x'`, as README shows it."""
    url = f"{stack.rest_url}{UPLOAD}?id={id_prefix}-up-curl&metadata=camera:lobby"
    face = shared_dir / "images" / "face-1.jpg"
    result = subprocess.run(
        ["curl", "-s", "-w", "\\n%{http_code}", "--data-binary", f"@{face}", url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200", result.stdout[:500]
    invocation = json.loads(body)["invocation"]
    assert invocation["state"] == "STATE_SUCCEEDED"
    assert invocation["input"]["metadata"] == {"camera": "lobby"}


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/octet-stream"])
def test_an_image_or_octet_stream_content_type_is_accepted(api, face, id_prefix, content_type):
    reply = upload(api, face, content_type, id=f"{id_prefix}-up-ct-{content_type!s:.5}")
    assert reply.status == 200, reply.body[:300]


def test_a_second_upload_is_a_replay_and_says_so(api, face, id_prefix):
    first = upload(api, face, "image/jpeg", id=f"{id_prefix}-up-replay")
    assert first.status == 200
    again = upload(api, face, "image/jpeg", id=f"{id_prefix}-up-replay", model="no-such-model-x")
    # The model is looked up first, as for Invoke: an unknown one is NOT_FOUND even on a replay.
    assert_status_json(again, 404, grpc.StatusCode.NOT_FOUND)
    again = upload(api, face, "image/jpeg", id=f"{id_prefix}-up-replay")
    assert again.status == 200
    assert again.json()["replayed"] is True
    assert again.headers.get("inference-replayed") == "true"
    assert again.json()["invocation"] == first.json()["invocation"]


def test_same_id_other_content_is_already_exists(api, face, id_prefix):
    assert upload(api, face, id=f"{id_prefix}-up-409").status == 200
    other = face[:-2] + b"\xff\xd9" if face[-2:] != b"\xff\xd9" else face + b"\x00"
    reply = upload(api, other, id=f"{id_prefix}-up-409")
    assert_status_json(reply, 409, grpc.StatusCode.ALREADY_EXISTS)


def test_uploaded_and_invoked_content_is_one_invocation(api, face, id_prefix, channel):
    """An id uploaded raw is the same id for Invoke: the same content is a replay."""
    assert upload(api, face, id=f"{id_prefix}-up-both").status == 200
    stub = pb_grpc.InferenceServiceStub(channel)
    response = stub.Invoke(
        pb.InvokeRequest(input=pb.ModelInput(id=f"{id_prefix}-up-both", content=face)),
        timeout=TIMEOUT_S,
    )
    assert response.replayed


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"input": {"content": "AAAA"}}'),
        ("application/json; charset=utf-8", b"{}"),
        ("text/plain", b"hello"),
        ("multipart/form-data; boundary=x", b"--x--"),
    ],
)
def test_json_text_or_multipart_bodies_are_415(api, content_type, body):
    reply = upload(api, body, content_type, id="up-json")
    message = assert_status_json(reply, 415, grpc.StatusCode.INVALID_ARGUMENT)["message"]
    assert "the image itself" in message and "POST /v1/invocations" in message


@pytest.mark.parametrize("body", [None, b""])
def test_a_missing_or_empty_body_is_400(api, body):
    reply = upload(api, body, "image/jpeg", id="up-empty")
    message = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)["message"]
    assert "content is empty" in message


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"metadata": "no-colon"}, "is not key:value"),
        ({"metadata": ["k:1", "k:2"]}, "is given twice"),
        ({"id": "a b"}, "is invalid"),
        ({"unknown": "1"}, "query parameter is unknown"),
    ],
)
def test_bad_query_parameters_are_400(api, face, query, words):
    reply = upload(api, face, "image/jpeg", **query)
    message = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)["message"]
    assert words in message


def test_undecodable_body_is_400(api):
    reply = upload(api, b"not an image at all", "image/jpeg", id="up-junk")
    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)


def test_other_methods_are_405(api):
    reply = api.call("GET", UPLOAD)
    assert_status_json(reply, 405, grpc.StatusCode.UNIMPLEMENTED)
    assert reply.headers.get("allow") == "POST"


# -- the content limit, at it and one over, on every path -----------------------------------------


def test_rest_upload_at_the_content_limit_passes_and_one_over_is_413(
    api, content_at_limit, content_over_limit, limits, id_prefix
):
    reply = upload(api, content_at_limit, "image/png", id=f"{id_prefix}-up-at")
    assert reply.status == 200, reply.body[:300]
    stored = reply.json()["invocation"]["content_sha256"]
    assert stored == hashlib.sha256(content_at_limit).hexdigest()
    reply = upload(api, content_over_limit, "image/png", id=f"{id_prefix}-up-over")
    message = assert_status_json(reply, 413, grpc.StatusCode.RESOURCE_EXHAUSTED)["message"]
    assert str(limits.max_content_bytes) in message
    missing = api.get(f"/v1/invocations/{id_prefix}-up-over")
    assert_status_json(missing, 404, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("target", ["direct_channel", "channel"])
def test_grpc_upload_at_the_content_limit_passes_and_one_over_is_resource_exhausted(
    request, target, content_at_limit, content_over_limit, id_prefix
):
    stub = pb_grpc.InferenceServiceStub(request.getfixturevalue(target))

    def call(content: bytes, suffix: str) -> pb.InvokeResponse:
        return stub.UploadInvocation(
            pb.UploadInvocationRequest(
                id=f"{id_prefix}-up-{target}-{suffix}",
                metadata=["k:v"],
                body={"content_type": "image/png", "data": content},
            ),
            timeout=TIMEOUT_S,
        )

    response = call(content_at_limit, "at")
    assert response.invocation.content_sha256 == hashlib.sha256(content_at_limit).hexdigest()
    assert dict(response.invocation.input.metadata) == {"k": "v"}
    with pytest.raises(grpc.RpcError) as caught:
        call(content_over_limit, "over")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
