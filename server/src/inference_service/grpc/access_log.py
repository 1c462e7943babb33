"""One log line per call (logger ``inference_service.access``): request id, method, status,
latency and the invocation id. Never the content, nor metadata keys or values.

The request id is the ``x-request-id`` that Envoy puts on every request it forwards (a client's
own is kept); a call without one gets a fresh one. Health checks log at DEBUG (Envoy sends one
a second); everything else at INFO. With ``INFERENCE_LOG_FORMAT=json`` the fields are keys of
the line's JSON object (``inference_service.logs``).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import grpc

from inference_service.grpc.calls import UnaryCallObserver

logger = logging.getLogger("inference_service.access")

REQUEST_ID_HEADER = "x-request-id"
_QUIET_PREFIX = "/grpc.health.v1.Health/"
# What a logged id may look like; anything else (a malformed id, a strange header) is replaced,
# so that a line never carries control characters or arbitrary client text.
_SAFE_ID = re.compile(r"[A-Za-z0-9._~:-]{0,128}")
INVALID = "(invalid)"


def _safe(value: str) -> str:
    return value if _SAFE_ID.fullmatch(value) else INVALID


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and value:
            return _safe(value)
    return uuid.uuid4().hex


def _invocation_id(request: Any, response: Any) -> str:
    invocation = getattr(response, "invocation", None)
    if invocation is not None and invocation.id:
        return invocation.id  # also an id the server assigned
    model_input = getattr(request, "input", None)
    if model_input is not None and hasattr(model_input, "id"):
        return model_input.id
    value = getattr(request, "id", "")
    return value if isinstance(value, str) else ""


class AccessLogInterceptor(UnaryCallObserver):
    """Logs every unary call once it has its status."""

    def call_started(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _request_id(context)

    def call_finished(
        self,
        state: Any,
        method: str,
        request: Any,
        code: grpc.StatusCode,
        response: Any,
        seconds: float,
    ) -> None:
        level = logging.DEBUG if method.startswith(_QUIET_PREFIX) else logging.INFO
        if not logger.isEnabledFor(level):
            return
        invocation_id = _safe(_invocation_id(request, response))
        latency_ms = round(seconds * 1000, 3)
        logger.log(
            level,
            "%s %s %.1fms request_id=%s invocation_id=%s",
            method,
            code.name,
            latency_ms,
            state,
            invocation_id,
            extra={
                "fields": {
                    "event": "rpc",
                    "request_id": state,
                    "method": method,
                    "status": code.name,
                    "latency_ms": latency_ms,
                    "invocation_id": invocation_id,
                }
            },
        )
