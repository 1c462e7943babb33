"""GET /v1/invocations/{id}:render through Envoy: the stored image with its boxes, as PNG bytes
(google.api.HttpBody through the transcoder); errors stay JSON. And the same URL opened in a real
headless Chromium, whose screenshot must show the picture with the boxes where the detections
say."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from support.http import RestClient, assert_status_json

CHROMIUM_TIMEOUT_S = 60
MARGIN = 100  # window pixels around the image in the screenshot


def invoke(api: RestClient, invocation_id: str, content: bytes) -> dict:
    reply = api.post_json(
        "/v1/invocations",
        {"input": {"id": invocation_id, "content": base64.b64encode(content).decode()}},
    )
    assert reply.status == 200, reply.body[:300]
    return reply.json()["invocation"]


def is_green(pixel: np.ndarray) -> bool:
    r, g, b = (int(v) for v in pixel[:3])
    return g > 180 and r < 90 and b < 90


def assert_boxes_drawn(picture: np.ndarray, output: dict, offset: tuple[int, int] = (0, 0)):
    """The left and right edges of every box, half-way down, are the box colour."""
    dx, dy = offset
    assert output["detections"]
    for detection in output["detections"]:
        box = detection["box"]
        y = round((box["y_min"] + box["y_max"]) / 2) + dy
        for x in (box["x_min"], box["x_max"]):
            near = picture[y, max(0, round(x) + dx - 1) : round(x) + dx + 2]
            assert any(is_green(p) for p in near), (detection, near)


def test_render_is_a_png_of_the_image_with_its_boxes(api: RestClient, images_dir, id_prefix):
    invocation_id = f"{id_prefix}-render-1"
    invocation = invoke(api, invocation_id, (images_dir / "face-2.jpg").read_bytes())

    reply = api.get(f"/v1/invocations/{invocation_id}:render")
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["content-type"] == "image/png"
    assert reply.body.startswith(b"\x89PNG\r\n\x1a\n")
    picture = np.asarray(Image.open(io.BytesIO(reply.body)).convert("RGB"))
    output = invocation["output"]
    assert picture.shape == (output["image_height"], output["image_width"], 3)
    assert_boxes_drawn(picture, output)


def test_a_jpeg_thumbnail_is_small_and_has_its_boxes(api: RestClient, images_dir, id_prefix):
    invocation_id = f"{id_prefix}-render-jpeg"
    invocation = invoke(api, invocation_id, (images_dir / "face-2.jpg").read_bytes())
    png = api.get(f"/v1/invocations/{invocation_id}:render?max_dimension=256")
    assert png.status == 200 and png.headers["content-type"] == "image/png"

    reply = api.get(
        f"/v1/invocations/{invocation_id}:render?max_dimension=256&format=RENDER_FORMAT_JPEG"
    )
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["content-type"] == "image/jpeg"
    assert reply.body.startswith(b"\xff\xd8\xff")
    assert len(reply.body) * 2 < len(png.body)
    picture = np.asarray(Image.open(io.BytesIO(reply.body)).convert("RGB"))
    assert max(picture.shape[:2]) == 256
    # The same picture as the PNG's, but for the JPEG's loss.
    lossless = np.asarray(Image.open(io.BytesIO(png.body)).convert("RGB"))
    assert picture.shape == lossless.shape
    assert np.abs(picture.astype(int) - lossless.astype(int)).mean() < 8
    # An explicit PNG is the default's picture.
    explicit = api.get(
        f"/v1/invocations/{invocation_id}:render?max_dimension=256&format=RENDER_FORMAT_PNG"
    )
    assert explicit.status == 200 and explicit.body == png.body
    assert invocation["output"]["detections"]


@pytest.mark.parametrize("value", ["7", "-1", "RENDER_FORMAT_GIF", "jpeg"])
def test_an_unknown_render_format_is_a_400(api: RestClient, id_prefix, value: str):
    reply = api.get(f"/v1/invocations/{id_prefix}-any:render?format={value}")
    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)


def test_render_errors_are_json(api: RestClient, id_prefix):
    missing = api.get(f"/v1/invocations/{id_prefix}-no-such:render")
    assert_status_json(missing, 404, grpc.StatusCode.NOT_FOUND)
    bad = api.get("/v1/invocations/bad%20id:render")
    assert_status_json(bad, 400, grpc.StatusCode.INVALID_ARGUMENT)
    # Another verb is no route of its own: it reads as part of an id, which ':' never is.
    unknown = api.get(f"/v1/invocations/{id_prefix}-x:paint")
    assert_status_json(unknown, 400, grpc.StatusCode.INVALID_ARGUMENT)


def test_render_of_a_large_image_is_scaled_to_2048_px(api: RestClient, id_prefix):
    # 6000 x 3000 of smooth gradients (a large, quick-to-encode JPEG).
    x = np.linspace(0, 255, 6000, dtype=np.float32)
    y = np.linspace(0, 255, 3000, dtype=np.float32)[:, None]
    rgb = np.stack(
        [
            np.broadcast_to(x, (3000, 6000)),
            np.broadcast_to(y, (3000, 6000)),
            np.full((3000, 6000), 128, np.float32),
        ],
        axis=2,
    ).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=80)
    invocation_id = f"{id_prefix}-render-large"
    invoke(api, invocation_id, buffer.getvalue())
    reply = api.get(f"/v1/invocations/{invocation_id}:render")
    assert reply.status == 200, reply.body[:300]
    assert Image.open(io.BytesIO(reply.body)).size == (2048, 1024)


def test_render_of_a_worst_case_8_mib_image_fits_every_limit(api: RestClient, id_prefix):
    """Noise compresses worst: its PNG at 2048 px would be about 12 MiB, over the gRPC message
    and Envoy's response limits; it is drawn smaller until it is under the content limit."""
    noise = np.random.default_rng(8).integers(0, 256, (1850, 2250, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=100)
    content = buffer.getvalue()
    assert 7 * 2**20 < len(content) <= 8 * 2**20, len(content)
    invocation_id = f"{id_prefix}-render-noise"
    invoke(api, invocation_id, content)
    reply = api.get(f"/v1/invocations/{invocation_id}:render")
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["content-type"] == "image/png"
    assert len(reply.body) <= 8 * 2**20
    width, height = Image.open(io.BytesIO(reply.body)).size
    assert width / height == pytest.approx(2250 / 1850, rel=0.01)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    return path


def test_chromium_shows_the_rendered_image(
    api: RestClient, images_dir, id_prefix, chromium, tmp_path: Path
):
    invocation_id = f"{id_prefix}-render-browser"
    invocation = invoke(api, invocation_id, (images_dir / "face-2.jpg").read_bytes())
    output = invocation["output"]
    width, height = output["image_width"], output["image_height"]
    shot = tmp_path / "shot.png"
    url = f"http://{api.host}:{api.port}/v1/invocations/{invocation_id}:render"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width + 2 * MARGIN},{height + 2 * MARGIN}",
            f"--screenshot={shot}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=CHROMIUM_TIMEOUT_S,
    )
    screen = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert screen.shape[:2] == (height + 2 * MARGIN, width + 2 * MARGIN)
    # Chromium shows an image alone centred on a plain background: find it by its difference
    # from the corner's colour.
    background = screen[0, 0]
    differs = np.abs(screen - background).max(axis=2) > 40
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    top, left = rows[0], cols[0]
    shown = (rows[-1] - top + 1, cols[-1] - left + 1)
    assert abs(shown[0] - height) <= 2 and abs(shown[1] - width) <= 2, (shown, (height, width))
    assert_boxes_drawn(screen, output, offset=(left, top))
