"""Several models on one real gRPC server: ListModels and GetModel, Invoke with each model and
runtime, aliases, unknown models, an id bound to the model that first ran it, start-up failures
that leave nothing half-loaded, and reloads (in process and on SIGHUP) under load without a
failed call."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.model_fixtures import (
    RFB_ONNX,
    RFB_SHA256,
    RFB_TFLITE,
    SLIM_SHA256,
    SLIM_TFLITE,
    write_models_toml,
)
from support.reference import assert_matches_reference

from devstack.process import free_port, port_open
from inference_service.app import Application
from inference_service.artifacts import file_sha256, tree_sha256
from inference_service.models.config import ModelConfigError
from inference_service.models.loader import ModelLoadError
from inference_service.settings import Settings

RFB = "ultraface-rfb-320"
SLIM = "ultraface-slim-320"
ONNX = "ultraface-rfb-320-onnx"
SAVEDMODEL = "ultraface-rfb-320-savedmodel"
CUSTOM = "fixed-face"
TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models_file(
    shared_dir: Path, saved_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    folder = tmp_path_factory.mktemp("models-config")
    shutil.copy(shared_dir / SLIM_TFLITE, folder / "slim.tflite")
    return write_models_toml(
        folder / "models.toml",
        [
            {"name": SLIM, "source": "slim.tflite", "sha256": SLIM_SHA256},  # relative path
            {
                "name": RFB,
                "source": str(shared_dir / RFB_TFLITE),
                "aliases": ["face-detector"],
                "default": True,
            },
            {"name": ONNX, "runtime": "onnx", "source": (shared_dir / RFB_ONNX).as_uri()},
            {"name": SAVEDMODEL, "runtime": "savedmodel", "source": str(saved_model_dir)},
            {
                "name": CUSTOM,
                "runtime": "python",
                "detector": "support.custom_detector:fixed",
                "options": {"label": "blob", "version": "v1"},
            },
        ],
    )


@pytest.fixture(scope="module")
async def server(models_file: Path, shared_dir: Path):
    settings = Settings(port=0, store="memory", shared_dir=shared_dir, models_file=models_file)
    app = Application(settings)
    await app.start()
    yield app
    await app.stop(grace=1)


@pytest.fixture(scope="module")
async def stub(server: Application):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.InferenceServiceStub(channel)


def boxes(output: pb.ModelOutput) -> list[tuple[float, ...]]:
    return [
        (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score) for d in output.detections
    ]


async def test_list_models(stub, shared_dir: Path, saved_model_dir: Path) -> None:
    models = (await stub.ListModels(pb.ListModelsRequest())).models
    assert [m.name for m in models] == [RFB, CUSTOM, ONNX, SAVEDMODEL, SLIM]  # default first
    by_name = {m.name: m for m in models}
    assert by_name[RFB].is_default and not any(m.is_default for m in models[1:])
    assert list(by_name[RFB].aliases) == ["face-detector"]
    assert all(m.ready and m.load_time.seconds > 0 for m in models)
    assert {name: m.runtime for name, m in by_name.items()} == {
        RFB: "tflite/litert",
        SLIM: "tflite/litert",
        ONNX: "onnx/onnxruntime",
        SAVEDMODEL: "savedmodel/tensorflow",
        CUSTOM: "python/support.custom_detector:fixed",
    }
    assert by_name[RFB].version == RFB_SHA256
    assert by_name[SLIM].version == SLIM_SHA256
    assert by_name[ONNX].version == file_sha256(shared_dir / RFB_ONNX)
    assert by_name[SAVEDMODEL].version == tree_sha256(saved_model_dir)
    assert by_name[CUSTOM].version == "v1"
    # Kind and file name only: no server folder (issue 18; INFERENCE_EXPOSE_MODEL_SOURCES).
    assert by_name[ONNX].source == f"file .../{Path(RFB_ONNX).name}"
    assert not any(str(shared_dir) in m.source or "/tmp" in m.source for m in models)


async def test_get_model_by_name_and_alias(stub) -> None:
    listed = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    for name in (RFB, "face-detector"):
        model = (await stub.GetModel(pb.GetModelRequest(name=name))).model
        assert model == listed[RFB]
    assert (await stub.GetModel(pb.GetModelRequest(name=SLIM))).model == listed[SLIM]
    for name, code in (("yolo", grpc.StatusCode.NOT_FOUND), ("", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetModel(pb.GetModelRequest(name=name))
        assert raised.value.code() == code


@pytest.mark.parametrize("model", ["", "face-detector", RFB, ONNX, SAVEDMODEL, SLIM, CUSTOM])
async def test_invoke_each_model(stub, model: str, shared_dir: Path, reference) -> None:
    listed = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    content = (shared_dir / "images" / "face-1.jpg").read_bytes()
    invocation = (
        await stub.Invoke(
            pb.InvokeRequest(
                input=pb.ModelInput(id=f"each-{model or 'default'}", content=content), model=model
            )
        )
    ).invocation
    name = RFB if model in ("", "face-detector") else model
    assert invocation.state == pb.Invocation.STATE_SUCCEEDED
    assert (invocation.model, invocation.model_version) == (name, listed[name].version)
    expected = reference["images"]["face-1.jpg"]["boxes"]
    if name in (RFB, ONNX, SAVEDMODEL):
        assert_matches_reference(boxes(invocation.output), expected, name)
    elif name == SLIM:
        assert len(invocation.output.detections) > 30
    else:
        assert [d.label for d in invocation.output.detections] == ["blob"]
    stored = (await stub.GetInvocation(pb.GetInvocationRequest(id=invocation.id))).invocation
    assert (stored.model, stored.model_version) == (name, listed[name].version)


async def test_an_unknown_model_is_not_found_and_stores_nothing(stub, shared_dir: Path) -> None:
    content = (shared_dir / "images" / "face-2.jpg").read_bytes()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Invoke(
            pb.InvokeRequest(input=pb.ModelInput(id="unk", content=content), model="x")
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'x' not found" in raised.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetInvocation(pb.GetInvocationRequest(id="unk"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_id_is_bound_to_the_model_that_first_ran_it(stub, shared_dir: Path) -> None:
    content = (shared_dir / "images" / "face-3.jpg").read_bytes()
    model_input = pb.ModelInput(id="bound", content=content)
    first = await stub.Invoke(pb.InvokeRequest(input=model_input, model=SLIM))
    again = await stub.Invoke(pb.InvokeRequest(input=model_input, model=RFB))
    assert first.invocation.model == again.invocation.model == SLIM
    assert again.invocation == first.invocation and (first.replayed, again.replayed) == (
        False,
        True,
    )
    other = pb.ModelInput(id="bound", content=(shared_dir / "images" / "face-2.jpg").read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Invoke(pb.InvokeRequest(input=other, model=SLIM))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS


# --- start-up failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("models", "error", "message"),
    [
        ([{"name": "m", "source": "s3://"}], ModelLoadError, "model 'm'"),
        ([{"name": "m", "source": "/no/such/model.tflite"}], ModelLoadError, "does not exist"),
        (
            [{"name": "m", "source": "<rfb>", "sha256": "1" * 64}],
            ModelLoadError,
            "expected 1111",
        ),
        ([{"name": "m", "runtime": "onnx", "source": "<rfb>"}], ModelLoadError, "not a usable"),
        ([{"name": "m", "source": "http://127.0.0.1:9/m.tflite"}], ModelConfigError, "sha256"),
        ([{"name": "m"}, {"name": "m", "source": "x"}], ModelConfigError, "source"),
    ],
    ids=["bad-uri", "missing", "checksum", "wrong-runtime", "http-unpinned", "invalid-config"],
)
async def test_a_bad_model_fails_the_start_with_a_clear_message(
    models, error, message, tmp_path: Path, shared_dir: Path
) -> None:
    good = {"name": "good", "runtime": "python", "detector": "support.custom_detector:fixed"}
    for model in models:
        if model.get("source") == "<rfb>":
            model["source"] = str(shared_dir / RFB_TFLITE)
    path = write_models_toml(tmp_path / "models.toml", [good, *models])
    from support import custom_detector

    made = len(custom_detector.MADE)
    app = Application(Settings(port=0, store="memory", models_file=path))
    with pytest.raises(error, match=message):
        await app.start()
    assert app.port is None  # never served
    assert all(detector.closed for detector in custom_detector.MADE[made:])


# --- reload --------------------------------------------------------------------------------


async def test_reload_under_load_fails_no_call(tmp_path: Path, shared_dir: Path) -> None:
    """The default model's file is replaced by another version while clients keep invoking:
    every call succeeds, each on one version or the other; health stays SERVING; the old
    version is closed once its calls are done."""
    model_file = tmp_path / "model.tflite"
    shutil.copy(shared_dir / RFB_TFLITE, model_file)
    config = write_models_toml(tmp_path / "models.toml", [{"name": "m", "source": "model.tflite"}])
    app = Application(Settings(port=0, store="memory", models_file=config, workers=2))
    await app.start()
    content = (shared_dir / "images" / "face-5.jpg").read_bytes()
    versions: list[str] = []
    failures: list[BaseException] = []
    health_seen: set[int] = set()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            stop = asyncio.Event()

            async def client(index: int) -> None:
                count = 0
                while not stop.is_set():
                    count += 1
                    try:
                        reply = await stub.Invoke(
                            pb.InvokeRequest(
                                input=pb.ModelInput(id=f"load-{index}-{count}", content=content)
                            ),
                            timeout=30,
                        )
                        versions.append(reply.invocation.model_version)
                    except grpc.aio.AioRpcError as error:
                        failures.append(error)

            async def watch_health() -> None:
                while not stop.is_set():
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
                    health_seen.add(reply.status)
                    await asyncio.sleep(0.05)

            old = app.models.loaded()["m"]
            tasks = [asyncio.create_task(client(i)) for i in range(4)]
            tasks.append(asyncio.create_task(watch_health()))
            await asyncio.sleep(1.0)
            shutil.copy(shared_dir / SLIM_TFLITE, model_file)
            assert await app.reload()
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*tasks)
            listed = (await stub.ListModels(pb.ListModelsRequest())).models
    finally:
        await app.stop(grace=1)
    assert failures == []
    assert RFB_SHA256 in versions and SLIM_SHA256 in versions
    first_slim = versions.index(SLIM_SHA256)
    assert set(versions[first_slim + 8 :]) == {SLIM_SHA256}  # at most the calls in flight
    assert health_seen == {health_pb2.HealthCheckResponse.SERVING}
    assert [(m.name, m.version) for m in listed] == [("m", SLIM_SHA256)]
    assert old.closed


async def test_a_failed_reload_keeps_the_models(tmp_path: Path, shared_dir: Path) -> None:
    config = write_models_toml(
        tmp_path / "models.toml", [{"name": "m", "source": str(shared_dir / RFB_TFLITE)}]
    )
    app = Application(Settings(port=0, store="memory", models_file=config))
    await app.start()
    try:
        before = app.models.loaded()["m"]
        write_models_toml(config, [{"name": "m", "source": str(tmp_path / "gone.tflite")}])
        assert not await app.reload()
        assert app.models.loaded()["m"] is before and not before.closed
        config.write_text("this is [not toml")
        assert not await app.reload()
        # unchanged configuration and artifact: the same loaded model goes on
        write_models_toml(config, [{"name": "m", "source": str(shared_dir / RFB_TFLITE)}])
        assert await app.reload()
        assert app.models.loaded()["m"] is before
    finally:
        await app.stop(grace=1)


def test_sighup_reloads_a_running_server(tmp_path: Path, shared_dir: Path) -> None:
    """`inference-service serve` as a real process: SIGHUP loads the new version of a model
    (and a model added to the file) while calls keep succeeding."""
    model_file = tmp_path / "model.tflite"
    shutil.copy(shared_dir / RFB_TFLITE, model_file)
    config = write_models_toml(tmp_path / "models.toml", [{"name": "m", "source": "model.tflite"}])
    port = free_port()
    env = {
        **os.environ,
        "INFERENCE_STORE": "memory",
        "INFERENCE_PORT": str(port),
        "INFERENCE_MODELS_FILE": str(config),
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inference_service", "serve"], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        content = (shared_dir / "images" / "face-6.jpg").read_bytes()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)

            def invoke(index: int) -> str:
                request = pb.InvokeRequest(input=pb.ModelInput(id=f"hup-{index}", content=content))
                return stub.Invoke(request, timeout=30).invocation.model_version

            assert invoke(0) == RFB_SHA256
            shutil.copy(shared_dir / SLIM_TFLITE, model_file)
            write_models_toml(
                config,
                [
                    {"name": "m", "source": "model.tflite"},
                    {"name": "n", "runtime": "python", "detector": "support.custom_detector:fixed"},
                ],
            )
            process.send_signal(signal.SIGHUP)
            seen = []
            deadline = time.monotonic() + 60
            while not seen or seen[-1] != SLIM_SHA256:
                assert time.monotonic() < deadline, log_path.read_text()
                seen.append(invoke(len(seen) + 1))
            assert set(seen) <= {RFB_SHA256, SLIM_SHA256}
            names = [m.name for m in stub.ListModels(pb.ListModelsRequest()).models]
            assert names == ["m", "n"]
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_to_start_with_a_model_it_cannot_load(tmp_path: Path) -> None:
    """`inference-service serve` with a model whose object is missing: exit status 2 and one
    clear line, never a server listening with part of its models."""
    config = write_models_toml(
        tmp_path / "models.toml", [{"name": "m", "source": str(tmp_path / "missing.tflite")}]
    )
    port = free_port()
    env = {
        **os.environ,
        "INFERENCE_STORE": "memory",
        "INFERENCE_PORT": str(port),
        "INFERENCE_MODELS_FILE": str(config),
    }
    result = subprocess.run(
        [sys.executable, "-m", "inference_service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot start: model 'm'" in result.stderr
    assert "missing.tflite does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not port_open("127.0.0.1", port)
