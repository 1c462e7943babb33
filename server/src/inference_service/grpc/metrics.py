"""Per-RPC Prometheus metrics: calls started, handled (by status code), their latency, and the
calls in flight, by service and method (``inference_service.metrics.Metrics``)."""

from __future__ import annotations

from typing import Any

import grpc

from inference_service.grpc.calls import UnaryCallObserver, split_method
from inference_service.metrics import Metrics


class MetricsInterceptor(UnaryCallObserver):
    """Feeds ``grpc_server_*`` metrics from every unary call."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def call_started(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        labels = split_method(method)
        self._metrics.started.labels(*labels).inc()
        self._metrics.in_flight.labels(*labels).inc()
        return labels

    def call_finished(
        self,
        state: Any,
        method: str,
        request: Any,
        code: grpc.StatusCode,
        response: Any,
        seconds: float,
    ) -> None:
        self._metrics.in_flight.labels(*state).dec()
        self._metrics.handled.labels(*state, code.name).inc()
        self._metrics.handling.labels(*state, code.name).observe(seconds)
