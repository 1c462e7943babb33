"""Native gRPC through Envoy on the real stack: the same invocations as REST on the public
listener; health and server reflection (what grpcurl uses) on the internal one only."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.http import RestClient
from support.reference import mismatches

SERVICE = "inference.v1.InferenceService"


def from_rest(body: dict[str, Any]) -> pb.Invocation:
    """The ``invocation`` of a REST reply as a proto (unknown fields refused)."""
    return json_format.ParseDict(body["invocation"], pb.Invocation())


def boxes(invocation: pb.Invocation) -> list[tuple[float, ...]]:
    return [
        (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score)
        for d in invocation.output.detections
    ]


def test_rest_invocation_reads_the_same_over_grpc(
    api: RestClient, channel: grpc.Channel, id_prefix: str, images_dir: Path
) -> None:
    invocation_id = f"{id_prefix}-rest-then-grpc"
    content = (images_dir / "face-2.jpg").read_bytes()
    payload = {
        "input": {
            "id": invocation_id,
            "content": base64.b64encode(content).decode(),
            "metadata": {"via": "rest"},
        },
        "view": "INVOCATION_VIEW_FULL",
    }
    created = api.post_json("/v1/invocations", payload)
    assert created.status == 200, created.body[:500]

    stub = pb_grpc.InferenceServiceStub(channel)
    read = stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id), timeout=10).invocation
    assert read == from_rest(created.json())
    assert read.input.content == content
    assert dict(read.input.metadata) == {"via": "rest"}

    basic = stub.GetInvocation(
        pb.GetInvocationRequest(id=invocation_id, view=pb.INVOCATION_VIEW_BASIC), timeout=10
    ).invocation
    rest_basic = api.get(f"/v1/invocations/{invocation_id}?view=INVOCATION_VIEW_BASIC")
    assert rest_basic.status == 200, rest_basic.body[:500]
    assert basic == from_rest(rest_basic.json())
    assert basic.input.content == b""


def test_grpc_invoke_reads_back_the_same_over_rest(
    api: RestClient,
    channel: grpc.Channel,
    id_prefix: str,
    images_dir: Path,
    reference: dict[str, Any],
) -> None:
    name = "face-8.jpg"
    invocation_id = f"{id_prefix}-grpc-then-rest"
    content = (images_dir / name).read_bytes()
    stub = pb_grpc.InferenceServiceStub(channel)
    request = pb.InvokeRequest(
        input=pb.ModelInput(id=invocation_id, content=content, metadata={"via": "grpc"}),
        view=pb.INVOCATION_VIEW_FULL,
    )
    invocation = stub.Invoke(request, timeout=30).invocation
    assert invocation.state == pb.Invocation.STATE_SUCCEEDED
    assert mismatches(boxes(invocation), reference["images"][name]["boxes"]) == []
    assert invocation.content_sha256 == hashlib.sha256(content).hexdigest()

    reply = api.get(f"/v1/invocations/{invocation_id}")
    assert reply.status == 200, reply.body[:500]
    assert from_rest(reply.json()) == invocation
    # The JSON is what json_format prints with the transcoder's print options, but for the
    # digits of the floats in `output` (Envoy prints 9 significant digits, Python the shortest
    # that round-trips; both parse to the same float32, as the proto comparison above shows).
    printed = json_format.MessageToDict(
        invocation, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    rest = reply.json()["invocation"]
    assert set(rest) == set(printed)
    assert {k: v for k, v in rest.items() if k != "output"} == {
        k: v for k, v in printed.items() if k != "output"
    }


def test_health_through_envoys_internal_listener_is_serving(
    internal_channel: grpc.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(internal_channel)
    for service in ("", SERVICE):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_health_and_reflection_are_not_on_the_public_listener(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as raised:
        reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def reflect(
    channel: grpc.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """One reflection stream carrying ``requests``; the responses, in order."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=10))


def test_reflection_through_envoys_internal_listener_lists_and_describes_the_service(
    internal_channel: grpc.Channel,
) -> None:
    """What ``grpcurl list`` and ``grpcurl describe`` need: the service list, and the file
    that declares the service together with every file it imports."""
    listed, described = reflect(
        internal_channel,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    )
    names = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names

    assert not described.HasField("error_response"), described.error_response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in described.file_descriptor_response.file_descriptor_proto
    ]
    by_name = {f.name: f for f in files}
    assert "inference/v1/inference_service.proto" in by_name
    assert {"google/api/annotations.proto", "google/protobuf/timestamp.proto"} <= set(by_name)

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    while len(added) < len(files):  # add each file after its imports
        progress = False
        for f in files:
            if f.name not in added and set(f.dependency) <= added:
                pool.Add(f)
                added.add(f.name)
                progress = True
        assert progress, f"imports missing from the reflection answer: {sorted(by_name)}"
    service = pool.FindServiceByName(SERVICE)
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "Invoke": ("inference.v1.InvokeRequest", "inference.v1.InvokeResponse"),
        "UploadInvocation": ("inference.v1.UploadInvocationRequest", "inference.v1.InvokeResponse"),
        "GetInvocation": (
            "inference.v1.GetInvocationRequest",
            "inference.v1.GetInvocationResponse",
        ),
        "RenderInvocation": ("inference.v1.RenderInvocationRequest", "google.api.HttpBody"),
        "ListModels": ("inference.v1.ListModelsRequest", "inference.v1.ListModelsResponse"),
        "GetModel": ("inference.v1.GetModelRequest", "inference.v1.GetModelResponse"),
        "ListInvocations": (
            "inference.v1.ListInvocationsRequest",
            "inference.v1.ListInvocationsResponse",
        ),
        "DeleteInvocation": ("inference.v1.DeleteInvocationRequest", "google.protobuf.Empty"),
    }
