"""Protocol-buffer wire format by hand: request messages with any bytes in any field (invalid
UTF-8 in a string field, say), which the generated classes refuse to build."""

from __future__ import annotations

from collections.abc import Iterable

INVOKE = "/inference.v1.InferenceService/Invoke"
GET_INVOCATION = "/inference.v1.InferenceService/GetInvocation"


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
