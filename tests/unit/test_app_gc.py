"""The server moves what start-up built out of the cyclic collector's reach (``gc.freeze``), so
that a full collection does not walk the models' and libraries' objects with the event loop
stopped (docs/performance.md, round four's open-loop tail), and gives it back on stop."""

from __future__ import annotations

import gc

from support.fakes import FakeDetector

from inference_service.app import Application
from inference_service.settings import Settings
from inference_service.stores.memory import InMemoryInvocationStore


async def test_start_freezes_what_start_up_built_and_stop_unfreezes_it(tmp_path) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    app = Application(
        Settings(port=0, host="127.0.0.1", shared_dir=tmp_path, workers=1),
        store=InMemoryInvocationStore(),
        detector=FakeDetector(),
    )
    await app.start()
    try:
        # Every object alive after start-up (the modules, grpc's, the application's), not a
        # handful.
        assert gc.get_freeze_count() > 10_000
    finally:
        await app.stop(grace=0)
    assert gc.get_freeze_count() == 0
