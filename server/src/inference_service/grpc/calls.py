"""A base for interceptors that observe each unary call: when it starts, and how it ends.

``UnaryCallObserver`` wraps every unary-unary handler (streaming ones, such as health Watch and
reflection, pass through untouched) and tells its subclass the call's method, request and
invocation metadata at the start, and its gRPC status code, response and duration at the end.
Place it before ``ErrorMappingInterceptor`` (interceptors run in list order, outermost first),
so that it sees the status that mapping gives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    _, _, rest = method.partition("/")
    service, _, name = rest.partition("/")
    return service or "unknown", name or "unknown"


class UnaryCallObserver(grpc.aio.ServerInterceptor):
    """Calls ``call_started`` and ``call_finished`` around each unary call."""

    def call_started(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Returns a state object handed to ``call_finished``."""
        return None

    def call_finished(
        self,
        state: Any,
        method: str,
        request: Any,
        code: grpc.StatusCode,
        response: Any,
        seconds: float,
    ) -> None:
        """``response`` is ``None`` unless the call succeeded."""

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

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            state = self.call_started(method, request, context)
            code = grpc.StatusCode.UNKNOWN
            response = None
            try:
                response = await inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self.call_finished(
                    state, method, request, code, response, time.perf_counter() - start
                )

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
