"""``INFERENCE_EVENT_LOOP``: the loop ``serve`` runs on."""

from __future__ import annotations

import asyncio

import pytest

from inference_service.cli import _loop_factory
from inference_service.settings import Settings


def test_the_default_is_asyncios_own_loop(monkeypatch) -> None:
    monkeypatch.delenv("INFERENCE_EVENT_LOOP", raising=False)
    assert Settings().event_loop == "asyncio"
    assert _loop_factory("asyncio") is None


def test_uvloop_is_chosen_by_setting(monkeypatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv("INFERENCE_EVENT_LOOP", "uvloop")
    factory = _loop_factory(Settings().event_loop)
    assert factory is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        assert runner.run(asyncio.sleep(0, result=7)) == 7


def test_an_unknown_loop_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("INFERENCE_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
