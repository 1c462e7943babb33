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
* ``inference_model_info{name, version}``: the loaded model (always 1).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from inference_service.domain import (
    Invocation,
    InvocationPage,
    InvocationQuery,
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
        self.model = Info("inference_model", "The model this server runs.", registry=r)
        for result in ("hit", "miss"):
            self.cache_requests.labels(result)
        self.tracer: Any = None
        """An OpenTelemetry tracer when tracing is on: each stage is then a span too."""

    def set_model(self, info: ModelInfo) -> None:
        self.model.info({"name": info.name, "version": info.version})

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
        metrics.set_model(inner.info)

    @property
    def info(self) -> ModelInfo:
        return self._inner.info

    def detect(self, image: np.ndarray) -> ModelOutput:
        with self._metrics.time_stage("model"):
            return self._inner.detect(image)

    def close(self) -> None:
        self._inner.close()


class InstrumentedStore:
    """An ``InvocationStore`` whose calls are timed (``store_<operation>``) and whose errors are
    counted; put it behind the cache, so that it sees what reaches the real store."""

    def __init__(self, inner: InvocationStore, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def _call(self, operation: str, call: Callable[[], Any], *, trace: bool = True) -> Any:
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
