"""LoadedModelRegistry: names and aliases, the default, leases, and replacing models without
closing one a call still holds."""

from __future__ import annotations

import numpy as np
import pytest

from inference_service.domain import ModelDescription, ModelInfo, ModelOutput
from inference_service.errors import NotFoundError
from inference_service.models.registry import LoadedModel, LoadedModelRegistry


class Detector:
    def __init__(self, name: str, version: str = "v1") -> None:
        self.info = ModelInfo(name, version)
        self.closed = False

    def detect(self, image: np.ndarray) -> ModelOutput:
        return ModelOutput((), image.shape[1], image.shape[0])

    def close(self) -> None:
        self.closed = True


def loaded(name: str, version: str = "v1", aliases: tuple[str, ...] = ()) -> LoadedModel:
    detector = Detector(name, version)
    return LoadedModel(detector, ModelDescription(detector.info, "test", aliases=aliases))


@pytest.fixture
def registry() -> LoadedModelRegistry:
    return LoadedModelRegistry(
        [loaded("zeta"), loaded("alpha", aliases=("face-detector", "a")), loaded("mid")],
        default="alpha",
    )


def test_names_aliases_and_the_default(registry: LoadedModelRegistry) -> None:
    for name in ("", "alpha", "a", "face-detector"):
        lease = registry.acquire(name)
        assert lease.detector.info.name == "alpha"
        lease.release()
    assert registry.acquire("zeta").detector.info.name == "zeta"
    with pytest.raises(NotFoundError, match="model 'nope' not found; this server serves: a, "):
        registry.acquire("nope")
    assert registry.describe("a").info.name == "alpha"


def test_list_puts_the_default_first_then_sorts(registry: LoadedModelRegistry) -> None:
    listed = registry.list()
    assert [m.info.name for m in listed] == ["alpha", "mid", "zeta"]
    assert [m.is_default for m in listed] == [True, False, False]
    assert all(m.ready for m in listed)


def test_names_and_aliases_are_unique() -> None:
    with pytest.raises(ValueError, match="used twice"):
        LoadedModelRegistry([loaded("a"), loaded("b", aliases=("a",))], default="a")
    with pytest.raises(ValueError, match="default model 'c'"):
        LoadedModelRegistry([loaded("a")], default="c")


def test_replace_closes_an_old_version_only_when_its_last_call_is_done(
    registry: LoadedModelRegistry,
) -> None:
    old = registry.loaded()["alpha"]
    mid = registry.loaded()["mid"]
    held = registry.acquire("alpha")
    held_twice = registry.acquire("a")
    new = loaded("alpha", "v2", aliases=("face-detector",))
    registry.replace([new, registry.loaded()["zeta"]], default="zeta")
    assert registry.acquire("").detector.info.name == "zeta"
    assert registry.acquire("alpha").detector.info.version == "v2"
    with pytest.raises(NotFoundError):
        registry.acquire("mid")  # removed ...
    assert registry.loaded().keys() == {"alpha", "zeta"}
    assert mid.detector.closed  # removed, and nobody held it: closed at once
    assert not old.closed and not old.detector.closed  # still held by two calls
    held.release()
    held.release()  # idempotent
    assert not old.detector.closed
    held_twice.release()
    assert old.closed and old.detector.closed
    assert not new.detector.closed


def test_a_removed_model_nobody_holds_is_closed_at_once(registry: LoadedModelRegistry) -> None:
    mid = registry.loaded()["mid"]
    registry.replace([registry.loaded()["alpha"]], default="alpha")
    assert mid.detector.closed
    assert not registry.loaded()["alpha"].detector.closed  # kept as it was


def test_close_retires_everything(registry: LoadedModelRegistry) -> None:
    lease = registry.acquire("zeta")
    registry.close()
    assert registry.loaded()["alpha"].detector.closed
    assert not lease.detector.closed
    lease.release()
    assert lease.detector.closed


def test_single() -> None:
    detector = Detector("face-detector", "v-test")
    registry = LoadedModelRegistry.single(detector)
    assert registry.acquire("").detector is detector
    assert registry.list()[0].is_default
