"""Issue 21 item 7: every start-up failure of ``inference-service serve`` (the gRPC port or the
metrics port in use, a missing model file, an unreachable store, a bad setting) ends with ONE
clear line on stderr naming the setting to change, no traceback, and exit code 2. Real
processes; the ports are held by real sockets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PREFIX = "inference-service: cannot start: "


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port of 127.0.0.1 that another process's socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve(shared_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")},
        "INFERENCE_SHARED_DIR": str(shared_dir),
        "INFERENCE_STORE": "memory",
        "INFERENCE_PORT": "0",
        "INFERENCE_METRICS_PORT": "0",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "inference_service", "serve", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def the_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2, no traceback, and the last line of stderr is the only 'cannot start'."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(PREFIX), lines[-5:]
    assert sum("cannot start" in line for line in lines) == 1, lines
    return lines[-1]


def test_metrics_port_in_use(shared_dir, held_port):
    """Before: OSError [Errno 98] from prometheus_client, with a traceback, exit 1."""
    line = the_one_line(serve(shared_dir, INFERENCE_METRICS_PORT=str(held_port)))
    assert f"127.0.0.1:{held_port}" in line
    assert "INFERENCE_METRICS_PORT" in line and "INFERENCE_METRICS_HOST" in line


def test_grpc_port_in_use(shared_dir, held_port):
    line = the_one_line(serve(shared_dir, "--port", str(held_port)))
    assert f"127.0.0.1:{held_port}" in line
    assert "INFERENCE_PORT" in line


def test_grpc_host_not_of_this_host(shared_dir):
    line = the_one_line(serve(shared_dir, INFERENCE_HOST="192.0.2.1"))
    assert "192.0.2.1" in line and "INFERENCE_HOST" in line


def test_missing_model_file(shared_dir, tmp_path):
    missing = tmp_path / "missing.tflite"
    line = the_one_line(serve(shared_dir, "--model-path", str(missing)))
    assert str(missing) in line and "INFERENCE_MODEL_PATH" in line


def test_unreachable_store(shared_dir, held_port):
    """A port that accepts TCP but speaks no CQL: the driver gives up, the server says where
    it looked and which settings say so."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        result = serve(
            shared_dir,
            INFERENCE_STORE="cassandra",
            INFERENCE_CASSANDRA_CONTACT_POINTS="127.0.0.1",
            INFERENCE_CASSANDRA_PORT=str(port),
        )
    line = the_one_line(result)
    assert f"port {port}" in line
    assert "INFERENCE_CASSANDRA_CONTACT_POINTS" in line and "INFERENCE_CASSANDRA_PORT" in line


def test_invalid_setting(shared_dir):
    line = the_one_line(serve(shared_dir, INFERENCE_METRICS_PORT="70000"))
    assert "INFERENCE_METRICS_PORT" in line
