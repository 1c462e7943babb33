"""The checks of an Invoke's input before its image is read: the id, the content's size and
the metadata, against the API's fixed sizes and the request limits (``limits.RequestLimits``).
Each raises a client-safe ``InvalidArgumentError`` (or ``ContentTooLargeError``)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from inference_service.errors import ContentTooLargeError, InvalidArgumentError, quote
from inference_service.limits import (
    MAX_ID_CHARS,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
    RequestLimits,
)

ID_PATTERN = re.compile(rf"[A-Za-z0-9._~-]{{1,{MAX_ID_CHARS}}}")


def validate_id(invocation_id: str) -> None:
    """Raise ``InvalidArgumentError`` unless the id is 1-128 chars of ``[A-Za-z0-9._~-]``
    (``MAX_ID_CHARS``) other than ``.`` and ``..``."""
    if not ID_PATTERN.fullmatch(invocation_id):
        raise InvalidArgumentError(
            f"id {quote(invocation_id)} is invalid: it must be 1 to {MAX_ID_CHARS} characters "
            "of [A-Za-z0-9._~-]"
        )
    if invocation_id in (".", ".."):
        # Valid characters, but a REST path cannot address them: /v1/invocations/.. is
        # normalized away before routing.
        raise InvalidArgumentError(
            f"id {quote(invocation_id)} is invalid: '.' and '..' cannot be used in a REST path"
        )


def check_content(content: bytes, limits: RequestLimits) -> None:
    """Raise unless ``content`` is 1 to ``limits.max_content_bytes`` bytes."""
    size = len(content)
    if size == 0:
        raise InvalidArgumentError("input.content is empty: send an encoded image")
    if size > limits.max_content_bytes:
        raise ContentTooLargeError(
            f"input.content is {size} bytes; the limit is {limits.max_content_bytes}"
        )


def check_metadata(metadata: Mapping[str, str], limits: RequestLimits) -> None:
    """Raise unless ``metadata`` has at most ``limits.max_metadata_entries`` entries, each key
    1 to ``MAX_METADATA_KEY_BYTES`` and each value at most ``MAX_METADATA_VALUE_BYTES`` bytes."""
    if len(metadata) > limits.max_metadata_entries:
        raise InvalidArgumentError(
            f"input.metadata has {len(metadata)} entries; "
            f"the limit is {limits.max_metadata_entries}"
        )
    for key, value in metadata.items():
        if not key or len(key.encode()) > MAX_METADATA_KEY_BYTES:
            raise InvalidArgumentError(
                f"input.metadata key {quote(key)} must be 1 to {MAX_METADATA_KEY_BYTES} bytes"
            )
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise InvalidArgumentError(
                f"input.metadata[{quote(key)}] is longer than {MAX_METADATA_VALUE_BYTES} bytes"
            )
