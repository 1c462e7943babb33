"""`make breaking` runs `buf breaking` against the previous commit's API; here: it accepts the API
as it is and rejects a breaking change (a removed field, a renamed RPC)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUF = REPO_ROOT / "node_modules/.bin/buf"
PROTO = "api/inference/v1/inference_service.proto"


def workspace(root: Path) -> Path:
    shutil.copytree(REPO_ROOT / "api", root / "api")
    shutil.copy(REPO_ROOT / "buf.yaml", root / "buf.yaml")
    shutil.copytree(REPO_ROOT / "build/third_party", root / "build/third_party")
    return root


def breaking(changed: Path, against: Path) -> subprocess.CompletedProcess[str]:
    if not BUF.is_file():
        pytest.fail("buf missing: run `make setup`")
    return subprocess.run(
        [str(BUF), "breaking", str(changed), "--against", str(against)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("  string content_sha256 = 10;\n", "", "content_sha256"),
        ("rpc GetInvocation(", "rpc ReadInvocation(", "GetInvocation"),
    ],
)
def test_breaking_changes_fail(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    before = workspace(tmp_path / "before")
    after = workspace(tmp_path / "after")
    assert breaking(after, before).returncode == 0
    proto = after / PROTO
    text = proto.read_text()
    assert old in text
    proto.write_text(text.replace(old, new))
    result = breaking(after, before)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr
