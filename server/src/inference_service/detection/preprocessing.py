"""Preprocessing: resize an RGB image to the model's input size and normalise it.

The resize is OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` on ``uint8``
images, the resize the upstream detector was tuned with (a PIL bilinear resize, which
antialiases, changes the detections noticeably). Its semantics, checked by
``tests/unit/test_preprocessing.py`` against a scalar model of OpenCV's kernel and against
recorded outputs:

* source coordinate of a destination pixel: ``src = (dst + 0.5) * (src_size / dst_size) - 0.5``
  (half-pixel centres), clamped at the borders;
* weights rounded to 11 bits, fixed-point arithmetic, ``uint8`` saturation;
* no antialiasing (downscales sample two neighbours only).

A vectorised numpy copy of that kernel (bit-identical) ran at 1.7-5 ms per image here;
OpenCV's SIMD code takes about 0.3 ms, so OpenCV itself is used.
"""

from __future__ import annotations

import cv2
import numpy as np

MODEL_INPUT_WIDTH = 320
"""Width of the model input, in pixels."""
MODEL_INPUT_HEIGHT = 240
"""Height of the model input, in pixels."""


class Preprocessor:
    """Turns an RGB ``uint8`` image of any size into one (H, W, C) slot of the model's NHWC
    input. Stateless: safe to share between threads."""

    def __init__(self, *, width: int = MODEL_INPUT_WIDTH, height: int = MODEL_INPUT_HEIGHT) -> None:
        """``width`` and ``height`` are the model input size in pixels."""
        if width < 1 or height < 1:
            raise ValueError(f"model input size must be positive, got {width}x{height}")
        self._width = width
        self._height = height

    @property
    def size(self) -> tuple[int, int]:
        """Model input size as (width, height) in pixels."""
        return self._width, self._height

    @staticmethod
    def _check(image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"expected an (H, W, C) uint8 image, got {image.dtype} {image.shape}")
        if min(image.shape) < 1:
            raise ValueError(f"image has no pixels: {image.shape}")

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize an (H, W, C) ``uint8`` image to (height, width, C), as cv2 INTER_LINEAR."""
        self._check(image)
        resized = cv2.resize(image, (self._width, self._height), interpolation=cv2.INTER_LINEAR)
        # cv2 drops a channel axis of length 1; keep (H, W, C) for every C.
        return resized.reshape(self._height, self._width, image.shape[2])

    def __call__(self, image: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Return the model input for one image: float32 (height, width, C), ``(x - 127) / 128``.

        ``out``, when given, is a C-contiguous float32 array of that shape (e.g. one slot of an
        NHWC batch) that receives the result and is returned; else a new array is returned.
        Add the batch axis with ``[None]`` to get NHWC.
        """
        resized = self.resize(image)
        if out is None:
            out = np.empty(resized.shape, dtype=np.float32)
        elif out.shape != resized.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be C-contiguous float32 {resized.shape}, got {out.dtype} {out.shape}"
            )
        np.subtract(resized, np.float32(127), out=out, dtype=np.float32)
        out *= 1.0 / 128.0  # a power of two: exact, same as dividing by 128
        return out
