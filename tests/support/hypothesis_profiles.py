"""Hypothesis profiles of the fuzz tests (gRPC in tests/fuzz, REST through Envoy in tests/e2e),
chosen by ``HYPOTHESIS_PROFILE``; loaded once by ``tests/conftest.py``:

* ``quick`` (default): a modest number of cases per test, for every ``make test``;
* ``fuzz``: 10,000 cases per test (``make fuzz``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # gRPC round trips and image decodes vary in time: no per-case deadline
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("quick", max_examples=250, **_COMMON)
settings.register_profile("fuzz", max_examples=10_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))
