"""What one request may carry, and every size limit that follows from it. Pure; no I/O.

Three limits are settings (``INFERENCE_MAX_CONTENT_BYTES``, ``INFERENCE_MAX_IMAGE_PIXELS``,
``INFERENCE_MAX_METADATA_ENTRIES``); the id and metadata key and value sizes are fixed by the API.
Everything that carries an input or an invocation must let the largest valid one through, so
its limit is derived here from those, never configured on its own:

* ``grpc_message_bytes``: the gRPC server's receive and send message limit (``app.py``);
* ``rest_request_body_bytes``: the largest REST/JSON request body Envoy accepts (its buffer
  filter's ``max_request_bytes`` and the transcoder's ``max_request_body_size``);
* ``rest_response_body_bytes``: the largest response Envoy's transcoder turns into JSON
  (``max_response_body_size``).

Raising the content limit (or the metadata limit) raises all three together.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference_service.settings import Settings

MAX_ID_CHARS = 128
"""Longest input id, in characters of ``[A-Za-z0-9._~-]`` (one byte each)."""
MAX_METADATA_KEY_BYTES = 128
"""Longest metadata key, in bytes of UTF-8 (keys are at least 1 byte)."""
MAX_METADATA_VALUE_BYTES = 1024
"""Longest metadata value, in bytes of UTF-8."""
MAX_DETECTIONS = 200
"""Most detections one output holds: the face detector keeps at most its NMS candidates."""

HEADROOM_BYTES = 1024 * 1024
"""Added to every derived limit: room for what the sums below leave out (a long model name,
whitespace a client puts in its JSON) and for content a little over its limit, which then still
reaches the server and gets its exact RESOURCE_EXHAUSTED message rather than a transport's."""
SMALL_FIELDS_BYTES = 4096
"""Upper bound of the small fields of an invocation, encoded and with their names: two ids,
state, model name and version, timestamps, error, content sha256, image size, JSON punctuation."""
JSON_ESCAPE_FACTOR = 6
"""Most bytes of JSON one byte of a string can take: a control character is written ``\\u00XX``
(what ``json.dumps`` does, and the transcoder prints)."""
PROTO_FIELD_BYTES = 6
"""Most bytes a protobuf field adds to its value: a one-byte tag and a length of up to 5."""
DETECTION_PROTO_BYTES = 64
"""Upper bound of one ``Detection`` in protobuf (four floats, a score, a short label, tags)."""
DETECTION_JSON_BYTES = 256
"""Upper bound of one ``Detection`` in JSON (field names, floats printed with an exponent)."""


def base64_length(size: int) -> int:
    """Length of the padded base64 text of ``size`` bytes (what JSON carries for ``bytes``)."""
    return 4 * ((size + 2) // 3)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestLimits:
    """What a single request may carry (the settings), and the limits derived from it."""

    max_content_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_metadata_entries: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_content_bytes=settings.max_content_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_metadata_entries=settings.max_metadata_entries,
        )

    @property
    def _metadata_proto_bytes(self) -> int:
        """The largest metadata map in protobuf: every entry a message of a key and a value."""
        entry = PROTO_FIELD_BYTES + (
            PROTO_FIELD_BYTES
            + MAX_METADATA_KEY_BYTES
            + PROTO_FIELD_BYTES
            + MAX_METADATA_VALUE_BYTES
        )
        return self.max_metadata_entries * entry

    @property
    def _metadata_json_bytes(self) -> int:
        """The largest metadata object in JSON: every byte escaped, quotes, colon and comma."""
        entry = JSON_ESCAPE_FACTOR * (MAX_METADATA_KEY_BYTES + MAX_METADATA_VALUE_BYTES) + 6
        return self.max_metadata_entries * entry

    @property
    def grpc_message_bytes(self) -> int:
        """The gRPC server's message limit, both directions: the largest ``InvokeRequest`` and
        the largest ``InvokeResponse`` or ``GetInvocationResponse`` (an invocation with the
        largest input, the most detections and every small field), plus the headroom."""
        return (
            PROTO_FIELD_BYTES * 4  # content, input, invocation, and the response around them
            + self.max_content_bytes
            + self._metadata_proto_bytes
            + MAX_DETECTIONS * DETECTION_PROTO_BYTES
            + SMALL_FIELDS_BYTES
            + HEADROOM_BYTES
        )

    @property
    def rest_request_body_bytes(self) -> int:
        """The largest REST/JSON request body: an Invoke of the largest input, its content in
        base64 and its id and metadata escaped, plus the headroom."""
        return (
            base64_length(self.max_content_bytes)
            + self._metadata_json_bytes
            + JSON_ESCAPE_FACTOR * MAX_ID_CHARS
            + SMALL_FIELDS_BYTES
            + HEADROOM_BYTES
        )

    @property
    def rest_response_body_bytes(self) -> int:
        """The largest REST/JSON response body: an invocation with the largest input (content in
        base64, metadata escaped), the most detections and every small field, plus the
        headroom. Larger than the gRPC message it is printed from, which the transcoder holds
        against the same limit."""
        return (
            base64_length(self.max_content_bytes)
            + self._metadata_json_bytes
            + MAX_DETECTIONS * DETECTION_JSON_BYTES
            + SMALL_FIELDS_BYTES
            + HEADROOM_BYTES
        )


MAX_PAGE_SIZE = 1000
"""Most invocations one ListInvocations page holds (a larger ``page_size`` is lowered to it)."""
DEFAULT_PAGE_SIZE = 50
"""Invocations of a ListInvocations page when ``page_size`` is 0."""


def invocation_response_bytes(content_bytes: int, metadata: dict[str, str], detections: int) -> int:
    """An upper bound of one invocation in a ListInvocations response, in JSON (which is larger
    than its protobuf): content in base64, metadata escaped, detections, the small fields."""
    metadata_bytes = sum(
        JSON_ESCAPE_FACTOR * (len(key.encode()) + len(value.encode())) + 6
        for key, value in metadata.items()
    )
    return (
        base64_length(content_bytes)
        + metadata_bytes
        + detections * DETECTION_JSON_BYTES
        + SMALL_FIELDS_BYTES
    )


def list_page_bytes(limits: RequestLimits) -> int:
    """The most a ListInvocations page may hold, counted by ``invocation_response_bytes``: what
    the largest single invocation may take in a response (so one always fits, and a page
    passes every limit that a GetInvocation response passes: the gRPC message limit and
    Envoy's REST response limit). A FULL page is cut when the next invocation would pass it."""
    return limits.rest_response_body_bytes - HEADROOM_BYTES
