"""Every documented limit at its boundary, through every path, on the real stack.

Paths: native gRPC straight to a server, native gRPC through Envoy, REST/JSON through Envoy.
Limits (docs/api.md, "Limits"): content bytes (``INFERENCE_MAX_CONTENT_BYTES``), image pixels
(``INFERENCE_MAX_IMAGE_PIXELS``), metadata entries (``INFERENCE_MAX_METADATA_ENTRIES``), metadata
key and value bytes, id characters; each at the limit and one over it.

An accepted input round-trips byte-identical: the Invoke response, GetInvocation FULL (the same
invocation) and BASIC (no content, the right sha256). A refused one gets its documented status
(gRPC code; through REST the HTTP status with a JSON google.rpc.Status of that code) and
nothing is stored (GetInvocation of its id is NOT_FOUND).

The limits derived from those (``inference_service.limits``) are tested at their boundary too:
the gRPC server's message limit (both gRPC paths) and Envoy's REST body limit.

The content at the limit comes with every other input limit at its largest (the longest id, the
most and largest metadata entries of a character JSON escapes to six bytes): the largest valid
request and response there are, about 11 MiB of JSON each way through REST. The large images
are made here, once per module: noise PNGs (noise does not compress) padded to an exact size
with an ancillary chunk, and flat PNGs of an exact pixel count (which compress to little).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
import pytest
from google.protobuf import json_format
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from PIL import Image
from support.http import Reply, RestClient, assert_status_json

from inference_service.limits import (
    MAX_ID_CHARS,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
    RequestLimits,
)

PATHS = ["grpc-direct", "grpc-envoy", "rest"]
TIMEOUT_S = 60.0
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
}
CODES = {code.value[0]: code for code in grpc.StatusCode}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAD_CHUNK = b"paDd"  # ancillary (p), private (a), safe to copy (d): decoders skip it
TWO_BYTES = "é"  # one character, two bytes of UTF-8: limits count bytes


# -- images --------------------------------------------------------------------------------


def png_of_size(png: bytes, size: int) -> bytes:
    """``png`` made exactly ``size`` bytes long by a padding chunk right after IHDR."""
    padding = size - len(png) - 12  # length, type and CRC around the data
    assert padding >= 0, (len(png), size)
    assert png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR"
    data = bytes(padding)
    chunk = (
        struct.pack(">I", padding)
        + PAD_CHUNK
        + data
        + struct.pack(">I", zlib.crc32(PAD_CHUNK + data))
    )
    after_ihdr = len(PNG_SIGNATURE) + 12 + 13
    padded = png[:after_ihdr] + chunk + png[after_ihdr:]
    assert len(padded) == size
    return padded


def noise_png(max_size: int, seed: int = 8) -> bytes:
    """An RGB noise PNG (stored, not compressed) of a little less than ``max_size`` bytes."""
    width = 1024
    row = 1 + 3 * width  # a filter byte and the pixels
    overhead = 4096 + max_size // 256  # chunks, zlib's stored blocks: well under this
    height = max(1, (max_size - overhead) // row)
    pixels = random.Random(seed).randbytes(3 * width * height)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def shape_of(pixels: int) -> tuple[int, int]:
    """(width, height) with width * height == pixels, as square as the divisors allow."""
    height = next(h for h in range(int(pixels**0.5), 0, -1) if pixels % h == 0)
    return pixels // height, height


def flat_png(pixels: int) -> bytes:
    """A one-bit, all-black PNG of exactly ``pixels`` pixels (a few KB)."""
    buffer = io.BytesIO()
    Image.new("1", shape_of(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 200, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def check_png(content: bytes, size: tuple[int, int] | None = None) -> None:
    """The test image itself is valid (and of the expected size): only the limit is tested."""
    with Image.open(io.BytesIO(content)) as image:
        if size is not None:
            assert image.size == size
        image.load()


@pytest.fixture(scope="module")
def pixels_at_limit(limits: RequestLimits) -> bytes:
    content = flat_png(limits.max_image_pixels)
    check_png(content, shape_of(limits.max_image_pixels))
    return content


@pytest.fixture(scope="module")
def pixels_over_limit(limits: RequestLimits) -> bytes:
    content = flat_png(limits.max_image_pixels + 1)
    check_png(content, shape_of(limits.max_image_pixels + 1))
    return content


# -- the three paths -------------------------------------------------------------------------


@dataclasses.dataclass
class RefusedError(Exception):
    """A call that failed: its gRPC code, and through REST its HTTP status."""

    code: grpc.StatusCode
    message: str
    http_status: int | None = None


class ApiPath(Protocol):
    name: str
    rest: bool

    def invoke(self, model_input: pb.ModelInput) -> pb.Invocation: ...

    def get(self, invocation_id: str, view: int = pb.INVOCATION_VIEW_FULL) -> pb.Invocation: ...


class GrpcPath:
    """Native gRPC on a channel (to a server, or to Envoy)."""

    rest = False

    def __init__(self, name: str, channel: grpc.Channel) -> None:
        self.name = name
        self._stub = pb_grpc.InferenceServiceStub(channel)

    def invoke(self, model_input: pb.ModelInput) -> pb.Invocation:
        # FULL: the response carries the content back, the largest response Invoke sends.
        request = pb.InvokeRequest(input=model_input, view=pb.INVOCATION_VIEW_FULL)
        return self._call(self._stub.Invoke, request).invocation

    def get(self, invocation_id: str, view: int = pb.INVOCATION_VIEW_FULL) -> pb.Invocation:
        request = pb.GetInvocationRequest(id=invocation_id, view=view)
        return self._call(self._stub.GetInvocation, request).invocation

    @staticmethod
    def _call(method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            raise RefusedError(error.code(), error.details()) from None


class RestPath:
    """REST/JSON through Envoy; invocations are parsed into protos (unknown fields refused)."""

    rest = True
    name = "rest"

    def __init__(self, api: RestClient) -> None:
        self._api = api

    def invoke(self, model_input: pb.ModelInput) -> pb.Invocation:
        body = {
            "input": {
                "id": model_input.id,
                "content": base64.b64encode(model_input.content).decode(),
                "metadata": dict(model_input.metadata),
            },
            "view": "INVOCATION_VIEW_FULL",
        }
        # json.dumps escapes every non-ASCII and control character (\u00XX): the longest JSON.
        return self._invocation(
            self._api.call("POST", "/v1/invocations", json.dumps(body).encode())
        )

    def get(self, invocation_id: str, view: int = pb.INVOCATION_VIEW_FULL) -> pb.Invocation:
        query = f"?view={pb.InvocationView.Name(view)}" if view != pb.INVOCATION_VIEW_FULL else ""
        return self._invocation(self._api.get(f"/v1/invocations/{invocation_id}{query}"))

    @staticmethod
    def _invocation(reply: Reply) -> pb.Invocation:
        body = reply.json()  # every answer is JSON, errors too
        if reply.status == 200:
            # Invoke's answer also says whether it was a replay; GetInvocation's has the
            # invocation only.
            assert set(body) in ({"invocation"}, {"invocation", "replayed"}), body.keys()
            return json_format.ParseDict(body["invocation"], pb.Invocation())
        assert set(body) == {"code", "message", "details"}, body
        assert body["details"] == [], body
        raise RefusedError(CODES[body["code"]], body["message"], reply.status)


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> ApiPath:
    if request.param == "rest":
        return RestPath(request.getfixturevalue("api"))
    fixture = "direct_channel" if request.param == "grpc-direct" else "channel"
    return GrpcPath(request.param, request.getfixturevalue(fixture))


# -- checks ----------------------------------------------------------------------------------


def unique_id(id_prefix: str, path: ApiPath, name: str, length: int | None = None) -> str:
    """An id of this run, path and case; ``length`` pads it (with x) to exactly that length."""
    base = f"{id_prefix}-{path.name}-{name.replace('+', 'plus')}"
    if length is None:
        return base
    assert len(base) <= length
    return base.ljust(length, "x")


def assert_refused(call: Callable[[], Any], path: ApiPath, code: grpc.StatusCode) -> RefusedError:
    """``call`` fails with ``code``; through REST with its HTTP status, as JSON."""
    with pytest.raises(RefusedError) as raised:
        call()
    refusal = raised.value
    assert refusal.code == code, refusal
    assert refusal.http_status == (HTTP_STATUS[code] if path.rest else None), refusal
    return refusal


def assert_refused_and_not_stored(
    path: ApiPath, model_input: pb.ModelInput, code: grpc.StatusCode
) -> RefusedError:
    refusal = assert_refused(lambda: path.invoke(model_input), path, code)
    assert_refused(lambda: path.get(model_input.id), path, grpc.StatusCode.NOT_FOUND)
    return refusal


def assert_round_trips(path: ApiPath, model_input: pb.ModelInput) -> pb.Invocation:
    """Invoke, then GetInvocation FULL and BASIC: the input comes back byte for byte."""
    sha256 = hashlib.sha256(model_input.content).hexdigest()
    created = path.invoke(model_input)
    assert created.state == pb.Invocation.STATE_SUCCEEDED, created.error
    assert created.id == model_input.id
    assert created.input.id == model_input.id
    assert created.input.content == model_input.content, "content is not byte-identical"
    assert dict(created.input.metadata) == dict(model_input.metadata)
    assert created.content_sha256 == sha256

    full = path.get(model_input.id)
    assert full.input.content == model_input.content, "FULL content is not byte-identical"
    assert full == created

    basic = path.get(model_input.id, pb.INVOCATION_VIEW_BASIC)
    assert basic.input.content == b""
    assert basic.content_sha256 == sha256
    without_content = pb.Invocation()
    without_content.CopyFrom(created)
    without_content.input.content = b""
    assert basic == without_content
    return created


def largest_metadata(entries: int) -> dict[str, str]:
    """``entries`` keys and values of the largest size, of a control character that JSON
    writes as ``\\u0001`` (six bytes for one)."""
    return {
        f"{index:04d}".ljust(MAX_METADATA_KEY_BYTES, "\x01"): "\x01" * MAX_METADATA_VALUE_BYTES
        for index in range(entries)
    }


# -- content bytes ---------------------------------------------------------------------------


def test_content_of_exactly_the_limit_with_every_other_limit_at_its_largest_round_trips(
    path: ApiPath, id_prefix: str, limits: RequestLimits, content_at_limit: bytes
) -> None:
    assert len(content_at_limit) == limits.max_content_bytes
    model_input = pb.ModelInput(
        id=unique_id(id_prefix, path, "largest", MAX_ID_CHARS),
        content=content_at_limit,
        metadata=largest_metadata(limits.max_metadata_entries),
    )
    assert_round_trips(path, model_input)


def test_content_one_byte_over_the_limit_is_refused_by_the_server(
    path: ApiPath, id_prefix: str, limits: RequestLimits, content_over_limit: bytes
) -> None:
    limit = limits.max_content_bytes
    assert len(content_over_limit) == limit + 1
    model_input = pb.ModelInput(
        id=unique_id(id_prefix, path, "content-over"), content=content_over_limit
    )
    refusal = assert_refused_and_not_stored(path, model_input, grpc.StatusCode.RESOURCE_EXHAUSTED)
    # The server's own answer (not a transport's or Envoy's), on every path.
    assert refusal.message == f"input.content is {limit + 1} bytes; the limit is {limit}"


# -- image pixels ----------------------------------------------------------------------------


def test_image_of_exactly_the_pixel_limit_round_trips(
    path: ApiPath, id_prefix: str, limits: RequestLimits, pixels_at_limit: bytes
) -> None:
    model_input = pb.ModelInput(id=unique_id(id_prefix, path, "pixels"), content=pixels_at_limit)
    created = assert_round_trips(path, model_input)
    width, height = created.output.image_width, created.output.image_height
    assert (width, height) == shape_of(limits.max_image_pixels)
    assert width * height == limits.max_image_pixels


def test_image_one_pixel_over_the_limit_is_refused(
    path: ApiPath, id_prefix: str, limits: RequestLimits, pixels_over_limit: bytes
) -> None:
    model_input = pb.ModelInput(
        id=unique_id(id_prefix, path, "pixels-over"), content=pixels_over_limit
    )
    refusal = assert_refused_and_not_stored(path, model_input, grpc.StatusCode.INVALID_ARGUMENT)
    width, height = shape_of(limits.max_image_pixels + 1)
    assert refusal.message == (
        f"image is {width}x{height} = {width * height} pixels; "
        f"the limit is {limits.max_image_pixels}"
    )


# -- metadata and id -------------------------------------------------------------------------


def metadata_case(name: str, entries: int) -> Mapping[str, str]:
    """Metadata at (or one past) one of its limits; the other limits are kept."""
    key = TWO_BYTES * (MAX_METADATA_KEY_BYTES // 2)  # 128 bytes, 64 characters
    value = TWO_BYTES * (MAX_METADATA_VALUE_BYTES // 2)  # 1024 bytes, 512 characters
    return {
        "entries": {f"k{index}": f"v{index}" for index in range(entries)},
        "entries+1": {f"k{index}": f"v{index}" for index in range(entries + 1)},
        "key": {key: "v"},
        "key+1": {key + "a": "v"},
        "key-empty": {"": "v"},
        "value": {"k": value},
        "value+1": {"k": value + "a"},
        "value-empty": {"k": ""},
    }[name]


@pytest.mark.parametrize("case", ["entries", "key", "value", "value-empty"])
def test_metadata_at_its_limits_round_trips(
    path: ApiPath, id_prefix: str, limits: RequestLimits, case: str
) -> None:
    metadata = metadata_case(case, limits.max_metadata_entries)
    model_input = pb.ModelInput(
        id=unique_id(id_prefix, path, f"meta-{case}"), content=small_png(), metadata=metadata
    )
    assert_round_trips(path, model_input)


@pytest.mark.parametrize("case", ["entries+1", "key+1", "key-empty", "value+1"])
def test_metadata_over_its_limits_is_refused(
    path: ApiPath, id_prefix: str, limits: RequestLimits, case: str
) -> None:
    metadata = metadata_case(case, limits.max_metadata_entries)
    model_input = pb.ModelInput(
        id=unique_id(id_prefix, path, f"meta-{case}"), content=small_png(), metadata=metadata
    )
    refusal = assert_refused_and_not_stored(path, model_input, grpc.StatusCode.INVALID_ARGUMENT)
    assert "input.metadata" in refusal.message, refusal


def test_id_of_128_characters_round_trips(path: ApiPath, id_prefix: str) -> None:
    invocation_id = unique_id(id_prefix, path, "id", MAX_ID_CHARS)
    assert len(invocation_id) == 128
    assert_round_trips(path, pb.ModelInput(id=invocation_id, content=small_png()))


def test_id_of_129_characters_is_refused_by_invoke_and_get(path: ApiPath, id_prefix: str) -> None:
    invocation_id = unique_id(id_prefix, path, "id-over", MAX_ID_CHARS + 1)
    assert len(invocation_id) == 129
    model_input = pb.ModelInput(id=invocation_id, content=small_png())
    refusal = assert_refused(
        lambda: path.invoke(model_input), path, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "is invalid" in refusal.message, refusal
    # Never stored, and not even looked up: GetInvocation refuses the id itself.
    assert_refused(lambda: path.get(invocation_id), path, grpc.StatusCode.INVALID_ARGUMENT)
    # Its first 128 characters were not stored either.
    assert_refused(lambda: path.get(invocation_id[:MAX_ID_CHARS]), path, grpc.StatusCode.NOT_FOUND)


# -- the derived limits: gRPC message, REST body -------------------------------------------


def request_of_size(invocation_id: str, size: int) -> pb.InvokeRequest:
    """An Invoke of zero bytes of content whose message is exactly ``size`` bytes."""
    length = size
    for _ in range(8):
        request = pb.InvokeRequest(
            input=pb.ModelInput(id=invocation_id, content=bytes(length)),
            view=pb.INVOCATION_VIEW_FULL,  # as every path sends it
        )
        excess = request.ByteSize() - size
        if excess == 0:
            return request
        length -= excess
    raise AssertionError(f"no request of exactly {size} bytes")


@pytest.mark.parametrize("path", ["grpc-direct", "grpc-envoy"], indirect=True)
def test_grpc_message_at_and_over_the_servers_message_limit(
    path: ApiPath, id_prefix: str, limits: RequestLimits
) -> None:
    """A message of exactly the derived limit reaches the service (whose content check refuses
    it); one byte more is refused by gRPC itself. Neither is stored."""
    at_limit = request_of_size(unique_id(id_prefix, path, "message"), limits.grpc_message_bytes)
    refusal = assert_refused_and_not_stored(
        path, at_limit.input, grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert refusal.message.startswith("input.content is "), refusal

    over = request_of_size(
        unique_id(id_prefix, path, "message-over"), limits.grpc_message_bytes + 1
    )
    refusal = assert_refused_and_not_stored(path, over.input, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "Received message larger than max" in refusal.message, refusal


def rest_body_of_size(invocation_id: str, size: int) -> bytes:
    """An Invoke body of exactly ``size`` bytes: zero bytes of content, padded with spaces."""
    content = bytes((size - 100) // 4 * 3)
    body = json.dumps(
        {"input": {"id": invocation_id, "content": base64.b64encode(content).decode()}}
    ).encode()
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_rest_body_at_and_over_envoys_body_limit(
    api: RestClient, id_prefix: str, limits: RequestLimits
) -> None:
    """A body of exactly the derived limit reaches the server (whose content check refuses it);
    one byte more is refused by Envoy. Both are 413 with JSON; neither is stored."""
    rest = RestPath(api)
    invocation_id = unique_id(id_prefix, rest, "body")
    body = rest_body_of_size(invocation_id, limits.rest_request_body_bytes)
    assert len(body) == limits.rest_request_body_bytes
    reply = api.call("POST", "/v1/invocations", body)
    message = assert_status_json(reply, 413, grpc.StatusCode.RESOURCE_EXHAUSTED)["message"]
    assert message.startswith("input.content is "), message
    assert_refused(lambda: rest.get(invocation_id), rest, grpc.StatusCode.NOT_FOUND)

    invocation_id = unique_id(id_prefix, rest, "body-over")
    body = rest_body_of_size(invocation_id, limits.rest_request_body_bytes + 1)
    reply = api.call("POST", "/v1/invocations", body)
    message = assert_status_json(reply, 413, grpc.StatusCode.RESOURCE_EXHAUSTED)["message"]
    assert message == "Payload Too Large", message
    assert_refused(lambda: rest.get(invocation_id), rest, grpc.StatusCode.NOT_FOUND)
