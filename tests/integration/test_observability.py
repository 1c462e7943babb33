"""Metrics, the access log and rendering, on a real server (in-process, in-memory store, the
real model) called by a real gRPC client; ``/metrics`` scraped over HTTP."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from inference_service.app import Application
from inference_service.grpc.request_id import RequestIdLogFilter
from inference_service.logs import JsonFormatter
from inference_service.metrics import start_metrics_endpoint
from inference_service.settings import Settings

SERVICE = "inference.v1.InferenceService"
CALL_LOGGER = "inference_service.grpc.request_id"  # one line per call


@pytest.fixture(scope="module")
async def server(shared_dir: Path):
    app = Application(Settings(port=0, store="memory", shared_dir=shared_dir, workers=1))
    await app.start()
    http, port = start_metrics_endpoint(app.metrics, "127.0.0.1", 0)
    app.metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield app
    http.shutdown()
    await app.stop(grace=1)


@pytest.fixture(scope="module")
async def stub(server: Application):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.InferenceServiceStub(channel)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def handled(samples: dict, method: str, code: str) -> float:
    return value(
        samples,
        "grpc_server_handled_total",
        grpc_service=SERVICE,
        grpc_method=method,
        grpc_code=code,
    )


async def test_counters_and_stage_latencies_move_with_calls(server, stub, images_dir):
    before = scrape(server.metrics_url)
    content = (images_dir / "face-2.jpg").read_bytes()
    await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="obs-1", content=content)))
    await stub.GetInvocation(pb.GetInvocationRequest(id="obs-1"))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetInvocation(pb.GetInvocationRequest(id="obs-missing"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="obs-2", content=b"nope")))
    after = scrape(server.metrics_url)

    assert handled(after, "Invoke", "OK") - handled(before, "Invoke", "OK") == 1
    assert (
        handled(after, "Invoke", "INVALID_ARGUMENT") - handled(before, "Invoke", "INVALID_ARGUMENT")
        == 1
    )
    assert handled(after, "GetInvocation", "OK") - handled(before, "GetInvocation", "OK") == 1
    assert (
        handled(after, "GetInvocation", "NOT_FOUND") - handled(before, "GetInvocation", "NOT_FOUND")
        == 1
    )
    count = "grpc_server_handling_seconds_count"
    labels = {"grpc_service": SERVICE, "grpc_method": "Invoke", "grpc_code": "OK"}
    assert value(after, count, **labels) - value(before, count, **labels) == 1
    assert (
        value(after, "grpc_server_requests_in_flight", grpc_service=SERVICE, grpc_method="Invoke")
        == 0
    )
    for stage, calls in (
        ("decode", 1),  # the second Invoke's content is refused before any decoding
        ("model", 1),
        ("store_claim", 1),
        ("store_complete", 1),
        ("store_get", 2),
    ):
        moved = value(after, "inference_stage_seconds_count", stage=stage) - value(
            before, "inference_stage_seconds_count", stage=stage
        )
        assert moved == calls, (stage, moved)
    info = [key for key in after if key[0] == "inference_model_info"]
    assert info and dict(info[0][1])["name"] == "ultraface-rfb-320"  # the default model


async def test_render_returns_a_png_with_the_boxes(server, stub, images_dir):
    content = (images_dir / "face-2.jpg").read_bytes()
    invoked = await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="obs-r", content=content)))
    body = await stub.RenderInvocation(pb.RenderInvocationRequest(id="obs-r"))
    assert body.content_type == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(body.data)).convert("RGB"))
    output = invoked.invocation.output
    assert picture.shape == (output.image_height, output.image_width, 3)
    for detection in output.detections:  # the left edge of each box is drawn in green
        x = round(detection.box.x_min)
        y = round((detection.box.y_min + detection.box.y_max) / 2)
        r, g, b = picture[y, x].astype(int)
        assert g > 200 and r < 60 and b < 60, (x, y, picture[y, x])
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.RenderInvocation(pb.RenderInvocationRequest(id="obs-none"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.RenderInvocation(pb.RenderInvocationRequest(id="no/slash"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_one_json_line_per_call_without_content_or_metadata(server, stub, images_dir, caplog):
    content = (images_dir / "face-1.jpg").read_bytes()
    secret = "do-not-log-this-value"
    caplog.handler.addFilter(RequestIdLogFilter())  # as the server's log handler has it
    caplog.set_level(logging.INFO, logger=CALL_LOGGER)
    metadata = (("x-request-id", "req-123"),)
    await stub.Invoke(
        pb.InvokeRequest(
            input=pb.ModelInput(id="obs-log", content=content, metadata={"k": secret})
        ),
        metadata=metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetInvocation(pb.GetInvocationRequest(id="bad id\n"), metadata=metadata)
    records = [r for r in caplog.records if r.name == CALL_LOGGER]
    lines = [json.loads(JsonFormatter().format(record)) for record in records]
    assert len(lines) == 2, lines
    invoke, get = lines
    assert invoke["method"] == f"/{SERVICE}/Invoke"
    assert invoke["status"] == "OK"
    assert invoke["request_id"] == "req-123"
    assert invoke["invocation_id"] == "obs-log"
    assert invoke["latency_ms"] > 0
    assert invoke["level"] == "INFO"
    assert invoke["message"].endswith(" invocation=obs-log")
    assert get["status"] == "INVALID_ARGUMENT"
    assert get["request_id"] == "req-123"
    assert get["invocation_id"] == "invalid"  # never client text that is not an id
    text = "\n".join(JsonFormatter().format(record) for record in records)
    assert secret not in text
    assert all("\n" not in JsonFormatter().format(record) for record in records)


async def test_model_aware_metrics_admission_gauges_and_process_metrics(server, stub, images_dir):
    """Per-model requests, failures and latency (labels only from the registry: an alias is
    counted under its model, an unknown name as ``unknown``), the model's run time by model,
    every served model in ``inference_model_info``, the work queue and image memory gauges,
    and ``process_*``."""
    content = (images_dir / "face-2.jpg").read_bytes()
    before = scrape(server.metrics_url)
    slim, default = "ultraface-slim-320", "ultraface-rfb-320"
    await stub.Invoke(
        pb.InvokeRequest(input=pb.ModelInput(id="obs-m1", content=content), model=slim)
    )
    await stub.Invoke(
        pb.InvokeRequest(input=pb.ModelInput(id="obs-m2", content=content), model="face-detector")
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Invoke(
            pb.InvokeRequest(input=pb.ModelInput(id="obs-m3", content=content), model="nope-9")
        )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="obs-m4", content=b"nope")))
    after = scrape(server.metrics_url)

    def moved(name: str, model: str) -> float:
        return value(after, name, model=model) - value(before, name, model=model)

    assert moved("inference_model_requests_total", slim) == 1
    assert moved("inference_model_requests_total", default) == 2  # the alias, the bad image
    assert moved("inference_model_requests_total", "unknown") == 1
    assert moved("inference_model_requests_total", "nope-9") == 0  # never a client's name
    assert moved("inference_model_request_failures_total", slim) == 0
    assert moved("inference_model_request_failures_total", default) == 1
    assert moved("inference_model_request_failures_total", "unknown") == 1
    assert moved("inference_model_request_duration_seconds_count", slim) == 1
    assert moved("inference_model_inference_seconds_count", slim) == 1
    assert moved("inference_model_inference_seconds_count", default) == 1
    models = {
        labels["name"]: labels
        for name, key in after
        if name == "inference_model_info"
        for labels in [dict(key)]
    }
    assert set(models) == {default, slim}
    assert models[default]["default"] == "true" and models[slim]["default"] == "false"
    assert all(models[name]["version"] and models[name]["runtime"] for name in models)

    settings = server.settings
    assert value(after, "inference_work_queue_capacity_requests") == (
        settings.workers + settings.work_queue_size
    )
    assert value(after, "inference_image_memory_budget_bytes") == (
        settings.image_memory_budget_bytes
    )
    assert value(after, "inference_work_queue_requests") == 0  # nothing in flight now
    assert value(after, "inference_work_queue_waiting_requests") == 0
    assert value(after, "inference_image_memory_bytes") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_cpu_seconds_total") > 0
    assert value(after, "process_open_fds") > 0
