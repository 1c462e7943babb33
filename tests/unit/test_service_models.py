"""The service with several models: each Invoke runs (and records) the model it names, holds
that model's version to the end of its unit of work, and an id stays bound to the model that
first ran it."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time

import numpy as np
import pytest
from support.fakes import NOW, PNG

from inference_service.domain import (
    BoundingBox,
    Claim,
    Detection,
    Invocation,
    ModelDescription,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)
from inference_service.errors import InvalidArgumentError, ModelNotReadyError, NotFoundError
from inference_service.models.registry import LoadedModel, LoadedModelRegistry


class NamedDetector:
    def __init__(self, name: str, version: str, *, delay: float = 0.0) -> None:
        self.info = ModelInfo(name, version)
        self.delay = delay
        self.calls = 0
        self.closed = False

    def detect(self, image: np.ndarray) -> ModelOutput:
        self.calls += 1
        time.sleep(self.delay)
        if self.closed:
            raise ModelNotReadyError("closed")
        box = BoundingBox(0.0, 0.0, 1.0, 1.0)
        return ModelOutput((Detection(box, 0.9, self.info.name),), 8, 6)

    def close(self) -> None:
        self.closed = True


def loaded(detector: NamedDetector, *aliases: str) -> LoadedModel:
    return LoadedModel(detector, ModelDescription(detector.info, "test", aliases=aliases))


@pytest.fixture
def rfb() -> NamedDetector:
    return NamedDetector("ultraface-rfb-320", "rfb-v1")


@pytest.fixture
def slim() -> NamedDetector:
    return NamedDetector("ultraface-slim-320", "slim-v1")


@pytest.fixture
def registry(rfb, slim) -> LoadedModelRegistry:
    return LoadedModelRegistry(
        [loaded(rfb, "face-detector"), loaded(slim)], default="ultraface-rfb-320"
    )


@pytest.fixture
def make_service(make_service, registry):
    """The shared builder (tests/unit/conftest.py) on the two models of ``registry``."""
    return functools.partial(make_service, models=registry)


@pytest.mark.parametrize(
    ("asked", "ran"),
    [
        ("", "ultraface-rfb-320"),
        ("face-detector", "ultraface-rfb-320"),
        ("ultraface-rfb-320", "ultraface-rfb-320"),
        ("ultraface-slim-320", "ultraface-slim-320"),
    ],
)
async def test_each_invoke_runs_and_records_its_model(
    make_service, store, registry, executor, asked, ran
) -> None:
    service = make_service()
    done = await service.invoke(ModelInput("x", PNG), model=asked)
    version = {"ultraface-rfb-320": "rfb-v1", "ultraface-slim-320": "slim-v1"}[ran]
    assert done.model == ModelInfo(ran, version)
    assert done.output.detections[0].label == ran  # that model ran
    assert (await store.get("x")).model == ModelInfo(ran, version)


async def test_an_unknown_model_is_not_found_before_anything_is_stored(
    make_service, store, registry, executor
) -> None:
    service = make_service()
    with pytest.raises(NotFoundError, match="model 'yolo' not found"):
        await service.invoke(ModelInput("x", PNG), model="yolo")
    assert await store.get("x") is None


async def test_an_id_stays_bound_to_the_model_that_first_ran_it(
    make_service, store, registry, executor, rfb, slim
) -> None:
    service = make_service()
    first = await service.invoke(ModelInput("x", PNG), model="ultraface-slim-320")
    again = await service.invoke(ModelInput("x", PNG), model="ultraface-rfb-320")
    assert again == first and again.model.name == "ultraface-slim-320"
    assert (slim.calls, rfb.calls) == (1, 0)


async def test_a_reload_lets_calls_in_flight_finish_on_their_version(
    make_service, store, executor
) -> None:
    old = NamedDetector("m", "v1", delay=0.3)
    registry = LoadedModelRegistry([loaded(old)], default="m")
    service = make_service(models=registry)
    running = asyncio.ensure_future(service.invoke(ModelInput("in-flight", PNG)))
    await asyncio.sleep(0.1)  # in the model
    new = NamedDetector("m", "v2")
    registry.replace([loaded(new)], default="m")
    after = await service.invoke(ModelInput("after", PNG))
    assert after.model.version == "v2"
    assert not old.closed
    done = await running
    assert done.state is State.SUCCEEDED and done.model.version == "v1"
    assert old.closed and not new.closed


async def test_a_taken_over_claim_runs_the_model_the_id_is_bound_to(
    make_service, store, registry, executor, rfb, slim
) -> None:
    orphaned = Invocation(
        input=ModelInput("orphan", PNG),
        content_sha256=hashlib.sha256(PNG).hexdigest(),
        state=State.PENDING,
        model=ModelInfo("ultraface-slim-320", "slim-v0"),  # an older version of slim
        create_time=NOW,
        claim=Claim(token="dead-owner", time=NOW),
    )
    assert await store.claim(orphaned) is None
    service = make_service(claim_lease_s=1, pending_wait_s=0.05)
    done = await service.invoke(ModelInput("orphan", PNG), model="face-detector")
    assert done.model == ModelInfo("ultraface-slim-320", "slim-v1")  # what actually ran
    assert (slim.calls, rfb.calls) == (1, 0)
    assert (await store.get("orphan")).model == done.model


async def test_list_and_get_models(make_service, store, registry, executor) -> None:
    service = make_service()
    assert [m.info.name for m in service.list_models()] == [
        "ultraface-rfb-320",
        "ultraface-slim-320",
    ]
    assert service.get_model("face-detector").info.name == "ultraface-rfb-320"
    with pytest.raises(NotFoundError):
        service.get_model("nope")
    with pytest.raises(InvalidArgumentError):
        service.get_model("")
