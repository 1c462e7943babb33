"""Drawing detections on an image (``inference_service.render``), on synthetic images."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from inference_service.domain import (
    BoundingBox,
    Detection,
    Invocation,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)
from inference_service.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from inference_service.render import BOX_COLOR, InvocationRenderer, draw_detections

GREEN = np.array(BOX_COLOR)


def grey(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 90, dtype=np.uint8)


def output(width: int, height: int, *boxes: tuple[float, float, float, float]) -> ModelOutput:
    return ModelOutput(
        detections=tuple(Detection(BoundingBox(*box), 0.9, "face") for box in boxes),
        image_width=width,
        image_height=height,
    )


def decode_png(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def is_box_color(pixel: np.ndarray) -> bool:
    return bool(np.abs(pixel.astype(int) - GREEN).max() <= 40)


def test_boxes_are_drawn_where_the_detections_say() -> None:
    png = draw_detections(grey(400, 300), output(400, 300, (100, 120, 200, 260)))
    picture = decode_png(png)
    assert picture.shape == (300, 400, 3)
    # The outline runs along the box's edges (below the label, which sits above the box).
    for x, y in ((100, 200), (200, 200), (150, 260), (150, 121)):
        assert is_box_color(picture[y, x]), (x, y, picture[y, x])
    # Inside and far outside the box, the image is untouched.
    assert tuple(picture[190, 150]) == (90, 90, 90)
    assert tuple(picture[20, 380]) == (90, 90, 90)


def test_large_images_are_scaled_down_and_boxes_with_them() -> None:
    png = draw_detections(grey(4000, 1000), output(4000, 1000, (2000, 500, 2400, 900)))
    picture = decode_png(png)
    assert picture.shape == (512, 2048, 3)
    scale = 2048 / 4000
    assert is_box_color(picture[round(700 * scale), round(2000 * scale)])
    assert is_box_color(picture[round(700 * scale), round(2400 * scale) - 1])


def test_small_images_are_not_scaled_up() -> None:
    assert decode_png(draw_detections(grey(50, 40), output(50, 40))).shape == (40, 50, 3)


def test_a_png_over_its_byte_budget_is_drawn_smaller() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    unbounded = draw_detections(noise, output(1000, 1000))
    bounded = draw_detections(noise, output(1000, 1000), max_bytes=len(unbounded) // 3)
    assert len(bounded) <= len(unbounded) // 3
    assert decode_png(bounded).shape[0] < 1000


def invocation(state: State, out: ModelOutput | None) -> Invocation:
    buffer = io.BytesIO()
    Image.fromarray(grey(64, 48)).save(buffer, format="PNG")
    return Invocation(
        input=ModelInput(id="a", content=buffer.getvalue()),
        content_sha256="0" * 64,
        state=state,
        model=ModelInfo("face-detector", "v"),
        create_time=dt.datetime.now(dt.UTC),
        output=out,
    )


def renderer(stored: Invocation | None) -> InvocationRenderer:
    async def get(invocation_id: str, *, with_content: bool = True) -> Invocation:
        assert with_content
        if stored is None:
            raise NotFoundError(f"invocation {invocation_id!r} not found")
        return stored

    def decode(content: bytes, max_pixels: int, *, min_size: int | None = None) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))

    return InvocationRenderer(
        get_invocation=get,
        decode=decode,
        executor=ThreadPoolExecutor(1),
        max_image_pixels=10_000,
    )


def test_renderer_draws_a_succeeded_invocation() -> None:
    done = invocation(State.SUCCEEDED, output(64, 48, (10, 10, 30, 30)))
    png = asyncio.run(renderer(done).render("a"))
    assert decode_png(png).shape == (48, 64, 3)


@pytest.mark.parametrize("state", [State.PENDING, State.FAILED])
def test_renderer_refuses_an_invocation_without_a_result(state: State) -> None:
    with pytest.raises(FailedPreconditionError, match="no result to draw"):
        asyncio.run(renderer(invocation(state, None)).render("a"))


def test_renderer_passes_on_the_reads_errors() -> None:
    with pytest.raises(NotFoundError):
        asyncio.run(renderer(None).render("a"))


def test_failed_precondition_maps_to_its_status() -> None:
    from inference_service.grpc.errors import status_for

    error = FailedPreconditionError("no result")
    assert status_for(error)[0].name == "FAILED_PRECONDITION"


def test_renderer_draws_at_the_requested_size_capped_by_the_servers_limit() -> None:
    done = invocation(State.SUCCEEDED, output(64, 48, (10, 10, 30, 30)))
    assert decode_png(asyncio.run(renderer(done).render("a", 32))).shape == (24, 32, 3)
    # 0 is the server's limit (2048 here: the whole 64 x 48 image, never scaled up)
    assert decode_png(asyncio.run(renderer(done).render("a", 0))).shape == (48, 64, 3)
    capped = InvocationRenderer(
        get_invocation=renderer(done)._get,
        decode=renderer(done)._decode,
        executor=ThreadPoolExecutor(1),
        max_image_pixels=10_000,
        max_dimension=40,
    )
    assert decode_png(asyncio.run(capped.render("a", 4096))).shape == (30, 40, 3)


@pytest.mark.parametrize("size", [-1, 1, 15])
def test_renderer_refuses_a_size_under_16(size: int) -> None:
    done = invocation(State.SUCCEEDED, output(64, 48, (10, 10, 30, 30)))
    with pytest.raises(InvalidArgumentError, match="max_dimension"):
        asyncio.run(renderer(done).render("a", size))


def test_a_jpeg_render_has_the_boxes_and_is_smaller_than_the_png() -> None:
    rng = np.random.default_rng(7)
    noisy = rng.integers(60, 120, size=(600, 800, 3), dtype=np.uint8)
    boxes = output(800, 600, (200, 240, 400, 520))
    png = draw_detections(noisy, boxes)
    jpeg = draw_detections(noisy, boxes, image_format="JPEG")
    assert jpeg.startswith(b"\xff\xd8\xff")
    assert len(jpeg) * 2 < len(png)
    picture = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert picture.shape == (600, 800, 3)
    # The middle of the left and right edges (2 px lines) is still the box colour, or near it.
    for x in (200, 400):
        near = picture[380, x - 1 : x + 2].astype(int)
        assert (np.abs(near - GREEN).max(axis=1) <= 80).any(), (x, near)


def test_the_renderer_draws_the_format_asked_for() -> None:
    done = invocation(State.SUCCEEDED, output(64, 48, (10, 10, 30, 30)))
    jpeg = asyncio.run(renderer(done).render("a", 0, "JPEG"))
    assert jpeg.startswith(b"\xff\xd8\xff")
    assert asyncio.run(renderer(done).render("a")).startswith(b"\x89PNG")
