"""Annotated images: a stored input with its detections drawn on it, as a PNG or a JPEG.

``draw_detections`` is pure (bytes and an output in, encoded bytes out) and blocking;
``InvocationRenderer`` reads the invocation through the service (same id checks and errors as
GetInvocation) and draws it off the event loop. The picture is the image the model saw (decoded
and EXIF-oriented by ``decode_image``), scaled down to at most ``max_dimension`` pixels on its
longer side, and further if its encoding would be over ``max_bytes`` (so that it always fits the
gRPC message and Envoy's response limits, both derived from the content limit). PNG is lossless;
JPEG (quality 85) is about five times smaller and cheaper to encode: what thumbnails use.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inference_service.admission import UnlimitedAdmission
from inference_service.domain import Invocation, ModelOutput, State
from inference_service.errors import FailedPreconditionError, InvalidArgumentError, quote
from inference_service.metrics import Metrics
from inference_service.ports import Admission

logger = logging.getLogger(__name__)

PNG_CONTENT_TYPE = "image/png"
JPEG_CONTENT_TYPE = "image/jpeg"
CONTENT_TYPES = {"PNG": PNG_CONTENT_TYPE, "JPEG": JPEG_CONTENT_TYPE}
"""The media type of each render format."""
JPEG_QUALITY = 85
DEFAULT_MAX_DIMENSION = 2048
"""Longest side of a rendered image, in pixels; larger images are scaled down (never up)."""
MIN_DIMENSION = 16
"""Smallest ``max_dimension`` a request may ask for (0 asks for the server's limit)."""
BOX_COLOR = (0, 255, 0)
LABEL_TEXT_COLOR = (0, 0, 0)
_SHRINK = 0.75  # factor applied while a PNG is over its byte budget


def draw_detections(
    image: np.ndarray,
    output: ModelOutput,
    *,
    max_dimension: int = DEFAULT_MAX_DIMENSION,
    max_bytes: int | None = None,
    image_format: str = "PNG",
) -> bytes:
    """``image_format`` (``"PNG"`` or ``"JPEG"``) of ``image`` (RGB uint8, H x W x 3, as decoded
    for the model) with each detection's box and score drawn, scaled to fit ``max_dimension``
    and, when given, ``max_bytes``."""
    height, width = image.shape[:2]
    picture = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    limit = max(1, min(max_dimension, max(width, height)))
    while True:
        encoded = _render(picture, output, limit, image_format)
        if max_bytes is None or len(encoded) <= max_bytes or limit <= 16:
            return encoded
        logger.debug(
            "rendered %s of %d bytes over %d at %d px", image_format, len(encoded), max_bytes, limit
        )
        limit = int(limit * _SHRINK)


def _render(picture: Image.Image, output: ModelOutput, limit: int, image_format: str) -> bytes:
    scale = min(1.0, limit / max(picture.width, picture.height))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    # reducing_gap: a large reduction (a thumbnail) first shrinks by whole factors (cheap box
    # filter), then resamples: much faster than bilinear over the whole image, same look.
    canvas = (
        picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        if scale < 1.0
        else picture.copy()
    )
    # Boxes are in pixels of the oriented original image, whose size the output records.
    sx = canvas.width / (output.image_width or picture.width)
    sy = canvas.height / (output.image_height or picture.height)
    line = max(2, round(max(canvas.size) / 400))
    font = ImageFont.load_default(size=max(10, round(max(canvas.size) / 70)))
    draw = ImageDraw.Draw(canvas)
    for detection in output.detections:
        box = detection.box
        left, top = box.x_min * sx, box.y_min * sy
        right, bottom = box.x_max * sx, box.y_max * sy
        draw.rectangle((left, top, right, bottom), outline=BOX_COLOR, width=line)
        label = f"{detection.score:.2f}"
        text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = text_right - text_left, text_bottom - text_top
        y = top - text_h - 2 * line if top - text_h - 2 * line >= 0 else bottom
        draw.rectangle((left, y, left + text_w + 2 * line, y + text_h + 2 * line), fill=BOX_COLOR)
        draw.text(
            (left + line - text_left, y + line - text_top), label, fill=LABEL_TEXT_COLOR, font=font
        )
    buffer = io.BytesIO()
    if image_format == "JPEG":
        canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        canvas.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class InvocationRenderer:
    """Renders stored invocations: ``get_invocation`` reads one (with its content, raising the
    service's errors), ``decode`` turns content into the RGB array the model saw."""

    def __init__(
        self,
        *,
        get_invocation: Callable[..., Awaitable[Invocation]],
        decode: Callable[..., np.ndarray],
        executor: Executor,
        max_image_pixels: int,
        max_dimension: int = DEFAULT_MAX_DIMENSION,
        max_bytes: int | None = None,
        metrics: Metrics | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._metrics = metrics
        self._admission = admission or UnlimitedAdmission()
        self._get = get_invocation
        self._decode = decode
        self._executor = executor
        self._max_pixels = max_image_pixels
        self._max_dimension = max_dimension
        self._max_bytes = max_bytes

    def dimension(self, requested: int = 0) -> int:
        """The longest side to draw for a request's ``max_dimension``: 0 is the server's limit,
        a larger value is capped at it; 1 to 15 or negative is ``InvalidArgumentError``."""
        if requested == 0:
            return self._max_dimension
        if requested < MIN_DIMENSION:
            raise InvalidArgumentError(
                f"max_dimension must be 0 (the server's limit) or at least {MIN_DIMENSION}, "
                f"got {requested}"
            )
        return min(requested, self._max_dimension)

    async def render(
        self, invocation_id: str, max_dimension: int = 0, image_format: str = "PNG"
    ) -> bytes:
        """The picture (``image_format``: ``"PNG"`` or ``"JPEG"``) of a SUCCEEDED invocation, at
        most ``max_dimension`` pixels on its longer side (see ``dimension``);
        ``FailedPreconditionError`` for another state."""
        limit = self.dimension(max_dimension)
        invocation = await self._get(invocation_id, with_content=True)
        if invocation.state is not State.SUCCEEDED or invocation.output is None:
            raise FailedPreconditionError(
                f"invocation {quote(invocation_id)} has no result to draw "
                f"(state {invocation.state.value})"
            )
        # A render decodes the whole image, as an Invoke does: the same admission (work queue,
        # memory budget) bounds it.
        admitted = await self._admission.admit(invocation.input.content)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor,
                self._draw,
                invocation.input.content,
                invocation.output,
                limit,
                image_format,
            )
        finally:
            admitted.release()

    def _draw(self, content: bytes, output: ModelOutput, limit: int, image_format: str) -> bytes:
        timer = self._metrics.time_stage("render") if self._metrics else contextlib.nullcontext()
        with timer:
            # Decoded no larger than needed: a JPEG at a reduced scale for a small picture.
            image = self._decode(content, self._max_pixels, min_size=limit)
            return draw_detections(
                image,
                output,
                max_dimension=limit,
                max_bytes=self._max_bytes,
                image_format=image_format,
            )
