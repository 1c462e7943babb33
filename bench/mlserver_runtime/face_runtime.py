"""An MLServer custom runtime that serves our face detector: the benchmark's peer.

It runs in its own virtualenv (``build/bench/mlserver-venv``, see
``bench/requirements-mlserver.txt``) with ``server/src`` on ``PYTHONPATH``, so the image
decoding, the OpenCV-exact resize, the TFLite model and the box decoding/NMS are our own
``inference_service.detection`` code: the comparison is about serving, not about the model.

That venv has the detection code's runtime dependencies (LiteRT ``ai-edge-litert``, OpenCV,
Pillow, numpy) but not TensorFlow: ``TFLiteFaceDetector`` picks LiteRT, as the server does.

V2 inference protocol: one ``BYTES`` input (shape ``[1]``): the encoded image. Two outputs:
``boxes`` (``FP32 [N, 4]``: x_min, y_min, x_max, y_max in pixels) and ``scores`` (``FP32 [N]``).
Work is done synchronously in ``predict``, as MLServer's own runtimes do; MLServer's
``parallel_workers`` decides how many processes run it at once.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from inference_service.detection.tflite import TFLiteFaceDetector
from inference_service.images.decoder import decode_image

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000


def _content_of(payload: InferenceRequest) -> bytes:
    """The encoded image: the one element of the one ``BYTES`` input."""
    if len(payload.inputs) != 1 or payload.inputs[0].datatype != "BYTES":
        raise InferenceError("expected one BYTES input: the encoded image")
    data: Any = payload.inputs[0].data
    values = getattr(data, "root", data)
    if len(values) != 1:
        raise InferenceError("expected exactly one encoded image")
    value = values[0]
    return value.encode() if isinstance(value, str) else bytes(value)


class FaceDetectorRuntime(MLModel):
    """Decode + detect one image per request with ``inference_service.detection``."""

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        model_path = await get_model_uri(self.settings)
        self._detector = TFLiteFaceDetector(
            model_path,
            name=self.settings.name,
            num_threads=int(extra.get("num_threads", 1)),
            score_threshold=float(extra.get("score_threshold", 0.7)),
            iou_threshold=float(extra.get("iou_threshold", 0.3)),
        )
        self._detector.warm_up()
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        image = decode_image(_content_of(payload), max_pixels=MAX_IMAGE_PIXELS)
        output = self._detector.detect(image)
        boxes = np.array(
            [[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in output.detections],
            dtype=np.float32,
        ).reshape(-1, 4)
        scores = np.array([d.score for d in output.detections], dtype=np.float32)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("boxes", boxes),
                NumpyCodec.encode_output("scores", scores),
            ],
        )
