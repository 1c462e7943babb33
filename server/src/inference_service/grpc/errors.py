"""The one place where errors become gRPC statuses.

Domain errors (``inference_service.errors``) carry their status code and a
client-safe message. Anything else is a bug: it is logged with its traceback
and the client gets INTERNAL with a fixed message, never the details.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from inference_service.errors import InferenceError

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-visible message for ``error``."""
    if isinstance(error, InferenceError):
        code = grpc.StatusCode[error.code]
        if code is grpc.StatusCode.INTERNAL:
            return code, INTERNAL_MESSAGE
        return code, str(error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler so that raised errors become statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except InferenceError as error:
                code, message = status_for(error)
                if code is grpc.StatusCode.INTERNAL or code is grpc.StatusCode.UNAVAILABLE:
                    logger.error("%s failed: %r", method, error, exc_info=error)
                await context.abort(code, message)
            except (grpc.aio.AbortError, grpc.aio.UsageError):
                raise
            except Exception:
                logger.exception("%s failed with an unexpected error", method)
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
