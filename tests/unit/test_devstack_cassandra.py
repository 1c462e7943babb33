"""The command line of the local dev Cassandra node (``devstack.cassandra``). Nothing starts a
node here: the jars are stand-ins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.cassandra import (
    _TIMER_SLACK_LAUNCHER,
    CASSANDRA_VERSION,
    TIMER_SLACK_NS,
    LocalCassandra,
)

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="timer slack is a Linux setting"
)


def _node(tmp_path: Path, **options: object) -> LocalCassandra:
    lib = tmp_path / "dist" / f"cassandra-{CASSANDRA_VERSION}" / "lib"
    lib.mkdir(parents=True)
    (lib / f"cassandra-all-{CASSANDRA_VERSION}.jar").write_bytes(b"")
    (lib / ".complete").write_text(CASSANDRA_VERSION)
    return LocalCassandra(
        tmp_path / "node", dist_dir=tmp_path / "dist", class_data_sharing=False, **options
    )


@linux_only
def test_the_jvm_starts_with_a_coarse_timer_slack(tmp_path: Path) -> None:
    node = _node(tmp_path)

    argv = node.jvm_command()

    assert TIMER_SLACK_NS == 500_000
    assert argv == [
        sys.executable,
        "-c",
        _TIMER_SLACK_LAUNCHER,
        str(TIMER_SLACK_NS),
        "java",
        f"@{node.args_file}",
    ]


@linux_only
def test_the_launcher_sets_the_slack_and_becomes_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _TIMER_SLACK_LAUNCHER, "1000000", "cat", "/proc/self/timerslack_ns"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    assert result.stdout.strip() == "1000000"
    assert result.stderr == ""


def test_no_timer_slack_runs_java_directly(tmp_path: Path) -> None:
    node = _node(tmp_path, timer_slack_ns=None)

    assert node.jvm_command() == ["java", f"@{node.args_file}"]
