"""The real gRPC server with the real model, on each store (in-memory and a real Cassandra),
called by a real gRPC client."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from PIL import Image
from support.reference import assert_matches_reference

from devstack.process import free_port, port_open
from inference_service.app import Application
from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraInvocationStore

MAX_CONTENT = 8 * 1024 * 1024


@pytest.fixture(scope="module", params=["memory", "cassandra"])
async def server(request: pytest.FixtureRequest, shared_dir: Path):
    settings = Settings(port=0, store=request.param, shared_dir=shared_dir, workers=2)
    store = None
    if request.param == "cassandra":
        endpoint = request.getfixturevalue("cassandra_endpoint")
        store = await CassandraInvocationStore.connect(endpoint)
    app = Application(settings, store=store)
    await app.start()
    yield app
    await app.stop(grace=1)


@pytest.fixture(scope="module")
async def channel(server: Application):
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_send_message_length", 2 * MAX_CONTENT)],
    ) as chan:
        yield chan


@pytest.fixture(scope="module")
def stub(channel) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(channel)


def boxes(output: pb.ModelOutput) -> list[tuple[float, ...]]:
    return [
        (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score) for d in output.detections
    ]


async def test_every_shared_image_matches_reference_and_reads_back(stub, shared_dir, reference):
    for name, expected in reference["images"].items():
        content = (shared_dir / "images" / name).read_bytes()
        request = pb.InvokeRequest(
            input=pb.ModelInput(id=f"ref-{name}", content=content, metadata={"file": name})
        )
        response = await stub.Invoke(request)
        invocation = response.invocation
        assert invocation.state == pb.Invocation.STATE_SUCCEEDED
        assert invocation.model == "ultraface-rfb-320"
        assert len(invocation.model_version) == 64
        assert (invocation.output.image_width, invocation.output.image_height) == (
            expected["width"],
            expected["height"],
        )
        assert_matches_reference(boxes(invocation.output), expected["boxes"], name)

        assert invocation.input.content == b""  # Invoke's default view: BASIC
        read = (await stub.GetInvocation(pb.GetInvocationRequest(id=f"ref-{name}"))).invocation
        assert read.input.content == content
        read.input.content = b""
        assert read == invocation
        assert read.content_sha256 == hashlib.sha256(content).hexdigest()
        assert dict(read.input.metadata) == {"file": name}


async def test_face_1_has_46_faces(stub, shared_dir):
    content = (shared_dir / "images" / "face-1.jpg").read_bytes()
    response = await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(content=content)))
    assert len(response.invocation.output.detections) == 46
    assert response.invocation.id  # server-assigned
    assert all(d.label == "face" for d in response.invocation.output.detections)


async def test_basic_view_omits_content(stub, shared_dir):
    content = (shared_dir / "images" / "lenna.png").read_bytes()
    await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="basic-view", content=content)))
    basic = (
        await stub.GetInvocation(
            pb.GetInvocationRequest(id="basic-view", view=pb.INVOCATION_VIEW_BASIC)
        )
    ).invocation
    assert basic.input.content == b""
    assert basic.content_sha256 == hashlib.sha256(content).hexdigest()
    assert len(basic.output.detections) >= 1


async def test_invoke_returns_the_content_only_with_the_full_view(stub, shared_dir):
    content = (shared_dir / "images" / "face-9.jpg").read_bytes()
    model_input = pb.ModelInput(id="invoke-views", content=content)
    basic = await stub.Invoke(pb.InvokeRequest(input=model_input))
    explicit = await stub.Invoke(pb.InvokeRequest(input=model_input, view=pb.INVOCATION_VIEW_BASIC))
    full = await stub.Invoke(pb.InvokeRequest(input=model_input, view=pb.INVOCATION_VIEW_FULL))
    assert basic.invocation.input.content == explicit.invocation.input.content == b""
    assert basic.invocation.content_sha256 == hashlib.sha256(content).hexdigest()
    assert full.invocation.input.content == content
    full.invocation.input.content = b""
    assert full.invocation == basic.invocation == explicit.invocation
    # The first call ran the model; the two after it answered the stored invocation.
    assert (basic.replayed, explicit.replayed, full.replayed) == (False, True, True)


async def test_idempotent_and_already_exists(stub, shared_dir):
    first = (shared_dir / "images" / "face-2.jpg").read_bytes()
    other = (shared_dir / "images" / "face-3.jpg").read_bytes()
    first_call = stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="same-id", content=first)))
    a = await first_call
    again = stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="same-id", content=first)))
    b = await again
    assert a.invocation == b.invocation
    # The retry is marked replayed, in the message and in the initial metadata (issue 21).
    assert (a.replayed, b.replayed) == (False, True)
    assert ("inference-replayed", "true") not in tuple(await first_call.initial_metadata())
    assert ("inference-replayed", "true") in tuple(await again.initial_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="same-id", content=other)))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stored = await stub.GetInvocation(pb.GetInvocationRequest(id="same-id"))
    assert stored.invocation.input.content == first


async def test_concurrent_invokes_of_one_id_first_writer_wins(stub, shared_dir):
    """20 concurrent Invokes, one id, 20 different images: exactly one is stored and run."""
    names = sorted(p.name for p in (shared_dir / "images").glob("*.jpg"))
    contents = [(shared_dir / "images" / name).read_bytes() for name in names]
    contents += [c + b"\0" for c in contents]  # still decodable, different bytes
    contents = contents[:20]
    assert len({hashlib.sha256(c).digest() for c in contents}) == 20

    async def invoke(content: bytes):
        try:
            return await stub.Invoke(
                pb.InvokeRequest(
                    input=pb.ModelInput(id="contended", content=content),
                    view=pb.INVOCATION_VIEW_FULL,
                )
            )
        except grpc.aio.AioRpcError as error:
            return error

    results = await asyncio.gather(*(invoke(c) for c in contents))
    winners = [r for r in results if isinstance(r, pb.InvokeResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert {e.code() for e in losers} == {grpc.StatusCode.ALREADY_EXISTS}
    stored = (await stub.GetInvocation(pb.GetInvocationRequest(id="contended"))).invocation
    assert stored.state == pb.Invocation.STATE_SUCCEEDED
    assert stored == winners[0].invocation


async def test_concurrent_identical_invokes_get_the_same_invocation(stub, shared_dir):
    content = (shared_dir / "images" / "face-6.jpg").read_bytes()
    request = pb.InvokeRequest(input=pb.ModelInput(id="identical", content=content))
    results = await asyncio.gather(*(stub.Invoke(request) for _ in range(20)))
    first = results[0].invocation
    assert first.state == pb.Invocation.STATE_SUCCEEDED
    assert all(r.invocation == first for r in results)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("input_", "code", "message"),
    [
        (pb.ModelInput(id="bad/id", content=b"x"), grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
        (pb.ModelInput(id="empty"), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (
            pb.ModelInput(id="garbage", content=b"this is not an image"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "image",
        ),
        (
            pb.ModelInput(id="truncated", content=_png(64, 64)[:60]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "image",
        ),
        (
            pb.ModelInput(id="bomb", content=_png(8000, 6000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "pixels",
        ),
        (
            pb.ModelInput(id="huge", content=b"\xff\xd8\xff" + bytes(MAX_CONTENT)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "limit",
        ),
    ],
    ids=["bad-id", "empty", "garbage", "truncated", "pixel-bomb", "too-large"],
)
async def test_bad_input_is_rejected_and_not_stored(stub, input_, code, message):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Invoke(pb.InvokeRequest(input=input_))
    assert raised.value.code() == code
    assert message in raised.value.details()
    if input_.id and "/" not in input_.id:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetInvocation(pb.GetInvocationRequest(id=input_.id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_model_is_not_found(stub, shared_dir):
    content = (shared_dir / "images" / "face-5.jpg").read_bytes()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Invoke(
            pb.InvokeRequest(input=pb.ModelInput(id="m", content=content), model="yolo")
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_errors(stub):
    for invocation_id, code in (
        ("never-stored", grpc.StatusCode.NOT_FOUND),
        ("bad id", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id))
        assert raised.value.code() == code, invocation_id


async def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.v1.InferenceService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert "inference.v1.InferenceService" in names
    assert "grpc.health.v1.Health" in names


def test_sigterm_drains_in_flight_calls_then_exits_0(shared_dir, tmp_path):
    """`inference-service serve` as a real process: a call in flight when SIGTERM
    arrives still completes OK, and the process exits with status 0."""
    port = free_port()
    env = {
        **os.environ,
        "INFERENCE_STORE": "memory",
        "INFERENCE_PORT": str(port),
        "INFERENCE_SHARED_DIR": str(shared_dir),
        "INFERENCE_WORKERS": "1",
        "INFERENCE_METRICS_PORT": "0",
    }
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_service", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        # Large images on one worker: the calls queue up, so SIGTERM lands while they run.
        big = Image.linear_gradient("L").resize((6000, 4000)).convert("RGB")
        buffer = io.BytesIO()
        big.save(buffer, format="JPEG", quality=90)
        content = buffer.getvalue()
        assert len(content) < MAX_CONTENT

        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 2 * MAX_CONTENT)]
        ) as chan:
            grpc.channel_ready_future(chan).result(timeout=10)
            stub = pb_grpc.InferenceServiceStub(chan)
            futures = [
                stub.Invoke.future(
                    pb.InvokeRequest(input=pb.ModelInput(id=f"drain-{i}", content=content))
                )
                for i in range(4)
            ]
            time.sleep(0.2)
            assert not all(f.done() for f in futures), "calls ended before SIGTERM was sent"
            process.send_signal(signal.SIGTERM)
            responses = [f.result(timeout=30) for f in futures]
        assert all(r.invocation.state == pb.Invocation.STATE_SUCCEEDED for r in responses)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_reference_file_lists_every_shared_image(shared_dir, reference):
    images = {p.name for p in (shared_dir / "images").iterdir() if p.suffix in {".jpg", ".png"}}
    assert images == set(reference["images"])
    assert len(images) == 16
