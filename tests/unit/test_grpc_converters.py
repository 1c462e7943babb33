"""Proto <-> domain conversion."""

from __future__ import annotations

import datetime as dt

import pytest
from inference.v1 import inference_service_pb2 as pb

from inference_service.domain import (
    BoundingBox,
    Detection,
    Invocation,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)
from inference_service.errors import InvalidArgumentError
from inference_service.grpc import converters

CREATED = dt.datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=dt.UTC)


def test_model_input_from_proto() -> None:
    message = pb.ModelInput(id="x", content=b"\x00\x01", metadata={"k": "v"})
    value = converters.model_input_from_proto(message)
    assert value == ModelInput("x", b"\x00\x01", {"k": "v"})


def test_view_default_includes_content() -> None:
    assert converters.wants_content(pb.INVOCATION_VIEW_UNSPECIFIED)
    assert converters.wants_content(pb.INVOCATION_VIEW_FULL)
    assert not converters.wants_content(pb.INVOCATION_VIEW_BASIC)


def test_invocation_to_proto_succeeded() -> None:
    invocation = Invocation(
        input=ModelInput("x", b"img", {"k": "v"}),
        content_sha256="ab" * 32,
        content_type="image/png",
        state=State.SUCCEEDED,
        model=ModelInfo("face-detector", "sha"),
        create_time=CREATED,
        output=ModelOutput((Detection(BoundingBox(1.5, 2, 3, 4.25), 0.875, "face"),), 640, 480),
        complete_time=CREATED + dt.timedelta(milliseconds=5),
    )
    message = converters.invocation_to_proto(invocation)
    assert message.id == "x"
    assert message.input.content == b"img"
    assert dict(message.input.metadata) == {"k": "v"}
    assert message.state == pb.Invocation.STATE_SUCCEEDED
    assert message.model == "face-detector" and message.model_version == "sha"
    assert message.content_sha256 == "ab" * 32
    assert message.create_time.ToDatetime(dt.UTC) == CREATED
    assert message.complete_time.ToDatetime(dt.UTC) == CREATED + dt.timedelta(milliseconds=5)
    (detection,) = message.output.detections
    assert (detection.box.x_min, detection.box.y_max) == (1.5, 4.25)
    assert detection.score == 0.875 and detection.label == "face"
    assert (message.output.image_width, message.output.image_height) == (640, 480)


def test_invocation_to_proto_pending_has_no_output_or_complete_time() -> None:
    invocation = Invocation(
        input=ModelInput("p", b"img"),
        content_sha256="00" * 32,
        state=State.PENDING,
        model=ModelInfo("face-detector", "sha"),
        create_time=CREATED,
    )
    message = converters.invocation_to_proto(invocation)
    assert message.state == pb.Invocation.STATE_PENDING
    assert not message.HasField("output")
    assert not message.HasField("complete_time")


def test_the_caller_is_the_subject_envoy_passed_on() -> None:
    assert (
        converters.caller_of((("x-request-id", "r"), ("x-envoy-auth-subject", "dpo@x"))) == "dpo@x"
    )
    assert converters.caller_of((("x-envoy-auth-subject", b"bin\xff"),)) == "bin\ufffd"
    assert converters.caller_of((("authorization", "Bearer t"),)) == ""
    assert converters.caller_of(None) == ""


def test_upload_input_from_query_and_raw_body() -> None:
    """UploadInvocation (issue 21 item 5): the raw body is the content, each metadata entry is
    key:value split at the first colon."""
    request = pb.UploadInvocationRequest(
        id="u-1",
        metadata=["camera:front", "url:http://x/y", "empty:"],
        body={"content_type": "image/jpeg", "data": b"\xff\xd8raw"},
    )
    model_input = converters.model_input_from_upload(request)
    assert model_input.id == "u-1"
    assert model_input.content == b"\xff\xd8raw"
    assert dict(model_input.metadata) == {"camera": "front", "url": "http://x/y", "empty": ""}


@pytest.mark.parametrize(
    ("entries", "words"),
    [(["no-colon"], "is not key:value"), (["k:1", "k:2"], "is given twice")],
)
def test_upload_metadata_must_be_key_colon_value_once(entries, words) -> None:
    request = pb.UploadInvocationRequest(metadata=entries)
    with pytest.raises(InvalidArgumentError, match=words):
        converters.model_input_from_upload(request)


def test_a_bad_upload_metadata_entry_is_quoted_cut() -> None:
    request = pb.UploadInvocationRequest(metadata=["x" * 5000])
    with pytest.raises(InvalidArgumentError) as caught:
        converters.model_input_from_upload(request)
    assert "...(cut)" in str(caught.value) and "x" * 101 not in str(caught.value)
