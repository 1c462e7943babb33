"""Tracing (off by default): with a tracer provider, every call is a server span and each stage a
child span of it (in-memory exporter); without one, no span is made."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from inference_service.app import Application
from inference_service.settings import Settings
from inference_service.tracing import tracer_provider_from


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
async def stub(shared_dir: Path, exporter: InMemorySpanExporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(port=0, store="memory", shared_dir=shared_dir, workers=1)
    app = Application(settings, tracer_provider=provider)
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.InferenceServiceStub(channel)
    await app.stop(grace=1)


async def test_a_call_is_a_span_with_a_child_per_stage(stub, exporter, images_dir):
    exporter.clear()
    content = (images_dir / "face-2.jpg").read_bytes()
    await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="traced", content=content)))
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "/inference.v1.InferenceService/Invoke"
    children = {s.name: s for s in spans if s.parent is not None}
    for stage in ("decode", "model", "store_claim", "store_complete"):
        span = children[f"inference.{stage}"]
        assert span.context.trace_id == server.context.trace_id
        assert span.parent.span_id == server.context.span_id, stage


async def test_errors_are_recorded_on_the_server_span(stub, exporter):
    exporter.clear()
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetInvocation(pb.GetInvocationRequest(id="not-there"))
    (server,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_tracing_is_off_unless_an_endpoint_is_set() -> None:
    assert Settings().otlp_endpoint is None
    assert tracer_provider_from(None) is None
    provider = tracer_provider_from("http://127.0.0.1:4317")
    assert provider is not None
    provider.shutdown()
