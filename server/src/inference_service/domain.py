"""Domain model: plain, immutable values that know nothing of gRPC or Cassandra."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from types import MappingProxyType


class State(enum.Enum):
    """Where an invocation is in its life."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclasses.dataclass(frozen=True, slots=True)
class BoundingBox:
    """An axis-aligned box in pixels of the original (EXIF-oriented) image."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclasses.dataclass(frozen=True, slots=True)
class Detection:
    """One object the model found."""

    box: BoundingBox
    score: float
    label: str


@dataclasses.dataclass(frozen=True, slots=True)
class ModelOutput:
    """Everything a detector returns for one image."""

    detections: tuple[Detection, ...]
    image_width: int
    image_height: int


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInput:
    """An encoded image with its client-chosen id and metadata."""

    id: str
    content: bytes
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInfo:
    """What names a loaded model: its public name and its version (sha256 of its artifact)."""

    name: str
    version: str


@dataclasses.dataclass(frozen=True, slots=True)
class ModelDescription:
    """What ``ListModels`` tells of one served model (``inference_service.models``)."""

    info: ModelInfo
    runtime: str
    """What runs it, e.g. ``tflite/litert``, ``onnx/onnxruntime``."""
    aliases: tuple[str, ...] = ()
    is_default: bool = False
    ready: bool = True
    load_time: dt.datetime | None = None
    source: str = ""
    """Where it came from (a path or a URI without credentials)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """Who owns a PENDING invocation and since when: the Invoke that won (or took over) its id.

    ``token`` is unique per Invoke; ``time`` starts the claim's lease, after which a retry of the
    same id and content may take the claim over (its owner presumably died).
    """

    token: str
    time: dt.datetime

    def expired(self, now: dt.datetime, lease: dt.timedelta) -> bool:
        return now >= self.time + lease


@dataclasses.dataclass(frozen=True, slots=True)
class Invocation:
    """A stored input and, once the model has run, its output or error.

    ``content_sha256`` (lowercase hex) and ``content_type`` (a MIME type sniffed
    from the content's magic bytes) are always set; ``input.content`` may be
    empty when the invocation was read without its content (the BASIC view).
    """

    input: ModelInput
    content_sha256: str
    state: State
    model: ModelInfo
    create_time: dt.datetime
    content_type: str = "application/octet-stream"
    output: ModelOutput | None = None
    complete_time: dt.datetime | None = None
    error: str = ""
    claim: Claim | None = dataclasses.field(default=None, compare=False)
    """Bookkeeping of the store, not part of what the invocation is (ignored by ``==``)."""

    @property
    def id(self) -> str:
        return self.input.id

    def without_content(self) -> Invocation:
        """The same invocation with empty ``input.content`` (what a BASIC read returns)."""
        basic = ModelInput(id=self.input.id, content=b"", metadata=self.input.metadata)
        return dataclasses.replace(self, input=basic)
