"""An erasure that reaches the disk, on a real node of its own: an image carrying a unique byte
marker (in a JPEG comment segment) is invoked, found on disk after a flush, deleted, and after
``inference-service purge`` no file under the node's data, commit log, hints and saved caches
directories holds the marker any more."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from devstack.cassandra import LocalCassandra
from inference_service.app import Application
from inference_service.settings import Settings
from inference_service.stores.cassandra import (
    CassandraConfig,
    CassandraInvocationStore,
    maintenance,
)

DIRECTORIES = ("data", "commitlog", "hints", "saved_caches")


def with_comment(jpeg: bytes, comment: bytes) -> bytes:
    """``jpeg`` with a COM segment (0xFFFE) holding ``comment`` right after its SOI marker."""
    assert jpeg[:2] == b"\xff\xd8"
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return jpeg[:2] + segment + jpeg[2:]


def files_holding(node: LocalCassandra, marker: bytes) -> list[Path]:
    found = []
    for name in DIRECTORIES:
        for path in (node.root / name).rglob("*"):
            if path.is_file() and marker in path.read_bytes():
                found.append(path.relative_to(node.root))
    return found


def nodetool(node: LocalCassandra, *args: str) -> str:
    done = subprocess.run(
        [*node.nodetool_command(), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_a_deleted_image_is_gone_from_every_file_after_purge(
    erasure_cassandra: LocalCassandra, shared_dir: Path
) -> None:
    node = erasure_cassandra
    marker = f"ERASE-ME-{uuid.uuid4().hex}".encode()
    content = with_comment((shared_dir / "images" / "face-2.jpg").read_bytes(), marker)
    config = CassandraConfig(
        contact_points=(node.host,), port=node.native_port, keyspace="erasure", create_schema=True
    )
    store = await CassandraInvocationStore.connect(config)
    app = Application(
        Settings(
            port=0, store="cassandra", shared_dir=shared_dir, workers=1, metrics_enabled=False
        ),
        store=store,
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            request = pb.InvokeRequest(input=pb.ModelInput(id="erase-me", content=content))
            invoked = await stub.Invoke(request, timeout=60)
            assert invoked.invocation.state == pb.Invocation.STATE_SUCCEEDED
            nodetool(node, "flush")
            on_disk = files_holding(node, marker)
            assert any(str(path).startswith("data/erasure/invocations-") for path in on_disk), (
                on_disk
            )

            await stub.DeleteInvocation(pb.DeleteInvocationRequest(id="erase-me"), timeout=30)

        lines: list[dict] = []
        maintenance.purge("erasure", node.nodetool_command(), report=lines.append)
        assert lines[-1] == {"event": "purge-done", "dry_run": False, "restart_node": True}
        drained = files_holding(node, marker)
        await app.stop(grace=1)
        node.stop()  # the restart that follows a drain
        node.start(timeout=180)

        left = files_holding(node, marker)
        print(f"marker on disk after the flush: {on_disk}; after the purge: {drained}")
        assert left == [], f"the marker is still in {left} (it was in {on_disk})"
    finally:
        await app.stop(grace=1)  # idempotent


def test_the_purge_command_lists_its_steps() -> None:
    steps = maintenance.purge_steps("ks", truncate_hints=True)
    assert steps == [
        ["flush"],
        ["compact", "ks", "invocations", "invocations_by_time"],
        ["compact", "system", "paxos"],
        ["clearsnapshot", "--all"],
        ["truncatehints"],
        ["drain"],
    ]
