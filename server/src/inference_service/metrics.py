"""Prometheus metrics of one server process, and the ``/metrics`` endpoint that serves them.

Every metric lives in the ``Metrics`` object's own registry (not the global one), so several
servers in one process (tests) never share counters. What is measured, and where:

* per RPC (``inference_service.grpc.metrics.MetricsInterceptor``, unary calls):
  ``grpc_server_started_total``, ``grpc_server_handled_total`` and the histogram
  ``grpc_server_handling_seconds`` by service, method and status code (``grpc_code``), and
  ``grpc_server_requests_in_flight``;
* stages (``inference_stage_seconds{stage}``): ``decode`` (image decoding and hashing),
  ``model`` (the detector), ``render``, and the store's reads and writes (``store_claim``,
  ``store_take_over``, ``store_complete`` (content and outcome), ``store_get``), wrapped around
  the components by ``timed_decode``, ``InstrumentedDetector`` and ``InstrumentedStore``;
* ``inference_store_errors_total{operation, error}``: failed store calls;
* ``inference_cache_requests_total{result="hit"|"miss"}``: GetInvocation reads answered by the
  process's cache or by the store (``CacheObserver``);
* per model (``model``: a name from the model registry, ``unknown`` for a name it does not
  serve, so the label set stays bounded): ``inference_model_requests_total``,
  ``inference_model_request_failures_total`` (a gRPC error, or an invocation that ``FAILED``)
  and the histogram ``inference_model_request_duration_seconds`` of Invoke calls (fed by the
  same interceptor), and ``inference_model_inference_seconds``: the model's own run time
  (``InstrumentedDetector``, the ``model`` stage by model);
* ``inference_model_info{name, version, runtime, default}``: every served model (1 each);
* admission control (``watch_admission``): ``inference_work_queue_requests`` (admitted now),
  ``inference_work_queue_waiting_requests``, ``inference_work_queue_capacity_requests``,
  ``inference_image_memory_bytes`` (of the budget, held now) and
  ``inference_image_memory_budget_bytes``;
* ``process_*`` (CPU seconds, resident memory, open file descriptors, start time) and
  ``python_info``: prometheus_client's process and platform collectors.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import start_http_server

from inference_service.domain import (
    Invocation,
    InvocationPage,
    InvocationQuery,
    ModelDescription,
    ModelInfo,
    ModelOutput,
)
from inference_service.ports import Detector, InvocationStore

logger = logging.getLogger(__name__)

# Seconds: a GetInvocation from the cache is well under a millisecond, an Invoke of a 40 MP image
# several seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

T = TypeVar("T")

# Set by ``CacheObserver`` around a read; ``InstrumentedStore`` (the store behind the cache)
# marks it when the read reached the store.
_store_read: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "store_read", default=None
)


class Metrics:
    """The metrics of one server process, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        rpc = ("grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", rpc, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*rpc, "grpc_code"),
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, by status code.",
            (*rpc, "grpc_code"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "grpc_server_requests_in_flight", "RPCs being handled now.", rpc, registry=r
        )
        self.stage = Histogram(
            "inference_stage_seconds",
            "Time spent in one stage of a call: decode, model, render, store_<operation>.",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "inference_store_errors_total",
            "Store calls that raised, by operation and error class.",
            ("operation", "error"),
            registry=r,
        )
        self.cache_requests = Counter(
            "inference_cache_requests_total",
            "Invocation reads answered by the process's cache (hit) or by the store (miss).",
            ("result",),
            registry=r,
        )
        self.model = Gauge(
            "inference_model_info",
            "Every model this server serves (1 each), by name, version, runtime and whether it "
            "is the default.",
            ("name", "version", "runtime", "default"),
            registry=r,
        )
        self.model_requests = Counter(
            "inference_model_requests_total",
            "Invoke calls, by model (unknown: a name the registry does not serve).",
            ("model",),
            registry=r,
        )
        self.model_failures = Counter(
            "inference_model_request_failures_total",
            "Invoke calls that failed (a gRPC error, or an invocation that FAILED), by model.",
            ("model",),
            registry=r,
        )
        self.model_duration = Histogram(
            "inference_model_request_duration_seconds",
            "Time from the start of an Invoke call to its status, by model.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_inference = Histogram(
            "inference_model_inference_seconds",
            "Time the model itself ran on one image (the model stage), by model.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._model_names: dict[str, str] = {}
        self._default_model = ""
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        for result in ("hit", "miss"):
            self.cache_requests.labels(result)
        self.tracer: Any = None
        """An OpenTelemetry tracer when tracing is on: each stage is then a span too."""

    def set_models(self, models: Iterable[ModelDescription]) -> None:
        """The served models (the registry's ``list()``): ``inference_model_info`` reports each,
        and their names and aliases are the only values of the ``model`` labels."""
        models = list(models)
        names: dict[str, str] = {}
        for model in models:
            names[model.info.name] = model.info.name
            for alias in model.aliases:
                names.setdefault(alias, model.info.name)
        self._model_names = names
        self._default_model = next((m.info.name for m in models if m.is_default), "")
        self.model.clear()
        for model in models:
            self.model.labels(
                model.info.name,
                model.info.version,
                model.runtime,
                "true" if model.is_default else "false",
            ).set(1)

    def model_label(self, name: str) -> str:
        """The ``model`` label for a model name a call gave or an invocation carries: the
        registry's name for it (empty: the default model), else ``unknown``."""
        if not name:
            return self._default_model or "unknown"
        return self._model_names.get(name, "unknown")

    def watch_admission(self, admission: Any) -> None:
        """Gauges of the work queue and the image memory budget of ``admission`` (an
        ``AdmissionController``), read at each scrape."""
        r = self.registry
        gauges = (
            ("inference_work_queue_requests", "Requests admitted to the work queue now.",
             lambda: admission.admitted),
            ("inference_work_queue_waiting_requests",
             "Requests waiting for a place in the work queue or for image memory now.",
             lambda: admission.waiting),
            ("inference_work_queue_capacity_requests",
             "Places in the work queue (workers plus the queue behind them); a request that "
             "finds none within INFERENCE_ADMISSION_WAIT_S is answered busy.",
             lambda: admission.max_admitted),
            ("inference_image_memory_bytes",
             "Bytes of the image memory budget held by admitted requests now.",
             lambda: admission.memory_in_use),
            ("inference_image_memory_budget_bytes",
             "The image memory budget (INFERENCE_IMAGE_MEMORY_BUDGET_BYTES).",
             lambda: admission.memory_budget_bytes),
        )  # fmt: skip
        for name, documentation, read in gauges:
            Gauge(name, documentation, registry=r).set_function(read)

    @contextmanager
    def time_stage(self, stage: str, *, trace: bool = True) -> Iterator[None]:
        span = (
            self.tracer.start_as_current_span(f"inference.{stage}")
            if self.tracer is not None and trace
            else nullcontext()
        )
        start = time.perf_counter()
        try:
            with span:
                yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - start)


