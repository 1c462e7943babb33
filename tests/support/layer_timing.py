"""How long each layer of the suite took (``tests/<layer>/``: unit, integration, e2e, faults,
fuzz, docker), printed at the end of every pytest run; loaded by ``tests/conftest.py``.

A test's time is its wall time from the start of its setup to the end of its teardown, so a
session fixture (a Cassandra node, an Envoy stack) counts in the layer of the first test that
asks for it. The budget these figures are held to is in docs/testing.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest


@dataclass
class _Layer:
    seconds: float = 0.0
    tests: int = 0


_layers: dict[str, _Layer] = {}
_started: dict[str, float] = {}


def layer_of(nodeid: str) -> str:
    """The first folder under tests/ (``unit``, ``e2e``...) of a test id (ids are relative to
    the repository root, where pyproject.toml is), or ``tests`` for a file there."""
    parts = nodeid.split("::", 1)[0].split("/")
    if parts[0] == "tests":
        parts = parts[1:]
    return parts[0] if len(parts) > 1 else "tests"


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _started[nodeid] = time.monotonic()


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    started = _started.pop(nodeid, None)
    if started is None:
        return
    layer = _layers.setdefault(layer_of(nodeid), _Layer())
    layer.seconds += time.monotonic() - started
    layer.tests += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _layers:
        return
    terminalreporter.write_sep("-", "time by layer")
    for name, layer in _layers.items():  # in the order they ran
        terminalreporter.write_line(f"{name:<12} {layer.seconds:8.1f} s  ({layer.tests} tests)")
    total = sum(layer.seconds for layer in _layers.values())
    terminalreporter.write_line(f"{'all':<12} {total:8.1f} s")
