"""``inference-client`` (the installed entry point) against the real stack through Envoy:
a folder invoked concurrently, resumed on a second run, failures listed with a non-zero exit;
``get`` as a table and as the API's JSON; ``render`` to a PNG; ``list`` following every page,
``delete``."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from PIL import Image

CLIENT = Path(sys.executable).with_name("inference-client")


def client(stack, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERENCE_TARGET": stack.grpc_target, "COLUMNS": "200"}
    return subprocess.run(
        [str(CLIENT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_invoke_a_folder_then_resume_get_and_render(stack, images_dir, id_prefix, tmp_path):
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    for name in ("face-1.jpg", "face-2.jpg"):
        shutil.copy(images_dir / name, photos / name)
    shutil.copy(images_dir / "face-3.jpg", photos / "trip" / "day 1.jpg")
    (photos / "trip" / "broken.png").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("not sent")
    prefix = f"{id_prefix}-cli-"

    first = client(
        stack, "invoke", "photos", "--concurrency", "3", "--id-prefix", prefix, cwd=tmp_path
    )
    assert first.returncode == 1, first.stdout + first.stderr
    assert "4 files: 3 succeeded (0 already stored), 1 failed" in first.stdout, first.stdout
    assert f"{prefix}photos~face-1.jpg" in first.stdout
    assert "photos/trip/broken.png" in first.stdout.split("failed:")[1]
    assert "INVALID_ARGUMENT" in first.stdout.split("failed:")[1]
    assert "notes.txt" not in first.stdout
    assert "files/s" in first.stderr  # the progress bar's rate

    second = client(stack, "invoke", "photos", "--id-prefix", prefix, cwd=tmp_path)
    assert second.returncode == 1
    assert "4 files: 3 succeeded (3 already stored), 1 failed" in second.stdout, second.stdout
    assert "SUCCEEDED (stored)" in second.stdout

    (photos / "trip" / "broken.png").unlink()
    third = client(stack, "invoke", "photos/face-1.jpg", "--id-prefix", prefix, cwd=tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 files: 1 succeeded (1 already stored), 0 failed" in third.stdout

    invocation_id = f"{prefix}photos~face-2.jpg"
    table = client(stack, "get", invocation_id, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "SUCCEEDED" in table.stdout and "score" in table.stdout
    document = json.loads(client(stack, "get", invocation_id, "--json", cwd=tmp_path).stdout)
    invocation = document["invocation"]
    assert invocation["id"] == invocation_id
    assert invocation["state"] == "STATE_SUCCEEDED"
    assert invocation["input"]["content"] == ""  # BASIC unless --full
    assert invocation["input"]["metadata"] == {"path": "photos/face-2.jpg"}
    assert len(invocation["output"]["detections"]) > 0

    picture = tmp_path / "out.png"
    rendered = client(stack, "render", invocation_id, "-o", str(picture), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    size = Image.open(io.BytesIO(picture.read_bytes())).size
    assert size == (invocation["output"]["image_width"], invocation["output"]["image_height"])

    missing = client(stack, "get", f"{prefix}nope", cwd=tmp_path)
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr


def test_same_id_with_other_content_is_reported(stack, images_dir, id_prefix, tmp_path):
    prefix = f"{id_prefix}-cli2-"
    shutil.copy(images_dir / "face-1.jpg", tmp_path / "a.jpg")
    assert client(stack, "invoke", "a.jpg", "--id-prefix", prefix, cwd=tmp_path).returncode == 0
    shutil.copy(images_dir / "face-2.jpg", tmp_path / "a.jpg")
    again = client(stack, "invoke", "a.jpg", "--id-prefix", prefix, cwd=tmp_path)
    assert again.returncode == 1
    assert "ALREADY_EXISTS" in again.stdout


def test_list_follows_every_page_and_delete_erases(stack, channel, images_dir, id_prefix, tmp_path):
    """``list`` follows the tokens (pages of 2 for 5 invocations), as JSON lines and as a table;
    ``delete`` erases (then ``get`` is NOT_FOUND and ``list`` leaves them out), a second delete
    of the same id is NOT_FOUND unless ``--allow-missing``; a bad filter is INVALID_ARGUMENT."""
    stub = pb_grpc.InferenceServiceStub(channel)
    batch = f"{id_prefix}-list"
    content = (images_dir / "face-1.jpg").read_bytes()
    ids = [f"{batch}-{n}" for n in range(5)]
    for invocation_id in ids:
        model_input = pb.ModelInput(id=invocation_id, content=content, metadata={"batch": batch})
        stub.Invoke(pb.InvokeRequest(input=model_input), timeout=60)
    only_ours = f'metadata.batch = "{batch}"'

    listed = client(
        stack, "list", "--filter", only_ours, "--page-size", "2", "--json", cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(row["id"] for row in rows) == ids  # each exactly once
    assert [row["create_time"] for row in rows] == sorted(
        (row["create_time"] for row in rows), reverse=True
    )  # newest first
    assert {row["state"] for row in rows} == {"STATE_SUCCEEDED"}
    assert {row["input"]["content"] for row in rows} == {""}  # BASIC
    assert all(row["input"]["metadata"] == {"batch": batch} for row in rows)

    table = client(stack, "list", "--filter", only_ours, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "5 invocations" in table.stdout
    assert all(invocation_id in table.stdout for invocation_id in ids)
    assert f"batch={batch}" in table.stdout

    deleted = client(stack, "delete", ids[0], ids[3], cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted {ids[0]}" in deleted.stdout and f"deleted {ids[3]}" in deleted.stdout
    assert "NOT_FOUND" in client(stack, "get", ids[0], cwd=tmp_path).stderr
    after = client(stack, "list", "--filter", only_ours, "--json", cwd=tmp_path)
    assert sorted(json.loads(line)["id"] for line in after.stdout.splitlines()) == [
        ids[1],
        ids[2],
        ids[4],
    ]

    again = client(stack, "delete", ids[0], ids[1], cwd=tmp_path)
    assert again.returncode == 1
    assert f"deleted {ids[1]}" in again.stdout
    assert ids[0] in again.stderr and "NOT_FOUND" in again.stderr
    assert client(stack, "delete", "--allow-missing", ids[0], cwd=tmp_path).returncode == 0

    bad = client(stack, "list", "--filter", 'colour = "red"', cwd=tmp_path)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr
