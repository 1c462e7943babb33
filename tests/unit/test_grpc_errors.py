"""The one error mapping: domain errors keep their code and message; the rest is INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from inference_service import errors
from inference_service.grpc.errors import INTERNAL_MESSAGE, status_for


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
