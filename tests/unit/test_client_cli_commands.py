"""``inference-client``'s own errors and options, without a server: ``--version``, a render
to a folder that does not exist, an unreadable CA file (each one clear line, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLIENT = Path(sys.executable).with_name("inference-client")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLIENT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "inference-client 0.1.0"


def test_render_to_a_missing_folder_is_one_line_not_a_traceback():
    result = run("render", "some-id", "-o", "/missing/dir/x.png", "--target", "127.0.0.1:9")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == "error: cannot write /missing/dir/x.png: no folder /missing/dir"


def test_an_unreadable_ca_file_is_a_usage_error(tmp_path):
    missing = tmp_path / "ca.pem"
    result = run("get", "x", "--ca-file", str(missing), "--target", "127.0.0.1:9")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr and "No such file" in result.stderr


def test_an_unreachable_target_is_one_line():
    result = run("get", "x", "--target", "127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: UNAVAILABLE") or line.startswith("error: DEADLINE_EXCEEDED")
