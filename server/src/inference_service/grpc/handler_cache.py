"""Interceptors whose wrapping depends on the method alone, run once per method, not per call.

grpc.aio runs every server interceptor's ``intercept_service`` on every call: each one awaits
the next, looks the handler up again and wraps it again (new closures, a new
``RpcMethodHandler``), although for ours (``SingleMessageInterceptor``, ``RequestIdInterceptor``,
``MetricsInterceptor``, ``ErrorMappingInterceptor``) the result depends only on the method and
on the handler it wraps, which are the same for every call of that method: the per-call work is
in the wrappers, not in their making. ``CachedHandlers`` runs the interceptors it holds, in
order (the first is the outermost), on the first call of each method, and hands the handler
they made to every later call of that method at once.

Only interceptors that look at ``handler_call_details.method`` alone may go in (not at the
call's metadata: e.g. a tracing interceptor with a metadata filter stays outside). Methods
without a handler (unknown ones, answered UNIMPLEMENTED) are not cached, so what is kept is
bounded by the methods served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class CachedHandlers(grpc.aio.ServerInterceptor):
    """Runs ``interceptors`` (outermost first) once per method; see the module docstring."""

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:
        self._interceptors = tuple(interceptors)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = await self._chain(0, continuation, handler_call_details)
            if handler is not None:
                self._handlers[method] = handler
        return handler

    async def _chain(
        self, index: int, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if index == len(self._interceptors):
            return await continuation(details)

        async def inner(next_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return await self._chain(index + 1, continuation, next_details)

        return await self._interceptors[index].intercept_service(inner, details)
