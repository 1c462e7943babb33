"""The request id of each call, in every log line written during it.

Envoy gives every request an ``x-request-id`` (a new one at the public listener, whatever the
client sent) and passes it to the server as call metadata. ``RequestIdInterceptor`` keeps it in
a context variable while the call runs (tasks the call starts inherit it) and writes one line
per call when it ends: method, status, duration and invocation id. ``RequestIdLogFilter``, on
the log handler, adds it to every record as ``request_id`` (``-`` outside a call), so that the
log format shows it. An id that is not a short plain token (e.g. one a direct client made up to
forge log lines) is logged as ``invalid``.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterable
from typing import Any

import grpc

from inference_service.grpc.calls import UnaryCallObserver

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
NO_REQUEST_ID = "-"
INVALID_REQUEST_ID = "invalid"
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INVOCATION_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
# Envoy checks every server's health each second: no line for those.
_UNLOGGED_PREFIX = "/grpc.health.v1.Health/"

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "request_id", default=NO_REQUEST_ID
)


def request_id_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The ``x-request-id`` of call metadata: the id, ``-`` without one, ``invalid`` if it is
    not 1-128 characters of ``[A-Za-z0-9._:-]``."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and _TOKEN.fullmatch(value):
                return value
            return INVALID_REQUEST_ID
    return NO_REQUEST_ID


class RequestIdLogFilter(logging.Filter):
    """Sets ``record.request_id`` to the id of the call being served (``-`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


def invocation_id_of(request: Any, response: Any) -> str:
    """The invocation a call was about: the id of the invocation it returned (also one the
    server assigned), else the id it asked for; ``invalid`` for one that is not an id (never
    arbitrary client text in a log line), empty when there is none."""
    invocation = getattr(response, "invocation", None)
    value = invocation.id if invocation is not None and invocation.id else ""
    if not value:
        model_input = getattr(request, "input", None)
        value = getattr(model_input, "id", "") or getattr(request, "id", "")
    if not isinstance(value, str):
        return ""
    return value if not value or _INVOCATION_ID.fullmatch(value) else INVALID_REQUEST_ID


def _log_call(
    method: str, code: grpc.StatusCode, request: Any, response: Any, seconds: float
) -> None:
    """One line per call; with ``INFERENCE_LOG_FORMAT=json`` its fields are keys of their own
    (``inference_service.logs``). Never the content nor the metadata."""
    status = code.name
    latency_ms = round(seconds * 1000, 3)
    invocation_id = invocation_id_of(request, response)
    logger.info(
        "%s %s %.1f ms%s",
        method,
        status,
        latency_ms,
        f" invocation={invocation_id}" if invocation_id else "",
        extra={
            "fields": {
                "event": "rpc",
                "method": method,
                "status": status,
                "latency_ms": latency_ms,
                "invocation_id": invocation_id,
            }
        },
    )


class RequestIdInterceptor(UnaryCallObserver):
    """Runs every unary-unary call with its request id in ``current_request_id`` and logs the
    call's outcome (health checks excepted). Put it first, so that the lines of the
    interceptors after it carry the id too."""

    def call_started(
        self, method: str, request: Any, context: grpc.aio.ServicerContext
    ) -> contextvars.Token[str]:
        # Set in the call's own task: what the call does and starts inherits the id.
        return current_request_id.set(request_id_of(context.invocation_metadata()))

    def call_finished(
        self,
        state: Any,
        method: str,
        request: Any,
        code: grpc.StatusCode,
        response: Any,
        seconds: float,
    ) -> None:
        if not method.startswith(_UNLOGGED_PREFIX):
            _log_call(method, code, request, response, seconds)
        current_request_id.reset(state)
