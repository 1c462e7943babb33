"""The Postman collection (`make postman`: tools/postman-collection.mjs, from the committed OpenAPI
file) run by Postman's own runner, newman, against the stack through Envoy: its requests, in its
order, with its collection variables set as a user would (baseUrl, id), work on one invocation:
Invoke 200, GetInvocation 200, RenderInvocation 200 with a PNG (the `{{id}}:render` URL), the
listing and the models 200, DeleteInvocation 200, and GetInvocation after the delete 404."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = REPO_ROOT / "api/openapi/inference/v1/inference_service.swagger.json"
SCRIPT = REPO_ROOT / "tools/postman-collection.mjs"
NEWMAN = REPO_ROOT / "node_modules/.bin/newman"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, images_dir: Path) -> Path:
    """The collection as `make postman` makes it, from this checkout's spec and script, with a
    face photo beside it as `face.jpg` (the raw upload's file)."""
    node = shutil.which("node")
    if node is None or not NEWMAN.is_file():
        pytest.fail("node or newman missing: run `make setup`")
    out = tmp_path_factory.mktemp("postman") / "inference-service.postman_collection.json"
    subprocess.run(
        [node, str(SCRIPT), str(SPEC), str(out)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.copyfile(images_dir / "face-1.jpg", out.parent / "face.jpg")
    return out


def newman(collection: Path, report: Path, variables: dict[str, str], *requests: str) -> list:
    """newman's executions of the collection (only ``requests``, by name, when given), with
    ``variables`` set as environment variables (over the collection's)."""
    command = [str(NEWMAN), "run", str(collection), "--reporters", "json"]
    command += ["--working-dir", str(collection.parent)]  # the upload's face.jpg
    command += ["--reporter-json-export", str(report), "--timeout-request", "60000"]
    for key, value in variables.items():
        command += ["--env-var", f"{key}={value}"]
    for name in requests:
        command += ["--folder", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = json.loads(report.read_text())["run"]
    assert not run["failures"], run["failures"]
    return run["executions"]


def header(response: dict, name: str) -> str | None:
    for entry in response.get("header", []):
        if entry["key"].lower() == name:
            return entry["value"]
    return None


def body(response: dict) -> bytes:
    return bytes(response["stream"]["data"])


def test_postman_collection_runs_against_the_stack(stack, collection, id_prefix, tmp_path):
    invocation_id = f"{id_prefix}-postman"
    variables = {"baseUrl": stack.rest_url, "id": invocation_id}
    executions = newman(collection, tmp_path / "run.json", variables)
    seen = {e["item"]["name"]: e for e in executions}
    assert [e["item"]["name"] for e in executions] == [
        "Invoke",
        "UploadInvocation",
        "GetInvocation",
        "RenderInvocation",
        "ListInvocations",
        "ListModels",
        "GetModel",
        "DeleteInvocation",
    ]
    statuses = {name: e["response"]["code"] for name, e in seen.items()}
    assert statuses == dict.fromkeys(seen, 200), {
        name: (code, body(seen[name]["response"])[:300]) for name, code in statuses.items()
    }
    # Each request named the invocation of `id`: the render URL too.
    render = seen["RenderInvocation"]
    assert render["request"]["url"]["path"][-1] == f"{invocation_id}:render"
    for name in ("GetInvocation", "DeleteInvocation"):
        assert seen[name]["request"]["url"]["path"][-1] == invocation_id
    invoked = json.loads(body(seen["Invoke"]["response"]))["invocation"]
    assert (invoked["id"], invoked["state"]) == (invocation_id, "STATE_SUCCEEDED")
    assert invoked["input"]["metadata"] == {"camera": "lobby"}  # the spec's example body
    read = json.loads(body(seen["GetInvocation"]["response"]))["invocation"]
    assert (read["id"], read["content_sha256"]) == (invocation_id, invoked["content_sha256"])
    assert header(render["response"], "content-type") == "image/png"
    assert body(render["response"]).startswith(PNG_SIGNATURE)
    assert json.loads(body(seen["GetModel"]["response"]))["model"]["name"] == "ultraface-rfb-320"
    uploaded = json.loads(body(seen["UploadInvocation"]["response"]))["invocation"]
    assert (uploaded["id"], uploaded["state"]) == (f"{invocation_id}-upload", "STATE_SUCCEEDED")
    assert uploaded["input"]["metadata"] == {"camera": "lobby"}
    assert uploaded["output"]["detections"]

    (after,) = newman(collection, tmp_path / "after.json", variables, "GetInvocation")
    assert after["response"]["code"] == 404, body(after["response"])[:300]
    assert json.loads(body(after["response"]))["code"] == 5  # NOT_FOUND
