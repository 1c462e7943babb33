"""The request id of a call in the server's log records: a real grpc.aio server with the
interceptors of the application (request id first, then the error mapping) and a tiny service
that logs, called by a real client with and without ``x-request-id``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from inference_service import errors
from inference_service.grpc.errors import ErrorMappingInterceptor
from inference_service.grpc.request_id import (
    INVALID_REQUEST_ID,
    NO_REQUEST_ID,
    RequestIdInterceptor,
    RequestIdLogFilter,
    current_request_id,
    request_id_of,
)

METHOD = "/test.Echo/Say"
HEALTH = "/grpc.health.v1.Health/Check"
service_logger = logging.getLogger("test.echo")


async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    service_logger.info("saying %r", request)
    if request == b"unavailable":
        raise errors.StoreUnavailableError("store down")
    return request


@pytest.fixture
async def target() -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[RequestIdInterceptor(), ErrorMappingInterceptor()])
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
    }
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("test.Echo", handlers),
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": handlers["Say"]}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, its records given a ``request_id`` as the server's log handler gives them."""
    caplog.handler.addFilter(RequestIdLogFilter())
    caplog.set_level(logging.INFO)
    return caplog


async def call(target: str, body: bytes, metadata=None, method: str = METHOD) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.unary_unary(method)(body, metadata=metadata, timeout=10)


def lines(logs: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(r.name, r.request_id, r.getMessage()) for r in logs.records]  # type: ignore[attr-defined]


async def test_every_line_of_a_call_carries_its_request_id(target, logs):
    await call(target, b"hello", metadata=[("x-request-id", "4f1c-AB.9:x_y")])
    said, done = lines(logs)
    assert said == ("test.echo", "4f1c-AB.9:x_y", "saying b'hello'")
    assert done[:2] == ("inference_service.grpc.request_id", "4f1c-AB.9:x_y")
    assert done[2].startswith(f"{METHOD} OK ")
    assert current_request_id.get() == NO_REQUEST_ID  # reset after the call


async def test_an_error_line_carries_the_request_id_and_the_status(target, logs):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(target, b"unavailable", metadata=[("x-request-id", "req-2")])
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    by_logger = {name: (rid, message) for name, rid, message in lines(logs)}
    assert by_logger["inference_service.grpc.errors"][0] == "req-2"
    rid, message = by_logger["inference_service.grpc.request_id"]
    assert rid == "req-2" and message.startswith(f"{METHOD} UNAVAILABLE ")


async def test_without_an_id_lines_say_so_and_a_forged_one_is_not_logged(target, logs):
    await call(target, b"plain")
    forged = "x\nERROR forged line"
    await call(target, b"forged", metadata=[("x-request-id", "a" * 129)])
    await call(target, b"forged", metadata=[("x-request-id", forged.replace("\n", " "))])
    ids = [rid for name, rid, _ in lines(logs) if name == "test.echo"]
    assert ids == [NO_REQUEST_ID, INVALID_REQUEST_ID, INVALID_REQUEST_ID]
    assert not any("forged line" in message for _, _, message in lines(logs) if "Say" in message)


async def test_health_checks_get_no_line_of_their_own(target, logs):
    await call(target, b"ping", metadata=[("x-request-id", "hc")], method=HEALTH)
    assert [name for name, _, _ in lines(logs)] == ["test.echo"]


def test_request_id_of_metadata():
    assert request_id_of(None) == NO_REQUEST_ID
    assert request_id_of([("other", "1")]) == NO_REQUEST_ID
    assert request_id_of([("x-request-id", "abc")]) == "abc"
    assert request_id_of([("x-request-id", b"abc")]) == INVALID_REQUEST_ID
    assert request_id_of([("x-request-id", "")]) == INVALID_REQUEST_ID
