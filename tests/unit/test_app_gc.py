"""The server moves what start-up built out of the cyclic collector's reach (``gc.freeze``), so
that a full collection does not walk the models' and libraries' objects with the event loop
stopped (docs/performance.md, round four's open-loop tail), and gives it back on stop; a reload
gives the retired model versions back to the collector."""

from __future__ import annotations

import gc
import types

import pytest
from support.fakes import FakeDetector

from inference_service import app as app_module
from inference_service.app import Application
from inference_service.domain import ModelDescription
from inference_service.models.registry import LoadedModel, LoadedModelRegistry
from inference_service.settings import Settings
from inference_service.stores.memory import InMemoryInvocationStore

FROZEN_AFTER_START = 10_000
"""Every object alive after start-up (the modules, grpc's, the application's): far more."""


def model() -> LoadedModel:
    detector = FakeDetector()
    return LoadedModel(detector, ModelDescription(detector.info, "test", is_default=True))


@pytest.fixture
def application(tmp_path, monkeypatch):
    """A started-then-stopped application over a registry whose reloads load a new version."""
    gc.unfreeze()
    monkeypatch.setattr(
        app_module,
        "load_models_config",
        lambda settings: types.SimpleNamespace(default_name="face-detector"),
    )
    monkeypatch.setattr(app_module, "load_models", lambda config, options, current: [model()])
    first = model()
    app = Application(
        Settings(port=0, host="127.0.0.1", shared_dir=tmp_path, workers=1),
        store=InMemoryInvocationStore(),
        models=LoadedModelRegistry([first], default="face-detector"),
    )
    return app, first


async def test_start_freezes_what_start_up_built_and_stop_unfreezes_it(application) -> None:
    app, _ = application
    assert gc.get_freeze_count() == 0
    await app.start()
    try:
        assert gc.get_freeze_count() > FROZEN_AFTER_START
    finally:
        await app.stop(grace=0)
    assert gc.get_freeze_count() == 0


async def test_a_reload_with_no_call_in_flight_freezes_again(application) -> None:
    app, first = application
    await app.start()
    try:
        assert await app.reload()
        assert first.closed  # retired and closed before the freeze: collectable
        assert gc.get_freeze_count() > FROZEN_AFTER_START
    finally:
        await app.stop(grace=0)


async def test_a_reload_while_a_call_holds_the_old_version_leaves_it_collectable(
    application,
) -> None:
    app, first = application
    await app.start()
    try:
        lease = app.models.acquire("")  # a call in flight on the first version
        assert await app.reload()
        assert not first.closed
        # Nothing frozen: the old version's cycles are collected once its call ends.
        assert gc.get_freeze_count() == 0
        lease.release()
        assert first.closed
    finally:
        await app.stop(grace=0)
