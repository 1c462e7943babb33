"""The real Application served from a thread with an event loop of its own, for synchronous
tests (property-based ones: hypothesis drives plain functions) with a blocking gRPC client."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from inference_service.app import Application
from inference_service.ports import Detector, InvocationStore
from inference_service.settings import Settings


class ServedApplication:
    """``with ServedApplication(settings, store=...) as served:`` serves on ``served.address``."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: InvocationStore | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.app = Application(settings, store=store, detector=detector)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="served-app", daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    def __enter__(self) -> ServedApplication:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.app.start(), self._loop).result(timeout=180)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.app.stop(grace=1), self._loop).result(60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
