"""Test doubles shared by several suites: a fake detector and decoder, a store that records its
claims, and the small images and fixed clock the service tests use with them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import numpy as np

from inference_service.domain import (
    BoundingBox,
    Detection,
    Invocation,
    ModelInfo,
    ModelOutput,
)
from inference_service.errors import InvalidArgumentError
from inference_service.service import InferenceService
from inference_service.stores.memory import InMemoryInvocationStore

# Contents that fake_decode takes for a PNG and a JPEG (the magic bytes, then anything).
PNG = b"\x89PNG\r\n\x1a\n" + b"rest-of-a-png"
JPEG = b"\xff\xd8\xff\xe0" + b"rest-of-a-jpeg"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

# The unit tests' `make_service` fixture (tests/unit/conftest.py): keyword arguments of
# InferenceService in, the service out.
MakeService = Callable[..., InferenceService]


def fake_decode(content: bytes, max_pixels: int) -> np.ndarray:
    """An 8x6 black image for content that starts like a PNG or a JPEG; ``INVALID_ARGUMENT``
    otherwise, and for content holding ``huge`` under a limit of fewer than 10,000 pixels."""
    if not content.startswith((b"\x89PNG", b"\xff\xd8")):
        raise InvalidArgumentError("input.content is not a decodable image")
    if b"huge" in content and max_pixels < 10_000:
        raise InvalidArgumentError("image is too large")
    return np.zeros((6, 8, 3), dtype=np.uint8)


class RecordingStore(InMemoryInvocationStore):
    """The in-memory store, remembering the id of every claim that stored an input (the only
    write that does), so that a test can tell that a rejected request stored nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed: list[str] = []

    async def claim(self, invocation: Invocation) -> Invocation | None:
        existing = await super().claim(invocation)
        if existing is None:
            self.claimed.append(invocation.id)
        return existing


class FakeDetector:
    """Finds one face in every image, in a known place; counts its calls. ``delay``: seconds
    each call sleeps; ``fail``: each call raises (with a message that must not reach a
    client)."""

    def __init__(self, *, fail: bool = False, delay: float = 0.0) -> None:
        self.calls = 0
        self.fail = fail
        self.delay = delay

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name="face-detector", version="v-test")

    def detect(self, image: np.ndarray) -> ModelOutput:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom: secret internal detail")
        height, width = image.shape[:2]
        box = BoundingBox(0.0, 0.0, width / 2, height / 2)
        return ModelOutput((Detection(box, 0.9, "face"),), width, height)

    def close(self) -> None:
        pass
