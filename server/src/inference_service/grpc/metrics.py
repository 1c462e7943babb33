"""Per-RPC Prometheus metrics: calls started, handled (by status code), their latency, and the
calls in flight, by service and method; and Invoke's requests, failures and latency by model
(``inference_service.metrics.Metrics``)."""

from __future__ import annotations

from typing import Any

import grpc
from inference.v1 import inference_service_pb2 as pb

from inference_service.grpc.calls import UnaryCallObserver, split_method
from inference_service.metrics import Metrics

INVOKE_SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
# The methods that invoke a model: Invoke, and UploadInvocation (its raw-body form).
INVOKE_METHODS = ("Invoke", "UploadInvocation")


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
        metrics = self._metrics
        metrics.in_flight.labels(*state).dec()
        metrics.handled.labels(*state, code.name).inc()
        metrics.handling.labels(*state, code.name).observe(seconds)
        if state[1] in INVOKE_METHODS and state[0] == INVOKE_SERVICE:
            invocation = getattr(response, "invocation", None)
            if code == grpc.StatusCode.OK and invocation is not None:
                model = metrics.model_label(invocation.model)
                failed = invocation.state == pb.Invocation.STATE_FAILED
            else:
                model = metrics.model_label(getattr(request, "model", ""))
                failed = True
            metrics.model_requests.labels(model).inc()
            if failed:
                metrics.model_failures.labels(model).inc()
            metrics.model_duration.labels(model).observe(seconds)
