"""Fixtures of the unit tests: the in-memory store, the fake detector, a worker pool, and
``make_service``, which builds the service under test on them.

A module that needs other defaults overrides ``make_service`` with a fixture of the same name
that asks for this one (``test_service.py``: a fixed clock and id; ``test_claim_lease.py``: a
clock to move, claim tokens and the lease).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from support.fakes import FakeDetector, MakeService, fake_decode

from inference_service.service import InferenceService, RequestLimits
from inference_service.stores.memory import InMemoryInvocationStore


@pytest.fixture
def store() -> InMemoryInvocationStore:
    return InMemoryInvocationStore()


@pytest.fixture
def detector() -> FakeDetector:
    return FakeDetector()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def make_service(
    store: InMemoryInvocationStore, detector: FakeDetector, executor: ThreadPoolExecutor
) -> MakeService:
    """``make_service(**arguments)``: an ``InferenceService`` on this test's store, detector
    and pool, the fake decoder and small limits (1,000 bytes, 100 pixels); any argument of
    ``InferenceService`` overrides them (``models=`` stands in for the detector)."""

    def make(**arguments: Any) -> InferenceService:
        defaults: dict[str, Any] = {
            "store": store,
            "detector": detector,
            "decode": fake_decode,
            "executor": executor,
            "limits": RequestLimits(max_content_bytes=1000, max_image_pixels=100),
        }
        if "models" in arguments:
            del defaults["detector"]
        return InferenceService(**{**defaults, **arguments})

    return make
