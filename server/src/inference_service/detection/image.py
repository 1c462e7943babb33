"""Image decoding: encoded bytes (JPEG, PNG, ...) to an EXIF-oriented RGB ``uint8`` array."""

from __future__ import annotations

import io
import logging
import re

import numpy as np
from PIL import Image, ImageOps

from inference_service.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

_UNDECODABLE = "input.content is not a decodable image"
_PILLOW_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def decode_image(content: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an encoded image into an RGB ``uint8`` array of shape (height, width, 3).

    The EXIF orientation is applied, so (height, width) are those of the image as displayed.
    Every mode Pillow reads is turned into 8-bit RGB: alpha is dropped (as ``cv2.imread`` does),
    grey levels are replicated, 16-bit samples keep their high byte (``v >> 8``, as libpng's
    strip-16 does), 32-bit integer and float samples are rescaled (see ``_to_rgb``). Only the
    first frame of multi-frame images is used. The array may be read-only.

    ``max_pixels`` bounds width * height; it is checked from the header, before any pixel is
    decoded. Raises ``InvalidArgumentError`` (client-safe message) when the content is empty,
    not an image, truncated or corrupt, or over ``max_pixels``.
    """
    if not content:
        raise InvalidArgumentError("input.content is empty")
    try:
        image = Image.open(io.BytesIO(content))
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (over twice Image.MAX_IMAGE_PIXELS) fires inside open(), before
        # the size can be read; its message holds the pixel count.
        raise InvalidArgumentError(_too_large(str(exc), max_pixels)) from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        if isinstance(exc, MemoryError):
            raise
        logger.debug("cannot identify image: %r", exc)
        raise InvalidArgumentError(_UNDECODABLE) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidArgumentError(_UNDECODABLE)
        if width * height > max_pixels:
            raise InvalidArgumentError(
                f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            )
        try:
            ImageOps.exif_transpose(image, in_place=True)  # decodes the pixels
            rgb = _to_rgb(image)
        except Image.DecompressionBombError as exc:
            raise InvalidArgumentError(_too_large(str(exc), max_pixels)) from None
        except Exception as exc:  # truncated data, corrupt streams, bad EXIF, ...
            if isinstance(exc, MemoryError):
                raise
            logger.debug("cannot decode %s image: %r", image.format, exc)
            raise InvalidArgumentError(
                f"{_UNDECODABLE} (truncated or corrupt {image.format or 'image'} data)"
            ) from None
    return rgb


def _too_large(pillow_message: str, max_pixels: int) -> str:
    match = _PILLOW_BOMB_PIXELS.search(pillow_message)
    size = f"{match.group(1)} pixels" if match else "too large"
    return f"image is {size}; the limit is {max_pixels}"


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a loaded image of any mode to an (H, W, 3) ``uint8`` RGB array."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        return _grey_to_rgb(_int32_to_uint8(np.asarray(image)))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image)))
    if mode == "P" and "transparency" in image.info:
        # Pillow wants palette transparency resolved through RGBA; the colours are the same.
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _int32_to_uint8(values: np.ndarray) -> np.ndarray:
    """32-bit integer samples: 16-bit data (Pillow's older mode for 16-bit files) keeps its high
    byte; any other range is mapped linearly from [min, max] to [0, 255]."""
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 0xFFFF:
        return (values >> 8).astype(np.uint8)
    return _stretch(values.astype(np.float64), low, high)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float samples: [0, 1] is scaled by 255, [0, 255] is kept, any other range is mapped
    linearly from [min, max]; NaN becomes 0."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.rint(values).astype(np.uint8)
    return _stretch(values, low, high)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
