"""REST/JSON through Envoy on the real stack: every shared image, read-back, views, idempotency."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import re
import uuid
from pathlib import Path
from typing import Any

from PIL import Image
from support.http import Reply, RestClient
from support.reference import mismatches

INVOCATION_FIELDS = {
    "id",
    "input",
    "output",
    "state",
    "model",
    "model_version",
    "create_time",
    "complete_time",
    "error",
    "content_sha256",
}
INPUT_FIELDS = {"id", "content", "metadata"}
OUTPUT_FIELDS = {"detections", "image_width", "image_height"}
DETECTION_FIELDS = {"box", "score", "label"}
BOX_FIELDS = {"x_min", "y_min", "x_max", "y_max"}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Metadata that must come back unchanged: non-ASCII, an empty value, JSON-ish text.
METADATA = {"suite": "e2e", "note": "café ☕", "empty": "", "quoted": '{"a": [1, "b"]}'}


def invoke_body(invocation_id: str, content: bytes, metadata: dict[str, str]) -> dict[str, Any]:
    """An Invoke whose answer carries the content back (FULL), to compare with a read."""
    return {
        "input": {
            "id": invocation_id,
            "content": base64.b64encode(content).decode(),
            "metadata": metadata,
        },
        "view": "INVOCATION_VIEW_FULL",
    }


def invocation_of(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, (reply.status, reply.body[:500])
    body = reply.json()
    # Invoke's answer also says whether it was a replay; GetInvocation's has the invocation only.
    assert set(body) in ({"invocation"}, {"invocation", "replayed"}), body.keys()
    return body["invocation"]


def timestamp(text: str) -> dt.datetime:
    """An RFC 3339 timestamp as the transcoder prints it (UTC, ``Z``)."""
    assert text.endswith("Z"), text
    return dt.datetime.fromisoformat(text)


def shape_problems(invocation: dict[str, Any]) -> list[str]:
    """Proto field names, every primitive printed even at its default, nothing else."""
    problems = []
    if set(invocation) != INVOCATION_FIELDS:
        problems.append(f"invocation fields {sorted(invocation)}")
    if set(invocation.get("input", {})) != INPUT_FIELDS:
        problems.append(f"input fields {sorted(invocation.get('input', {}))}")
    output = invocation.get("output", {})
    if set(output) != OUTPUT_FIELDS:
        problems.append(f"output fields {sorted(output)}")
    for detection in output.get("detections", []):
        if set(detection) != DETECTION_FIELDS or set(detection["box"]) != BOX_FIELDS:
            problems.append(f"detection fields {detection}")
            break
    return problems


def boxes(invocation: dict[str, Any]) -> list[list[float]]:
    return [
        [d["box"]["x_min"], d["box"]["y_min"], d["box"]["x_max"], d["box"]["y_max"], d["score"]]
        for d in invocation["output"]["detections"]
    ]


def check_invocation(
    invocation: dict[str, Any],
    *,
    invocation_id: str,
    content: bytes,
    metadata: dict[str, str],
    expected: dict[str, Any],
    model_version: str,
) -> list[str]:
    """Everything an Invoke (or a FULL read) of a shared image must say; the problems found."""
    problems = shape_problems(invocation)
    if problems:
        return problems
    want = {
        "id": invocation_id,
        "state": "STATE_SUCCEEDED",
        "model": "ultraface-rfb-320",  # the default (its alias: face-detector)
        "model_version": model_version,
        "error": "",
        "content_sha256": hashlib.sha256(content).hexdigest(),
    }
    got = {key: invocation[key] for key in want}
    if got != want:
        problems.append(f"{got} != {want}")
    model_input = invocation["input"]
    if model_input["id"] != invocation_id or model_input["metadata"] != metadata:
        problems.append(f"input {model_input['id']!r} metadata {model_input['metadata']}")
    if base64.b64decode(model_input["content"]) != content:
        problems.append("content is not byte-identical")
    output = invocation["output"]
    size = (output["image_width"], output["image_height"])
    if size != (expected["width"], expected["height"]):
        problems.append(f"size {size}")
    problems += mismatches(boxes(invocation), expected["boxes"])
    scores = [d["score"] for d in output["detections"]]
    if scores != sorted(scores, reverse=True):
        problems.append("detections not highest score first")
    if {d["label"] for d in output["detections"]} - {"face"}:
        problems.append("a label is not 'face'")
    if timestamp(invocation["complete_time"]) < timestamp(invocation["create_time"]):
        problems.append("complete_time before create_time")
    return problems


def test_every_shared_image_over_rest_matches_reference_and_reads_back(
    api: RestClient, id_prefix: str, images_dir: Path, reference: dict[str, Any], model_path: Path
) -> None:
    """POST each shared image (base64 JSON, with metadata) -> 200 and the reference detections;
    GET returns the same invocation with byte-identical content; the BASIC view omits only the
    content (printed as an empty string) and keeps content_sha256."""
    model_version = hashlib.sha256(model_path.read_bytes()).hexdigest()
    problems: dict[str, list[str]] = {}
    for name, expected in reference["images"].items():
        content = (images_dir / name).read_bytes()
        invocation_id = f"{id_prefix}-rest-{name}"
        metadata = {**METADATA, "file": name}
        created = invocation_of(
            api.post_json("/v1/invocations", invoke_body(invocation_id, content, metadata))
        )
        found = check_invocation(
            created,
            invocation_id=invocation_id,
            content=content,
            metadata=metadata,
            expected=expected,
            model_version=model_version,
        )

        full = invocation_of(api.get(f"/v1/invocations/{invocation_id}"))
        if full != created:
            found.append("GET differs from the Invoke response")
        basic = invocation_of(
            api.get(f"/v1/invocations/{invocation_id}?view=INVOCATION_VIEW_BASIC")
        )
        if basic["input"]["content"] != "":
            found.append("BASIC view has content")
        without_content = {**created, "input": {**created["input"], "content": ""}}
        if basic != without_content:
            found.append("BASIC view differs from FULL in more than the content")
        if found:
            problems[name] = found
    assert len(reference["images"]) == 16
    assert not problems, problems


def _blank_png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_no_id_no_metadata_no_face_prints_defaults_and_assigns_uuid(api: RestClient) -> None:
    """Empty detections and metadata are printed as [] and {}; the server assigns a UUID id."""
    content = _blank_png()
    body = {"input": {"content": base64.b64encode(content).decode()}}
    created = invocation_of(api.post_json("/v1/invocations", body))
    assert shape_problems(created) == []
    assert str(uuid.UUID(created["id"])) == created["id"]
    assert created["input"]["id"] == created["id"]
    assert created["input"]["metadata"] == {}
    assert created["output"] == {"detections": [], "image_width": 64, "image_height": 48}
    assert created["state"] == "STATE_SUCCEEDED"
    assert SHA256_HEX.fullmatch(created["model_version"])

    assert created["input"]["content"] == ""  # Invoke's default view: BASIC
    read = invocation_of(api.get(f"/v1/invocations/{created['id']}"))
    assert base64.b64decode(read["input"]["content"]) == content
    assert {**read, "input": {**read["input"], "content": ""}} == created


def test_invoke_is_idempotent_over_rest(api: RestClient, id_prefix: str, images_dir: Path) -> None:
    """The same id and content twice: 200 both times, the same body (the stored invocation)."""
    content = (images_dir / "face-5.jpg").read_bytes()
    body = invoke_body(f"{id_prefix}-idempotent", content, {"try": "same"})
    first = api.post_json("/v1/invocations", body)
    second = api.post_json("/v1/invocations", body)
    assert (first.status, second.status) == (200, 200), (first.body[:300], second.body[:300])
    assert second.json()["invocation"] == first.json()["invocation"]
    # The retry is marked (issue 21 item 4): in the body and as a response header.
    assert (first.json()["replayed"], second.json()["replayed"]) == (False, True)
    assert second.headers.get("inference-replayed") == "true"
    assert "inference-replayed" not in first.headers
    assert len(first.json()["invocation"]["output"]["detections"]) == 1
