"""OpenTelemetry tracing, off by default: a span per gRPC call (opentelemetry-instrumentation-grpc's
aio server interceptor, which continues a caller's trace from ``traceparent``) with a child span
per stage (``inference.decode``, ``inference.model``, ``inference.render``,
``inference.store_<operation>``; see ``inference_service.metrics``).

On when ``INFERENCE_OTLP_ENDPOINT`` is set (e.g. ``http://collector:4317``): spans are exported
over OTLP/gRPC in batches. Tests pass their own ``TracerProvider`` (an in-memory exporter).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference-service"


def tracer_provider_from(
    otlp_endpoint: str | None, *, insecure: bool = True
) -> TracerProvider | None:
    """A provider exporting to ``otlp_endpoint`` over OTLP/gRPC, or ``None`` (tracing off)."""
    if not otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=insecure))
    )
    logger.info("tracing: spans exported with OTLP to %s", otlp_endpoint)
    return provider


class ContextExecutor(Executor):
    """Runs work in ``inner`` with the submitter's context (the current span), which
    ``loop.run_in_executor`` does not carry over to the worker thread."""

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        context = contextvars.copy_context()
        return self._inner.submit(context.run, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait, cancel_futures=cancel_futures)
