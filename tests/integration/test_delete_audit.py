"""DeleteInvocation on a real gRPC server (memory store, fake model): the answers, and the one
JSON audit line per delete with the id, the request id, the caller Envoy named, the outcome,
and never the content."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.fakes import FakeDetector
from support.served import ServedApplication

from inference_service.settings import Settings
from inference_service.stores.memory import InMemoryInvocationStore

MARKER = b"AUDIT-NEVER-LOGS-THIS"


def test_every_delete_writes_one_json_audit_line(
    shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content = (shared_dir / "images" / "face-2.jpg").read_bytes()
    content = (
        content[:2] + b"\xff\xfe" + (len(MARKER) + 2).to_bytes(2, "big") + MARKER + content[2:]
    )
    settings = Settings(port=0, store="memory", shared_dir=shared_dir, metrics_enabled=False)
    with (
        caplog.at_level(logging.INFO, logger="inference_service.audit"),
        ServedApplication(
            settings, store=InMemoryInvocationStore(), detector=FakeDetector()
        ) as served,
        grpc.insecure_channel(served.address) as channel,
    ):
        stub = pb_grpc.InferenceServiceStub(channel)
        stub.Invoke(
            pb.InvokeRequest(input=pb.ModelInput(id="audited", content=content)), timeout=30
        )
        metadata = [("x-request-id", "req-42"), ("x-envoy-auth-subject", "dpo@example.test")]
        reply = stub.DeleteInvocation(
            pb.DeleteInvocationRequest(id="audited"), metadata=metadata, timeout=10
        )
        assert reply == empty_pb2.Empty()
        with pytest.raises(grpc.RpcError) as raised:
            stub.DeleteInvocation(pb.DeleteInvocationRequest(id="audited"), timeout=10)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == "invocation 'audited' not found"
        stub.DeleteInvocation(
            pb.DeleteInvocationRequest(id="audited", allow_missing=True), timeout=10
        )
        with pytest.raises(grpc.RpcError) as raised:
            stub.DeleteInvocation(pb.DeleteInvocationRequest(id="no way!"), timeout=10)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetInvocation(pb.GetInvocationRequest(id="audited"), timeout=10)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    lines = [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == "inference_service.audit"
    ]
    assert [
        (line["invocation_id"], line["request_id"], line["caller"], line["outcome"])
        for line in lines
    ] == [
        ("audited", "req-42", "dpo@example.test", "deleted"),
        ("audited", "-", "", "not_found"),
        ("audited", "-", "", "not_found"),
    ]
    assert lines[2]["allow_missing"] is True
    assert MARKER.decode() not in caplog.text
