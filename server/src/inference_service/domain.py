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

    ``token`` is unique per Invoke; ``time`` is when it claimed. After the lease, a retry of the
    same id and content may take the claim over (docs/architecture.md, "The claim protocol").
    """

    token: str
    time: dt.datetime
    age: dt.timedelta | None = dataclasses.field(default=None, compare=False)
    """How old the claim was when it was read, by the store's own clock (Cassandra: the
    coordinator's ``now()`` minus the claim's write time, which Paxos sets): when known, the
    lease is measured with it, and no server's clock matters. None where the store does not
    tell (the in-memory store: one process, one clock)."""

    def expired(self, now: dt.datetime, lease: dt.timedelta) -> bool:
        if self.age is not None:
            return self.age >= lease
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
    replayed: bool = dataclasses.field(default=False, compare=False)
    """Set on the answer of an Invoke that did not run the model: the outcome stored by an
    earlier call of the same id and content (a retry). Never stored (ignored by ``==``)."""

    @property
    def id(self) -> str:
        return self.input.id

    def without_content(self) -> Invocation:
        """The same invocation with empty ``input.content`` (what a BASIC read returns)."""
        basic = ModelInput(id=self.input.id, content=b"", metadata=self.input.metadata)
        return dataclasses.replace(self, input=basic)


@dataclasses.dataclass(frozen=True, slots=True)
class InvocationFilter:
    """Which invocations a listing returns (``ListInvocations.filter``, parsed by
    ``inference_service.listing``). Every set field must match (AND); unset fields match all.

    ``create_time_min`` is inclusive, ``create_time_max`` exclusive; ``models`` holds the
    names an invocation's model may have (a name and, when the service knows it, the model
    it is an alias of); ``metadata`` holds (key, value) pairs that must all be present.
    """

    create_time_min: dt.datetime | None = None
    create_time_max: dt.datetime | None = None
    models: frozenset[str] | None = None
    state: State | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    def matches(self, invocation: Invocation) -> bool:
        """Whether ``invocation`` passes every term."""
        if self.create_time_min is not None and invocation.create_time < self.create_time_min:
            return False
        if self.create_time_max is not None and invocation.create_time >= self.create_time_max:
            return False
        return self.matches_index(invocation.model.name, invocation.input.metadata) and (
            self.state is None or invocation.state is self.state
        )

    def matches_index(self, model_name: str | None, metadata: Mapping[str, str] | None) -> bool:
        """The terms an index entry can answer alone (model, metadata): a store skips the
        entries that fail them without reading their rows."""
        if self.models is not None and (model_name or "") not in self.models:
            return False
        metadata = metadata or {}
        return all(metadata.get(key) == value for key, value in self.metadata)


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class PageCursor:
    """A position in the listing order (``create_time`` descending, then ``id`` ascending):
    a page continues with the invocations after it.

    With an ``id``, "after" means an older ``create_time``, or the same one and a greater id.
    Without one (``None``), it means every invocation older than ``create_time``: where a page
    that stopped between invocations (a store bounds the work of one page) goes on.
    """

    create_time: dt.datetime
    id: str | None = None

    @classmethod
    def of(cls, invocation: Invocation) -> PageCursor:
        return cls(create_time=invocation.create_time, id=invocation.id)

    def before(self, create_time: dt.datetime, invocation_id: str) -> bool:
        """Whether an invocation at (``create_time``, ``invocation_id``) comes after this
        position in the listing order."""
        if create_time < self.create_time:
            return True
        return self.id is not None and create_time == self.create_time and invocation_id > self.id


@dataclasses.dataclass(frozen=True, slots=True)
class InvocationQuery:
    """One page's worth of a listing, as the service asks a store for it."""

    filter: InvocationFilter = InvocationFilter()
    after: PageCursor | None = None
    """Continue after this position; ``None``: from the newest."""
    limit: int = 50
    """Most invocations to return (at least 1)."""
    with_content: bool = False
    max_content_bytes: int | None = None
    """With content: stop once the invocations of the page hold this many bytes of content
    (at least one invocation is returned)."""


@dataclasses.dataclass(frozen=True, slots=True)
class InvocationPage:
    """What a store returns for an ``InvocationQuery``: up to ``limit`` invocations in listing
    order, and where the next page starts (``None``: there is no more)."""

    invocations: tuple[Invocation, ...]
    next: PageCursor | None
