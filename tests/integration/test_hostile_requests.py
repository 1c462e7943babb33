"""Hostile requests against the real gRPC server (real model, in-memory store), sent as raw
bytes through generic calls: messages that cannot be decoded get INVALID_ARGUMENT with a fixed
message, never UNKNOWN, and store nothing; hostile images get their documented status."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support import wire
from support.fakes import RecordingStore
from support.h2_streams import RawGrpcConnection, grpc_frame
from support.hostile import corpus

from inference_service.app import Application
from inference_service.grpc.errors import UNDECODABLE_REQUEST_MESSAGE
from inference_service.grpc.single_message import MORE_THAN_ONE_MESSAGE, NO_MESSAGE
from inference_service.settings import Settings

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
BAD_UTF8 = b"caf\xc3"  # a truncated two-byte sequence

UNDECODABLE_INVOKES = {
    "corrupt-wire-format": b"\xff\xff\xff\xff",
    "truncated-length": wire.delimited(1, b"abc")[:-1],
    "bad-utf8-id": wire.invoke_request(id=BAD_UTF8, content=b"\xff\xd8\xff"),
    "bad-utf8-metadata-key": wire.invoke_request(
        id=b"k", content=b"\xff\xd8\xff", metadata=[(BAD_UTF8, b"v")]
    ),
    "bad-utf8-metadata-value": wire.invoke_request(
        id=b"v", content=b"\xff\xd8\xff", metadata=[(b"camera", BAD_UTF8)]
    ),
    "bad-utf8-model": wire.invoke_request(id=b"m", content=b"\xff\xd8\xff", model=b"\xfe"),
    "unterminated-group": wire.varint(5 << 3 | 3) + wire.integer(1, 1),
}


@pytest.fixture(scope="module")
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture(scope="module")
async def server(store: RecordingStore, shared_dir: Path):
    app = Application(Settings(port=0, store="memory", shared_dir=shared_dir), store=store)
    await app.start()
    yield app
    await app.stop(grace=1)


@pytest.fixture(scope="module")
async def channel(server: Application):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


def raw_unary(channel: grpc.aio.Channel, method: str):
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize("payload", UNDECODABLE_INVOKES.values(), ids=UNDECODABLE_INVOKES.keys())
async def test_undecodable_invoke_is_invalid_argument_and_stores_nothing(
    channel, store: RecordingStore, payload: bytes
) -> None:
    claims = len(store.claimed)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw_unary(channel, wire.INVOKE)(payload, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == UNDECODABLE_REQUEST_MESSAGE
    assert len(store.claimed) == claims


@pytest.mark.parametrize(
    "payload",
    [b"\x0a\x05", wire.get_invocation_request(id=BAD_UTF8), b"\x10\xff\xff\xff\xff\xff"],
    ids=["truncated", "bad-utf8-id", "overlong-varint"],
)
async def test_undecodable_get_invocation_is_invalid_argument(channel, payload: bytes) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw_unary(channel, wire.GET_INVOCATION)(payload, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == UNDECODABLE_REQUEST_MESSAGE


async def test_a_raw_request_that_decodes_is_served(channel, shared_dir: Path) -> None:
    content = (shared_dir / "images" / "face-2.jpg").read_bytes()
    raw = wire.invoke_request(id=b"raw-ok", content=content, metadata=[(b"caf\xc3\xa9", b"ok")])
    response = pb.InvokeResponse.FromString(await raw_unary(channel, wire.INVOKE)(raw, timeout=30))
    assert response.invocation.state == pb.Invocation.STATE_SUCCEEDED
    assert dict(response.invocation.input.metadata) == {"café": "ok"}


async def test_undecodable_health_and_reflection_requests(channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw_unary(channel, HEALTH_CHECK)(wire.delimited(1, BAD_UTF8), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    watch = channel.unary_stream(HEALTH_WATCH)(wire.delimited(1, BAD_UTF8), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await watch.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == UNDECODABLE_REQUEST_MESSAGE

    reflect = channel.stream_stream(REFLECTION)(iter([b"\xff\xff"]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await reflect.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == UNDECODABLE_REQUEST_MESSAGE


async def test_valid_streaming_calls_still_work_through_the_interceptor(channel) -> None:
    watch = channel.unary_stream(
        HEALTH_WATCH, response_deserializer=health_pb2.HealthCheckResponse.FromString
    )(health_pb2.HealthCheckRequest(service="").SerializeToString(), timeout=5)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


# Reserved headers that grpc-core parses, each with a value it refuses and one it takes. Issue 18:
# the refused value stayed in the connection's HPACK dynamic table with its error, and every later
# value of that header on the connection (sent with the table's name) failed too: INTERNAL
# "Error parsing '<name>' metadata". Envoy sends every client's calls on one connection.
POISONS = {
    "grpc-timeout": ("abc", "9999876u"),
    "grpc-encoding": ("br", "gzip"),
    "grpc-previous-rpc-attempts": ("x", "1"),
    "grpc-internal-encoding-request": ("zz", "gzip"),
}
GET_MODEL = "/inference.v1.InferenceService/GetModel"
GET_MODEL_MESSAGE = grpc_frame(wire.delimited(1, b"face-detector"))


@pytest.mark.parametrize("name", POISONS)
async def test_a_bad_reserved_header_fails_only_its_own_call(server: Application, name) -> None:
    bad, good = POISONS[name]

    def calls() -> list[str | None]:
        with RawGrpcConnection("127.0.0.1", server.port) as connection:
            statuses = [connection.call(GET_MODEL, GET_MODEL_MESSAGE, [(name, bad)]).grpc_status]
            for _ in range(3):
                reply = connection.call(GET_MODEL, GET_MODEL_MESSAGE, [(name, good)])
                statuses.append(reply.grpc_status)
            return statuses

    statuses = await asyncio.to_thread(calls)
    assert statuses[0] == str(grpc.StatusCode.INTERNAL.value[0])  # grpc-core's own answer
    assert statuses[1:] == ["0", "0", "0"]


# A unary call whose request stream ends without one whole message. Before issue 18 grpc.aio
# never answered these (the call hung until the client gave up).
INCOMPLETE = {
    "no-message": b"",
    "frame-header-cut": b"\x00\x00\x00",
    "message-cut": b"\x00\x00\x01\x86\xa0\x0a\x01x",  # announces 100,000 bytes, sends 3
}


@pytest.mark.parametrize("body", INCOMPLETE.values(), ids=INCOMPLETE.keys())
async def test_a_unary_call_without_a_whole_message_is_refused_at_once(
    server: Application, body: bytes
) -> None:
    def call():
        with RawGrpcConnection("127.0.0.1", server.port) as connection:
            return connection.call(wire.GET_INVOCATION, body, wait=10)

    reply = await asyncio.to_thread(call)
    assert reply.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert urllib.parse.unquote(reply.grpc_message or "") == NO_MESSAGE
    assert reply.seconds < 2


async def test_a_unary_call_with_two_messages_is_refused(
    channel, server: Application, store: RecordingStore, shared_dir: Path
) -> None:
    content = (shared_dir / "images" / "face-2.jpg").read_bytes()
    one = grpc_frame(wire.invoke_request(id=b"two-messages", content=content))
    claims = len(store.claimed)

    def call():
        with RawGrpcConnection("127.0.0.1", server.port) as connection:
            return connection.call(wire.INVOKE, one + one, wait=10)

    reply = await asyncio.to_thread(call)
    assert reply.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert urllib.parse.unquote(reply.grpc_message or "") == MORE_THAN_ONE_MESSAGE
    assert len(store.claimed) == claims


@pytest.mark.parametrize("view", [-1, 3, 2**31 - 1])
async def test_an_undefined_view_is_invalid_argument(channel, view: int) -> None:
    """Proto3 keeps enum numbers it does not know; before issue 18 they acted as FULL."""
    stub = pb_grpc.InferenceServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetInvocation(pb.GetInvocationRequest(id="any", view=view), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"view {view} is not an InvocationView" in (raised.value.details() or "")


SOME = (
    "zero-bytes",
    "truncated-jpeg",
    "png-30000x30000-header",
    "tiff-float-40mp-one-strip",
    "tiff-float-1gib-tile",
    "psd",
    "cmyk-jpeg",
    "exif-orientation-6",
)


@pytest.mark.parametrize("case", [c for c in corpus() if c.name in SOME], ids=lambda c: c.name)
async def test_hostile_images_through_grpc(channel, store: RecordingStore, case) -> None:
    invoke = channel.unary_unary(
        wire.INVOKE,
        request_serializer=pb.InvokeRequest.SerializeToString,
        response_deserializer=pb.InvokeResponse.FromString,
    )
    request = pb.InvokeRequest(input=pb.ModelInput(id=f"grpc-{case.name}", content=case.content))
    if case.code == "OK":
        output = (await invoke(request, timeout=30)).invocation.output
        assert (output.image_width, output.image_height) == case.size
        assert f"grpc-{case.name}" in store.claimed
        return
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await invoke(request, timeout=30)
    assert raised.value.code().name == case.code
    assert re.search(case.message, raised.value.details())
    assert f"grpc-{case.name}" not in store.claimed
