"""CachedHandlers: the interceptors it holds run once per method, in order, not once per call."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from inference_service.grpc.handler_cache import CachedHandlers


class Tagging(grpc.aio.ServerInterceptor):
    """Wraps a unary-unary handler so that its answer records this interceptor's tag."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.runs = 0

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.runs += 1
        handler = await continuation(details)
        if handler is None:
            return None
        inner = handler.unary_unary

        async def tagged(request: Any, context: Any) -> Any:
            return [self.tag, *await inner(request, context)]

        return grpc.unary_unary_rpc_method_handler(tagged)


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _served(request: Any, context: Any) -> list[str]:
    return ["handler"]


def test_handlers_are_made_once_per_method_and_keep_the_order() -> None:
    outer, inner = Tagging("outer"), Tagging("inner")
    cache = CachedHandlers([outer, inner])
    lookups: list[str] = []

    async def continuation(details: Any) -> Any:
        lookups.append(details.method)
        if details.method == "/unknown/Method":
            return None
        return grpc.unary_unary_rpc_method_handler(_served)

    async def scenario() -> None:
        first = await cache.intercept_service(continuation, Details("/a.S/M"))
        second = await cache.intercept_service(continuation, Details("/a.S/M"))
        assert second is first
        assert await first.unary_unary(None, None) == ["outer", "inner", "handler"]
        other = await cache.intercept_service(continuation, Details("/a.S/N"))
        assert other is not first
        # Unknown methods are looked up every time (nothing kept for them).
        assert await cache.intercept_service(continuation, Details("/unknown/Method")) is None
        assert await cache.intercept_service(continuation, Details("/unknown/Method")) is None

    asyncio.run(scenario())
    assert lookups == ["/a.S/M", "/a.S/N", "/unknown/Method", "/unknown/Method"]
    assert outer.runs == inner.runs == 4
