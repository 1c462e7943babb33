"""The stubs that buf generates for other languages, run for real: a tiny Go client
(protoc-gen-go, protoc-gen-go-grpc) and a tiny TypeScript client (protoc-gen-es,
@connectrpc/connect-node) call the stack through Envoy over native gRPC: Invoke an image,
GetInvocation, and a NOT_FOUND. Both are built by `make clients` (part of `make setup`) into
build/clients."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GO_CLIENT = REPO_ROOT / "build/clients/inference-client-go"
TS_CLIENT = REPO_ROOT / "build/clients/ts/clients/ts/main.js"


def go_command(target: str, image: Path, invocation_id: str) -> list[str]:
    if not GO_CLIENT.is_file():
        pytest.fail(f"{GO_CLIENT} missing: run `make clients`")
    return [str(GO_CLIENT), "-target", target, "-image", str(image), "-id", invocation_id]


def ts_command(target: str, image: Path, invocation_id: str) -> list[str]:
    node = shutil.which("node")
    if node is None or not TS_CLIENT.is_file():
        pytest.fail(f"node or {TS_CLIENT} missing: run `make clients`")
    return [node, str(TS_CLIENT), target, str(image), invocation_id]


@pytest.mark.parametrize(("language", "command"), [("go", go_command), ("ts", ts_command)])
def test_client_in_another_language(stack, api, images_dir, id_prefix, language, command):
    image = images_dir / "face-2.jpg"
    invocation_id = f"{id_prefix}-stub-{language}"
    result = subprocess.run(
        command(stack.grpc_target, image, invocation_id),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    stored = api.get(f"/v1/invocations/{invocation_id}?view=INVOCATION_VIEW_BASIC").json()
    faces = len(stored["invocation"]["output"]["detections"])
    assert faces > 0
    state = "STATE_SUCCEEDED" if language == "go" else "SUCCEEDED"  # each language's enum names
    assert seen == {
        "invoke_state": state,
        "invoke_faces": faces,
        "get_id": invocation_id,
        "get_state": state,
        "get_faces": faces,
        "get_content": 0,  # the BASIC view
        "get_metadata": {"client": language},
        "content_sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
        "missing_code": "NotFound",
    }
