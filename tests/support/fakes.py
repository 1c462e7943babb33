"""Test doubles shared by several suites."""

from __future__ import annotations

import numpy as np

from inference_service.domain import (
    BoundingBox,
    Detection,
    Invocation,
    ModelInfo,
    ModelOutput,
)
from inference_service.stores.memory import InMemoryInvocationStore


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
    """Finds one face in every image, in a known place; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name="face-detector", version="v-test")

    def detect(self, image: np.ndarray) -> ModelOutput:
        self.calls += 1
        height, width = image.shape[:2]
        box = BoundingBox(0.0, 0.0, width / 2, height / 2)
        return ModelOutput((Detection(box, 0.9, "face"),), width, height)

    def close(self) -> None:
        pass
