"""The stubs that buf generates for other languages, run for real: a tiny Go client
(protoc-gen-go, protoc-gen-go-grpc) and a tiny TypeScript client (protoc-gen-es,
@connectrpc/connect-node) call the stack through Envoy over native gRPC: Invoke an image,
GetInvocation, a NOT_FOUND, ListInvocations following every page (pages of 1), and
DeleteInvocation (then Get is NOT_FOUND, List leaves it out, a second delete is NOT_FOUND
unless allow_missing). Both are built by `make clients` (part of `make setup`) into
build/clients."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from support.http import assert_status_json

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
    faces = seen["invoke_faces"]
    assert faces > 0
    state = "STATE_SUCCEEDED" if language == "go" else "SUCCEEDED"  # each language's enum names
    # Pages of 1: every invocation with the client's metadata on a page of its own (perhaps
    # one more, empty, page before the end).
    assert seen.pop("list_pages") >= seen.pop("list_ids") >= 1
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
        "listed": 1,  # exactly once
        "get_deleted_code": "NotFound",
        "listed_after_delete": 0,
        "delete_again_code": "NotFound",
        "allow_missing_code": "OK",
    }
    assert_status_json(api.get(f"/v1/invocations/{invocation_id}"), 404, grpc.StatusCode.NOT_FOUND)
