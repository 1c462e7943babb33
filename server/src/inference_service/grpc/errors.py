"""The one place where errors become gRPC statuses.

Domain errors (``inference_service.errors``) carry their status code and a
client-safe message. Anything else is a bug: it is logged with its traceback
and the client gets INTERNAL with a fixed message, never the details.

A request message that cannot be decoded (corrupt wire format, invalid UTF-8 in a string
field) never reaches a servicer: grpc.aio would answer UNKNOWN with the parser's message. The
interceptor wraps every handler's deserializer so that such a message becomes
``UNDECODABLE_REQUEST``, which the guarded handler answers with INVALID_ARGUMENT and a fixed
message.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from inference_service.errors import InferenceError, InvalidArgumentError, ServerBusyError

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"
UNDECODABLE_REQUEST_MESSAGE = (
    "the request message cannot be decoded: corrupt protobuf wire format or invalid UTF-8 in a "
    "string field"
)


class _UndecodableRequest:
    """The marker a wrapped deserializer returns for a message it cannot decode."""

    def __repr__(self) -> str:
        return "UNDECODABLE_REQUEST"


UNDECODABLE_REQUEST = _UndecodableRequest()


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-visible message for ``error``."""
    if isinstance(error, InferenceError):
        code = grpc.StatusCode[error.code]
        if code is grpc.StatusCode.INTERNAL:
            return code, INTERNAL_MESSAGE
        return code, str(error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def tolerant_deserializer(
    deserialize: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """``deserialize``, returning ``UNDECODABLE_REQUEST`` instead of raising."""
    if deserialize is None:
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, and whatever else a parser may raise
            logger.debug("undecodable request message (%d bytes): %r", len(data), exc)
            return UNDECODABLE_REQUEST

    return tolerant


async def _abort(context: grpc.aio.ServicerContext, method: str, error: BaseException) -> None:
    code, message = status_for(error)
    if isinstance(error, ServerBusyError):
        logger.warning("%s refused: %s", method, error)
    elif code is grpc.StatusCode.INTERNAL or code is grpc.StatusCode.UNAVAILABLE:
        logger.error("%s failed: %r", method, error, exc_info=error)
    await context.abort(code, message)


async def _undecodable(context: grpc.aio.ServicerContext, method: str) -> None:
    await _abort(context, method, InvalidArgumentError(UNDECODABLE_REQUEST_MESSAGE))


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: raised errors of unary-unary handlers become statuses, and request
    messages that cannot be decoded become INVALID_ARGUMENT, for async handlers of every kind."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            make, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
            guarded = _guarded_unary_unary(behaviour, method)
        elif handler.unary_stream is not None:
            make, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
            guarded = _guarded_unary_stream(behaviour, method)
        elif handler.stream_unary is not None:
            make, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
            guarded = _guarded_stream_request(behaviour, method)
        else:
            make, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
            guarded = _guarded_stream_request(behaviour, method)
        if guarded is None:  # a synchronous handler (none here): left as it is
            return handler
        return make(
            guarded,
            request_deserializer=tolerant_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


# grpc.aio runs a handler by its kind of function (coroutine function, async generator function
# or plain function for a synchronous one), so each wrapper is of the kind of what it wraps.


def _guarded_unary_unary(inner: Callable[..., Any], method: str) -> Callable[..., Any] | None:
    if not inspect.iscoroutinefunction(inner):
        return None

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is UNDECODABLE_REQUEST:
            await _undecodable(context, method)
        try:
            return await inner(request, context)
        except InferenceError as error:
            await _abort(context, method, error)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception:
            logger.exception("%s failed with an unexpected error", method)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return guarded


def _guarded_unary_stream(inner: Callable[..., Any], method: str) -> Callable[..., Any] | None:
    if inspect.isasyncgenfunction(inner):

        async def guarded_generator(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            if request is UNDECODABLE_REQUEST:
                await _undecodable(context, method)
            async for response in inner(request, context):
                yield response

        return guarded_generator
    if inspect.iscoroutinefunction(inner):  # writes its responses with context.write

        async def guarded_writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is UNDECODABLE_REQUEST:
                await _undecodable(context, method)
            return await inner(request, context)

        return guarded_writer
    return None


def _guarded_stream_request(inner: Callable[..., Any], method: str) -> Callable[..., Any] | None:
    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if request is UNDECODABLE_REQUEST:
                await _undecodable(context, method)
            yield request

    if inspect.isasyncgenfunction(inner):

        async def guarded_generator(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for response in inner(checked(requests, context), context):
                yield response

        return guarded_generator
    if inspect.iscoroutinefunction(inner):

        async def guarded_coroutine(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> Any:
            return await inner(checked(requests, context), context)

        return guarded_coroutine
    return None
