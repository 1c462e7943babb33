"""The one error mapping: domain errors keep their code and message; the rest is INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from inference_service import errors
from inference_service.grpc.errors import (
    INTERNAL_MESSAGE,
    UNDECODABLE_REQUEST,
    status_for,
    tolerant_deserializer,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgumentError("bad id"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ContentTooLargeError("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.NotFoundError("nope"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("taken"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.StoreUnavailableError("store down"), grpc.StatusCode.UNAVAILABLE),
        (errors.ModelNotReadyError("loading"), grpc.StatusCode.UNAVAILABLE),
        (errors.InvocationPendingError("retry"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_domain_errors_keep_code_and_message(error: errors.InferenceError, code) -> None:
    assert status_for(error) == (code, str(error))


@pytest.mark.parametrize(
    "error",
    [errors.ModelError("tensor shape mismatch at layer 7"), ValueError("db password is hunter2")],
)
def test_internal_errors_never_leak_details(error: Exception) -> None:
    assert status_for(error) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def test_busy_is_unavailable_never_resource_exhausted() -> None:
    busy = errors.ServerBusyError("server busy, retry later: too many images are in progress")
    assert status_for(busy) == (grpc.StatusCode.UNAVAILABLE, str(busy))


def test_an_undecodable_message_becomes_a_marker_not_an_exception() -> None:
    from google.protobuf.message import DecodeError
    from inference.v1 import inference_service_pb2 as pb

    with pytest.raises(DecodeError):
        pb.InvokeRequest.FromString(b"\n\x03\n\x01\xff")  # invalid UTF-8 in input.id
    tolerant = tolerant_deserializer(pb.InvokeRequest.FromString)
    assert tolerant(b"\n\x03\n\x01\xff") is UNDECODABLE_REQUEST
    assert tolerant(b"\xff\xff\xff") is UNDECODABLE_REQUEST  # corrupt wire format
    good = pb.InvokeRequest(input=pb.ModelInput(id="a", content=b"x"))
    assert tolerant(good.SerializeToString()) == good
    assert tolerant_deserializer(None) is None
