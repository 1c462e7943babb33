"""The bench's report: round four's targets and keys (``bench/report.py``), and pinning threads
to CPUs for the split layout (``bench/procstats.py``). Nothing is measured here."""

from __future__ import annotations

import os
import sys

import pytest

from bench import procstats
from bench.report import REQUIRED_KEYS, evaluate_targets


def _target(metrics: dict[str, float], expression_start: str) -> dict[str, object]:
    found = [t for t in evaluate_targets(metrics) if t["expression"].startswith(expression_start)]
    assert len(found) == 1, found
    return found[0]


def test_the_split_layout_is_compared_with_mlserver_on_one_cpu() -> None:
    metrics = {"invoke_split_grpc_envoy_c16_img_s": 90.0, "mlserver_1cpu_best_c16_img_s": 100.0}

    target = _target(metrics, "invoke_split_grpc_envoy_c16_img_s / mlserver_1cpu")

    assert target["value"] == 0.9
    assert target["ok"] is False
    assert target["miss_by"] == pytest.approx(0.1)


def test_open_loop_latency_targets_replace_the_saturated_p99() -> None:
    metrics = {
        "get_rest_envoy_rate500_p99_ms": 4.0,
        "get_grpc_direct_rate500_p99_ms": 3.5,
        "get_rest_envoy_c16_p99_ms": 25.0,
    }
    targets = evaluate_targets(metrics)

    assert not [t for t in targets if t["expression"] == "get_rest_envoy_c16_p99_ms"]
    assert _target(metrics, "get_rest_envoy_rate500_p99_ms")["ok"] is True
    assert _target(metrics, "get_grpc_direct_rate500_p99_ms")["ok"] is False


def test_the_memory_store_server_cpu_target() -> None:
    metrics = {"memory_server_cpu_ms_per_invoke": 15.0, "ceiling_cpu_ms_per_img": 9.1}

    target = _target(metrics, "memory_server_cpu_ms_per_invoke / ceiling")

    assert target["value"] == pytest.approx(1.648, abs=0.001)
    assert target["ok"] is False


def test_the_new_keys_are_required_and_the_old_ones_stay() -> None:
    for key in (
        "invoke_split_grpc_envoy_c16_img_s",
        "mlserver_1cpu_best_c16_img_s",
        "get_rest_envoy_rate500_p99_ms",
        "get_grpc_direct_rate500_p99_ms",
        "invoke_grpc_envoy_halfmax_p99_ms",
        "get_rest_envoy_c16_p99_ms",
        "invoke_grpc_envoy_c16_img_s",
    ):
        assert key in REQUIRED_KEYS


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs Linux and two CPUs",
)
def test_pin_confines_every_thread_and_can_undo_it() -> None:
    everything = procstats.usable_cpus()
    pid = os.getpid()
    try:
        pinned = procstats.pin([pid], {everything[0]})

        assert pinned == len(os.listdir(f"/proc/{pid}/task"))
        assert os.sched_getaffinity(0) == {everything[0]}
    finally:
        procstats.pin([pid], everything)
    assert os.sched_getaffinity(0) == set(everything)


def test_a_run_without_the_split_layout_does_not_ask_for_its_keys() -> None:
    """``--no-split`` (or one CPU) skips the pinned runs: none of their keys may be reported
    missing (a run with ``--no-split`` failed on ``split_envoy_cpu_ms_per_invoke``)."""
    from bench.run import SPLIT_KEYS

    pinned = {key for key in REQUIRED_KEYS if "split_" in key or "_1cpu_" in key}
    assert pinned <= set(SPLIT_KEYS)
    assert {"split_envoy_cpu_ms_per_invoke", "mlserver_1cpu_best_config"} <= pinned
