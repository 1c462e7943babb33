"""The compose stack (compose.yaml + compose.airgap.yaml, the images of `make docker-images`):
images invoked through Envoy via REST and via native gRPC, detections against
``images/reference.json``, the rows read back from the Cassandra container, and the data kept when
the server container restarts and when every container is recreated on Cassandra's volume."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.compose_stack import REPO_ROOT, ComposeStack
from support.http import RestClient
from support.reference import mismatches

from inference_service.stores.cassandra import CassandraConfig, build_cluster

REST_IMAGE = "face-2.jpg"
GRPC_IMAGE = "lenna.png"
KEYSPACE = "inference"  # the server's default (compose.yaml sets no other)


def boxes(invocation: pb.Invocation) -> list[tuple[float, ...]]:
    return [
        (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score)
        for d in invocation.output.detections
    ]


def from_rest(body: dict[str, Any]) -> pb.Invocation:
    return json_format.ParseDict(body["invocation"], pb.Invocation())


@pytest.fixture(scope="module")
def api(compose_stack: ComposeStack) -> RestClient:
    return RestClient("127.0.0.1", compose_stack.ports["HTTP"])


@pytest.fixture(scope="module")
def stub(compose_stack: ComposeStack) -> Iterator[pb_grpc.InferenceServiceStub]:
    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{compose_stack.ports['HTTP']}", options) as channel:
        yield pb_grpc.InferenceServiceStub(channel)


@pytest.fixture(scope="module")
def stored(
    api: RestClient, stub: pb_grpc.InferenceServiceStub, images_dir: Path
) -> dict[str, pb.Invocation]:
    """One invocation made through REST and one through gRPC (both through Envoy), FULL view."""
    prefix = f"docker-{uuid.uuid4().hex[:8]}"
    content = (images_dir / REST_IMAGE).read_bytes()
    reply = api.post_json(
        "/v1/invocations",
        {
            "input": {
                "id": f"{prefix}-rest",
                "content": base64.b64encode(content).decode(),
                "metadata": {"via": "rest"},
            },
            "view": "INVOCATION_VIEW_FULL",
        },
    )
    assert reply.status == 200, reply.body[:500]
    rest = from_rest(reply.json())
    grpc_invocation = stub.Invoke(
        pb.InvokeRequest(
            input=pb.ModelInput(
                id=f"{prefix}-grpc",
                content=(images_dir / GRPC_IMAGE).read_bytes(),
                metadata={"via": "grpc"},
            ),
            view=pb.INVOCATION_VIEW_FULL,
        ),
        timeout=60,
    ).invocation
    return {REST_IMAGE: rest, GRPC_IMAGE: grpc_invocation}


@pytest.mark.parametrize("name", [REST_IMAGE, GRPC_IMAGE])
def test_detections_match_the_reference(
    stored: dict[str, pb.Invocation], reference: dict[str, Any], images_dir: Path, name: str
) -> None:
    invocation = stored[name]
    assert invocation.state == pb.Invocation.STATE_SUCCEEDED
    assert mismatches(boxes(invocation), reference["images"][name]["boxes"]) == []
    content = (images_dir / name).read_bytes()
    assert invocation.input.content == content
    assert invocation.content_sha256 == hashlib.sha256(content).hexdigest()


def test_each_invocation_reads_back_through_the_other_protocol(
    stored: dict[str, pb.Invocation], api: RestClient, stub: pb_grpc.InferenceServiceStub
) -> None:
    rest_made, grpc_made = stored[REST_IMAGE], stored[GRPC_IMAGE]
    read = stub.GetInvocation(pb.GetInvocationRequest(id=rest_made.input.id), timeout=10)
    assert read.invocation == rest_made
    reply = api.get(f"/v1/invocations/{grpc_made.input.id}")
    assert reply.status == 200, reply.body[:500]
    assert from_rest(reply.json()) == grpc_made


def test_rows_are_in_the_cassandra_container(
    stored: dict[str, pb.Invocation], compose_stack: ComposeStack, images_dir: Path
) -> None:
    # The service's own driver set-up, pointed at the container.
    cluster = build_cluster(
        CassandraConfig(contact_points=("127.0.0.1",), port=compose_stack.ports["CQL"])
    )
    try:
        session = cluster.connect()
        for name, invocation in stored.items():
            row = session.execute(
                f"SELECT content, content_sha256, state, detections, metadata"
                f" FROM {KEYSPACE}.invocations WHERE id = %s",
                (invocation.input.id,),
            ).one()
            assert row is not None, invocation.input.id
            assert row["content"] == (images_dir / name).read_bytes()
            assert row["content_sha256"] == invocation.content_sha256
            assert row["state"] == "SUCCEEDED"
            assert len(row["detections"]) == len(invocation.output.detections)
            assert dict(row["metadata"]) == dict(invocation.input.metadata)
    finally:
        cluster.shutdown()


def wait_until_served(api: RestClient, invocation_id: str, timeout: float = 240.0) -> Any:
    """GET the invocation through Envoy until it answers 200 (the server may still be
    starting: Envoy answers 503 until its health check passes)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = api.get(f"/v1/invocations/{invocation_id}", timeout=10)
            if last.status == 200:
                return last
        except OSError as exc:  # Envoy itself restarting
            last = exc
        time.sleep(1.0)
    raise AssertionError(f"not served again within {timeout:.0f}s: {last}")


def test_server_restart_keeps_the_data(
    stored: dict[str, pb.Invocation], compose_stack: ComposeStack, api: RestClient
) -> None:
    compose_stack.compose("restart", "server", timeout=120)
    for invocation in stored.values():
        reply = wait_until_served(api, invocation.input.id)
        assert from_rest(reply.json()) == invocation
    assert compose_stack.wait_healthy("server") == "healthy"


def test_recreated_containers_find_the_data_on_cassandras_volume(
    stored: dict[str, pb.Invocation], compose_stack: ComposeStack, api: RestClient
) -> None:
    compose_stack.compose("down", "--timeout", "30", timeout=180)  # volumes kept
    assert compose_stack.compose("ps", "-q").stdout.strip() == ""
    compose_stack.up()
    for invocation in stored.values():
        reply = wait_until_served(api, invocation.input.id)
        assert from_rest(reply.json()) == invocation


def test_merged_compose_files_make_no_network(docker_images: None) -> None:
    """`docker compose config` of compose.yaml + compose.airgap.yaml: every service on the
    host's network, so compose creates no network (no bridge may be made on such machines)."""
    argv = ["docker", "compose", "-f", "compose.yaml", "-f", "compose.airgap.yaml", "config"]
    result = subprocess.run(
        [*argv, "--format", "json"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert {s["network_mode"] for s in config["services"].values()} == {"host"}
    assert not config.get("networks")
