"""Protocol-buffer wire format by hand: request messages with any bytes in any field (invalid
UTF-8 in a string field, say), which the generated classes refuse to build."""

from __future__ import annotations

from collections.abc import Iterable

INVOKE = "/inference.v1.InferenceService/Invoke"
GET_INVOCATION = "/inference.v1.InferenceService/GetInvocation"
LIST_INVOCATIONS = "/inference.v1.InferenceService/ListInvocations"
DELETE_INVOCATION = "/inference.v1.InferenceService/DeleteInvocation"


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def integer(number: int, value: int) -> bytes:
    """A varint field (enum, int32)."""
    return varint(number << 3) + varint(value)


def invoke_request(
    *,
    id: bytes = b"",
    content: bytes = b"",
    metadata: Iterable[tuple[bytes, bytes]] = (),
    model: bytes = b"",
) -> bytes:
    """``InvokeRequest{input: ModelInput{id, content, metadata}, model}``, every field raw."""
    entries = b"".join(
        delimited(3, delimited(1, key) + delimited(2, value)) for key, value in metadata
    )
    model_input = delimited(1, id) + delimited(2, content) + entries
    return delimited(1, model_input) + (delimited(2, model) if model else b"")


def get_invocation_request(*, id: bytes = b"", view: int = 0) -> bytes:
    """``GetInvocationRequest{id, view}``, the id raw."""
    return delimited(1, id) + (integer(2, view) if view else b"")


def list_invocations_request(
    *, page_size: int = 0, page_token: bytes = b"", filter: bytes = b"", view: int = 0
) -> bytes:
    """``ListInvocationsRequest{page_size, page_token, filter, view}``, the strings raw
    (``page_size`` as a varint of any 64-bit value)."""
    return (
        (integer(1, page_size) if page_size else b"")
        + delimited(2, page_token)
        + delimited(3, filter)
        + (integer(4, view) if view else b"")
    )


def delete_invocation_request(*, id: bytes = b"", allow_missing: int = 0) -> bytes:
    """``DeleteInvocationRequest{id, allow_missing}``, the id raw (``allow_missing`` as any
    varint)."""
    return delimited(1, id) + (integer(2, allow_missing) if allow_missing else b"")
