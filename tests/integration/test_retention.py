"""INFERENCE_RETENTION on a real server (gRPC, the session's Cassandra, the cache in front):
expired invocations disappear from GetInvocation and ListInvocations, on every table at once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_service.app import Application
from inference_service.settings import Settings

RETENTION_S = 6


@pytest.fixture
async def server(cassandra_endpoint, shared_dir: Path):
    settings = Settings(
        port=0,
        store="cassandra",
        shared_dir=shared_dir,
        workers=1,
        metrics_enabled=False,
        retention=f"{RETENTION_S}s",
        cassandra_contact_points=list(cassandra_endpoint.contact_points),
        cassandra_port=cassandra_endpoint.port,
        cassandra_keyspace=cassandra_endpoint.keyspace,
    )
    assert settings.cassandra_default_ttl_s == RETENTION_S
    app = Application(settings)
    await app.start()
    yield app
    await app.stop(grace=1)


async def test_expired_invocations_disappear_from_get_and_list(server, shared_dir: Path) -> None:
    run = uuid.uuid4().hex[:8]
    content = (shared_dir / "images" / "face-2.jpg").read_bytes()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        invocation_id = f"retained-{run}"
        request = pb.InvokeRequest(
            input=pb.ModelInput(id=invocation_id, content=content, metadata={"run": run})
        )
        await stub.Invoke(request, timeout=30)
        listing = pb.ListInvocationsRequest(filter=f'metadata.run = "{run}"')
        got = await stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id), timeout=10)
        assert got.invocation.input.content == content  # and now in this server's cache
        listed = await stub.ListInvocations(listing, timeout=10)
        assert [i.id for i in listed.invocations] == [invocation_id]

        await asyncio.sleep(RETENTION_S + 1)

        for view in (pb.INVOCATION_VIEW_FULL, pb.INVOCATION_VIEW_BASIC):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetInvocation(
                    pb.GetInvocationRequest(id=invocation_id, view=view), timeout=10
                )
            assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        listed = await stub.ListInvocations(listing, timeout=10)
        assert list(listed.invocations) == []
        assert listed.next_page_token == ""
