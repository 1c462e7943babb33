"""The Cassandra store when its node goes away and comes back.

Runs on a node of its own (``outage_cassandra``), so stopping it leaves the shared one alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import os
import signal
import time
import uuid

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from devstack.cassandra import LocalCassandra
from inference_service.app import Application
from inference_service.domain import Claim, Invocation, ModelInfo, ModelInput, ModelOutput, State
from inference_service.errors import StoreUnavailableError
from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraConfig, CassandraInvocationStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

REQUEST_TIMEOUT_S = 2.0
RECOVERY_TIMEOUT_S = 30.0


def pending() -> Invocation:
    content = f"content {uuid.uuid4()}".encode()
    return Invocation(
        input=ModelInput(id=f"outage-{uuid.uuid4()}", content=content, metadata={"k": "v"}),
        content_sha256=hashlib.sha256(content).hexdigest(),
        state=State.PENDING,
        model=ModelInfo(name="face-detector", version="1"),
        create_time=dt.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        claim=Claim(uuid.uuid4().hex, dt.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)),
    )


def outage_config(node: LocalCassandra) -> CassandraConfig:
    """A store config for ``node`` with short timeouts, in a keyspace of its own."""
    return CassandraConfig(
        contact_points=(node.host,),
        port=node.native_port,
        keyspace=f"outage_{uuid.uuid4().hex[:8]}",
        request_timeout_s=REQUEST_TIMEOUT_S,
        connect_timeout_s=REQUEST_TIMEOUT_S,
        reconnect_delay_s=0.5,
        retry_budget_s=0.0,  # fail at once: this test times every failure
        create_schema=True,
    )


async def test_store_fails_fast_while_down_and_recovers_without_restart(
    outage_cassandra: LocalCassandra,
) -> None:
    node = outage_cassandra
    store = await CassandraInvocationStore.connect(outage_config(node))
    try:
        before = pending()
        assert await store.claim(before) is None

        # A node that hangs: calls time out instead of waiting for it.
        pid = node.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.get(before.id)
            assert time.monotonic() - started < REQUEST_TIMEOUT_S + 1.0
        finally:
            os.kill(pid, signal.SIGCONT)
        await _until_usable(store, before.id)

        # A node that is gone: calls fail at once.
        await asyncio.to_thread(node.stop)

        for call in (store.get(before.id), store.claim(pending()), store.complete(before)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="invocation store unavailable"):
                await call
            assert time.monotonic() - started < REQUEST_TIMEOUT_S + 1.0

        await asyncio.to_thread(node.start)

        # The claim survived the restart (pending: its content comes with the outcome).
        assert await _until_usable(store, before.id) == before.without_content()
        done = dataclasses.replace(
            before,
            state=State.SUCCEEDED,
            output=ModelOutput(detections=(), image_width=1, image_height=1),
            complete_time=dt.datetime.now(dt.UTC).replace(microsecond=0),
        )
        await store.complete(done)
        assert await store.get(before.id) == done
        assert await store.claim(pending()) is None
    finally:
        await store.close()


async def _until_usable(store: CassandraInvocationStore, invocation_id: str) -> Invocation | None:
    """``store.get(invocation_id)`` once the store answers again (the same store object)."""
    started = time.monotonic()
    while True:
        try:
            stored = await store.get(invocation_id)
        except StoreUnavailableError:
            assert time.monotonic() - started < RECOVERY_TIMEOUT_S, "the store did not recover"
            await asyncio.sleep(0.2)
            continue
        print(f"store usable again after {time.monotonic() - started:.1f}s")
        return stored


async def test_server_answers_unavailable_while_down_and_recovers(
    outage_cassandra: LocalCassandra, shared_dir
) -> None:
    """The real server: Invoke and GetInvocation get UNAVAILABLE within their deadline while
    the node is down, and work again once it is back, without a server restart."""
    node = outage_cassandra
    if not node.is_running():
        await asyncio.to_thread(node.start)
    store = await CassandraInvocationStore.connect(outage_config(node))
    app = Application(Settings(port=0, shared_dir=shared_dir, workers=1), store=store)
    await app.start()
    content = (shared_dir / "images" / "face-8.jpg").read_bytes()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            await stub.Invoke(pb.InvokeRequest(input=pb.ModelInput(id="before", content=content)))

            await asyncio.to_thread(node.stop)
            for call in (
                stub.Invoke(
                    pb.InvokeRequest(input=pb.ModelInput(id="during", content=content)), timeout=10
                ),
                stub.GetInvocation(pb.GetInvocationRequest(id="before"), timeout=10),
            ):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert raised.value.details() == "invocation store unavailable"
                assert time.monotonic() - started < 2 * REQUEST_TIMEOUT_S + 1.0

            await asyncio.to_thread(node.start)
            deadline = time.monotonic() + RECOVERY_TIMEOUT_S
            while True:
                try:
                    after = await stub.Invoke(
                        pb.InvokeRequest(input=pb.ModelInput(id="during", content=content)),
                        timeout=10,
                    )
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline, "the server did not recover"
                    await asyncio.sleep(0.2)
            assert after.invocation.state == pb.Invocation.STATE_SUCCEEDED
            before = await stub.GetInvocation(pb.GetInvocationRequest(id="before"))
            assert before.invocation.input.content == content
    finally:
        await app.stop(grace=1)
