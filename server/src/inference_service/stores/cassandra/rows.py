"""Row mapping: a row of ``invocations`` (a dict from the driver) as a domain ``Invocation``,
the domain's values as CQL values, and the driver's times as aware UTC datetimes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from inference_service.domain import (
    BoundingBox,
    Claim,
    Detection,
    Invocation,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: One detection as the ``detection`` user-defined type: (x_min, y_min, x_max, y_max, score,
#: label).
DetectionRow = tuple[float, float, float, float, float, str]


def to_invocation(row: Mapping[str, Any], *, with_content: bool) -> Invocation | None:
    """A row as an ``Invocation``; ``None`` for the remains of a partly expired row."""
    if row["content_sha256"] is None:
        return None
    content = (row["content"] or b"") if with_content else b""
    output = None
    if row["image_width"] is not None:
        output = ModelOutput(
            detections=tuple(
                Detection(
                    box=BoundingBox(x_min=d[0], y_min=d[1], x_max=d[2], y_max=d[3]),
                    score=d[4],
                    label=d[5] or "",
                )
                for d in (row["detections"] or ())
            ),
            image_width=row["image_width"],
            image_height=row["image_height"],
        )
    complete_time = row["complete_time"]
    create_time = utc(row["create_time"])
    claim = None
    if row["claim_id"] is not None:
        claim_time = row["claim_time"]
        claim = Claim(
            token=row["claim_id"].hex,
            time=utc(claim_time) if claim_time is not None else create_time,
            age=claim_age(row),
        )
    return Invocation(
        input=ModelInput(id=row["id"], content=content, metadata=row["metadata"] or {}),
        content_sha256=row["content_sha256"],
        content_type=row["content_type"] or "application/octet-stream",
        # The claim writes no state: the outcome columns belong to ``complete`` alone.
        state=State(row["state"]) if row["state"] is not None else State.PENDING,
        model=ModelInfo(name=row["model_name"] or "", version=row["model_version"] or ""),
        create_time=create_time,
        output=output,
        complete_time=utc(complete_time) if complete_time is not None else None,
        error=row["error"] or "",
        claim=claim,
    )


def detection_rows(output: ModelOutput | None) -> list[DetectionRow] | None:
    """The detections of ``output`` as the ``detections`` column holds them."""
    if output is None:
        return None
    return [
        (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score, d.label)
        for d in output.detections
    ]


def claim_age(row: Mapping[str, Any]) -> dt.timedelta:
    """A claim's age by Cassandra's clocks (``claim_written``, ``store_now`` of a read). A row
    without them (what a conditional write returns) counts as just claimed: its reader reads
    it again before it may take the claim over, and then learns its age."""
    written, now = row.get("claim_written"), row.get("store_now")
    if written is None or now is None:
        return dt.timedelta(0)
    return max(dt.timedelta(0), utc(now) - dt.datetime.fromtimestamp(written / 1e6, dt.UTC))


def utc(value: dt.datetime) -> dt.datetime:
    """The driver returns naive UTC datetimes; the domain uses aware ones."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def micros(value: dt.datetime) -> int:
    """A CQL write timestamp (microseconds since the epoch)."""
    return (utc(value) - EPOCH) // dt.timedelta(microseconds=1)
