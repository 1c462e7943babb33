"""Proto <-> domain conversion for the gRPC API. Pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from google.protobuf import timestamp_pb2
from inference.v1 import inference_service_pb2 as pb

from inference_service.domain import Invocation, ModelDescription, ModelInput, ModelOutput, State
from inference_service.errors import InvalidArgumentError, quote

_STATE_TO_PROTO = {
    State.PENDING: pb.Invocation.STATE_PENDING,
    State.SUCCEEDED: pb.Invocation.STATE_SUCCEEDED,
    State.FAILED: pb.Invocation.STATE_FAILED,
}


CALLER_HEADER = "x-envoy-auth-subject"
"""The ``sub`` of the caller's JWT, set by Envoy's jwt_authn filter where a JWT is required.
A client cannot set it: Envoy drops every ``x-envoy-*`` header of a request first."""


def caller_of(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """Who called, for the audit log: the JWT subject Envoy passed on, else ``""``."""
    for key, value in metadata or ():
        if key == CALLER_HEADER:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            return text[:256]
    return ""


def model_input_from_proto(message: pb.ModelInput) -> ModelInput:
    return ModelInput(id=message.id, content=message.content, metadata=dict(message.metadata))


def model_input_from_upload(message: pb.UploadInvocationRequest) -> ModelInput:
    """The input of an UploadInvocation: the raw body is the content, and each ``metadata``
    entry is ``key:value`` (split at the first colon). An entry without a colon, or a key given
    twice, is ``InvalidArgumentError``; the sizes are checked by the service, as for Invoke."""
    metadata: dict[str, str] = {}
    for entry in message.metadata:
        key, colon, value = entry.partition(":")
        if not colon:
            raise InvalidArgumentError(
                f"metadata entry {quote(entry)} is not key:value (e.g. metadata=camera:front)"
            )
        if key in metadata:
            raise InvalidArgumentError(f"metadata key {quote(key)} is given twice")
        metadata[key] = value
    return ModelInput(id=message.id, content=message.body.data, metadata=metadata)


def wants_content(view: int, *, default: bool = True) -> bool:
    """FULL includes the content, BASIC omits it; UNSPECIFIED means ``default`` (FULL for
    GetInvocation, BASIC for Invoke: its caller has the content). A number that is no
    InvocationView (proto3 keeps unknown enum numbers) is ``InvalidArgumentError``."""
    if view not in pb.InvocationView.values():
        raise InvalidArgumentError(
            f"view {view} is not an InvocationView: use INVOCATION_VIEW_BASIC (1) or "
            "INVOCATION_VIEW_FULL (2)"
        )
    if view == pb.INVOCATION_VIEW_UNSPECIFIED:
        return default
    return view != pb.INVOCATION_VIEW_BASIC


def render_format(value: int) -> str:
    """The image format (``"PNG"`` or ``"JPEG"``) of a RenderFormat; UNSPECIFIED is PNG. A number
    that is no RenderFormat is ``InvalidArgumentError``."""
    if value not in pb.RenderFormat.values():
        raise InvalidArgumentError(
            f"format {value} is not a RenderFormat: use RENDER_FORMAT_PNG (1) or "
            "RENDER_FORMAT_JPEG (2)"
        )
    return "JPEG" if value == pb.RENDER_FORMAT_JPEG else "PNG"


def _timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def output_to_proto(output: ModelOutput) -> pb.ModelOutput:
    """The message of ``output``. Each detection is added in place and its box's fields set one
    by one: with upb, a third of the cost of building a ``Detection`` and a ``BoundingBox``
    per face and copying them in (a photo of a group has dozens of faces)."""
    message = pb.ModelOutput(image_width=output.image_width, image_height=output.image_height)
    add = message.detections.add
    for detection in output.detections:
        added = add(score=detection.score, label=detection.label)
        box, target = detection.box, added.box
        target.x_min = box.x_min
        target.y_min = box.y_min
        target.x_max = box.x_max
        target.y_max = box.y_max
    return message


def invocation_to_proto(invocation: Invocation, *, with_content: bool = True) -> pb.Invocation:
    """The message of ``invocation``; ``with_content=False``: with an empty ``input.content``
    (the BASIC view), as of ``invocation.without_content()`` but without making that copy."""
    model_input = invocation.input
    output = invocation.output
    complete_time = invocation.complete_time
    return pb.Invocation(
        id=model_input.id,
        input=pb.ModelInput(
            id=model_input.id,
            content=model_input.content if with_content else b"",
            metadata=dict(model_input.metadata),
        ),
        state=_STATE_TO_PROTO[invocation.state],
        model=invocation.model.name,
        model_version=invocation.model.version,
        create_time=_timestamp(invocation.create_time),
        error=invocation.error,
        content_sha256=invocation.content_sha256,
        output=output_to_proto(output) if output is not None else None,
        complete_time=_timestamp(complete_time) if complete_time is not None else None,
    )


def model_to_proto(model: ModelDescription) -> pb.Model:
    message = pb.Model(
        name=model.info.name,
        version=model.info.version,
        runtime=model.runtime,
        aliases=list(model.aliases),
        is_default=model.is_default,
        ready=model.ready,
        source=model.source,
    )
    if model.load_time is not None:
        message.load_time.CopyFrom(_timestamp(model.load_time))
    return message
