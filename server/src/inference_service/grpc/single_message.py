"""Unary calls must carry exactly one complete request message: refused at once otherwise.

grpc.aio runs a unary-request handler (unary-unary, unary-stream) only once a message has
arrived. When the client half-closes without one (no DATA, a gRPC frame cut short, a 5-byte
header announcing more than follows), grpc-core reports "no message" and grpc.aio returns
without sending any status (it takes it for a call cancelled at its start): the call stays
open until the client gives up or a proxy's timeout cuts it (issue 18: 60 s through Envoy,
forever on the server's own port). A second message on a unary call is dropped silently. No
interceptor can see either: the handler is never entered, or has already returned.

``SingleMessageInterceptor`` re-registers every unary-request handler as a stream-request one
that reads the request stream to its end: exactly one message is handed to the original
handler; none, or more than one, is ``INVALID_ARGUMENT`` at once. A client's unary call sends
its message and the end of its stream together, so nothing waits longer than before. It must
be the first interceptor (the outermost), so that every other one still sees unary handlers.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

logger = logging.getLogger(__name__)

NO_MESSAGE = (
    "the request stream ended without a complete request message (no message, or an "
    "incomplete one): a unary call takes exactly one"
)
MORE_THAN_ONE_MESSAGE = "a unary call takes exactly one request message; more than one was sent"

_NOTHING = object()


async def _single(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str
) -> Any:
    """The one message of ``requests``, read to the end of the stream; aborts otherwise."""
    request: Any = _NOTHING
    async for message in requests:
        if request is not _NOTHING:
            logger.info("%s refused: more than one request message", method)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MORE_THAN_ONE_MESSAGE)
        request = message
    if request is _NOTHING:
        logger.info("%s refused: no complete request message", method)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_MESSAGE)
    return request


class SingleMessageInterceptor(grpc.aio.ServerInterceptor):
    """Turns unary-request handlers into stream-request ones that insist on one message."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        unary_unary = handler.unary_unary
        unary_stream = handler.unary_stream
        if unary_unary is not None and inspect.iscoroutinefunction(unary_unary):

            async def one_to_one(requests: AsyncIterator[Any], context: Any) -> Any:
                return await unary_unary(await _single(requests, context, method), context)

            make: Callable[..., grpc.RpcMethodHandler] = grpc.stream_unary_rpc_method_handler
            behaviour: Callable[..., Any] = one_to_one
        elif unary_stream is not None and inspect.isasyncgenfunction(unary_stream):

            async def one_to_many(requests: AsyncIterator[Any], context: Any) -> Any:
                request = await _single(requests, context, method)
                async for response in unary_stream(request, context):
                    yield response

            make, behaviour = grpc.stream_stream_rpc_method_handler, one_to_many
        elif unary_stream is not None and inspect.iscoroutinefunction(unary_stream):

            async def one_to_written(requests: AsyncIterator[Any], context: Any) -> Any:
                return await unary_stream(await _single(requests, context, method), context)

            make, behaviour = grpc.stream_stream_rpc_method_handler, one_to_written
        else:  # stream-request handlers, and synchronous ones (none here)
            return handler
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