def timed_decode(
    metrics: Metrics, decode: Callable[[bytes, int], np.ndarray]
) -> Callable[[bytes, int], np.ndarray]:
    """``decode`` with its time recorded as the ``decode`` stage."""

    def decode_timed(content: bytes, max_pixels: int) -> np.ndarray:
        with metrics.time_stage("decode"):
            return decode(content, max_pixels)

    return decode_timed


class InstrumentedDetector:
    """A ``Detector`` whose ``detect`` is timed as the ``model`` stage."""

    def __init__(self, inner: Detector, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics
        # The registry's name of the model (from the model configuration): a bounded label.
        self._inference = metrics.model_inference.labels(inner.info.name)

    @property
    def info(self) -> ModelInfo:
        return self._inner.info

    def detect(self, image: np.ndarray) -> ModelOutput:
        start = time.perf_counter()
        try:
            with self._metrics.time_stage("model"):
                return self._inner.detect(image)
        finally:
            self._inference.observe(time.perf_counter() - start)

    def close(self) -> None:
        self._inner.close()


class InstrumentedStore:
    """An ``InvocationStore`` whose calls are timed (``store_<operation>``) and whose errors are
    counted; put it behind the cache, so that it sees what reaches the real store."""

    def __init__(self, inner: InvocationStore, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def _call(
        self, operation: str, call: Callable[[], Awaitable[T]], *, trace: bool = True
    ) -> T:
        with self._metrics.time_stage(f"store_{operation}", trace=trace):
            try:
                return await call()
            except Exception as error:
                self._metrics.store_errors.labels(operation, type(error).__name__).inc()
                raise

    async def claim(self, invocation: Invocation) -> Invocation | None:
        return await self._call("claim", lambda: self._inner.claim(invocation))

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        return await self._call("take_over", lambda: self._inner.take_over(stale, invocation))

    async def complete(self, invocation: Invocation) -> Invocation | None:
        return await self._call("complete", lambda: self._inner.complete(invocation))

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        marker = _store_read.get()
        if marker is not None and with_content:  # the cache's revalidation reads are BASIC
            marker[0] = True
        return await self._call(
            "get", lambda: self._inner.get(invocation_id, with_content=with_content)
        )

    async def list(self, query: InvocationQuery) -> InvocationPage:
        return await self._call("list", lambda: self._inner.list(query))

    async def delete(self, invocation_id: str) -> bool:
        return await self._call("delete", lambda: self._inner.delete(invocation_id))

    async def check(self) -> None:
        await self._call("check", self._inner.check, trace=False)  # each second: no spans

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:  # anything else of the store, untimed
        return getattr(self._inner, name)


class CacheObserver:
    """In front of a caching store: counts each ``get`` with content as a hit (the content came
    from memory; the cache still revalidates the row with a small read) or a miss (the content
    was read from the store). Reads without content are not counted."""

    def __init__(self, cache: InvocationStore, metrics: Metrics) -> None:
        self._cache = cache
        self._metrics = metrics

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        if not with_content:
            return await self._cache.get(invocation_id, with_content=False)
        marker = [False]
        token = _store_read.set(marker)
        try:
            return await self._cache.get(invocation_id, with_content=with_content)
        finally:
            _store_read.reset(token)
            self._metrics.cache_requests.labels("miss" if marker[0] else "hit").inc()

    def __getattr__(self, name: str) -> Any:  # claim, take_over, complete, check, close
        return getattr(self._cache, name)


def start_metrics_endpoint(metrics: Metrics, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``host:port`` (0: a free port) from a thread; returns the HTTP
    server (``shutdown()`` stops it) and its port."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    bound = server.server_port
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound
