"""``SavedModelFaceDetector``: an Ultra-Light face detector as a TensorFlow SavedModel, run by
TensorFlow (e.g. the RFB-320 that ``inference_service.export.keras_rfb`` exports from the
upstream checkpoint).

The SavedModel's ``serving_default`` signature (or its only one) takes one NHWC float32 input
(N, 240, 320, 3), normalized, and returns two outputs: (N, 4420, 4) boxes (regressions, or
decoded corners: ``boxes``) and (N, 4420, 2) class probabilities. TensorFlow is imported here,
on construction (seconds, about 570 MB).
"""

from __future__ import annotations

import os

import numpy as np

from inference_service.artifacts import tree_sha256
from inference_service.detection.base import BoxesKind, UltraFaceDetector, split_outputs
from inference_service.domain import ModelInfo


class SavedModelFaceDetector(UltraFaceDetector):
    """A loaded SavedModel's signature, called from any thread (TensorFlow functions are
    thread-safe)."""

    runtime = "savedmodel/tensorflow"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        version: str | None = None,
        score_threshold: float = 0.7,
        iou_threshold: float = 0.3,
        boxes: BoxesKind = "auto",
    ) -> None:
        import tensorflow as tf

        self._tf = tf
        try:
            self._loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise ValueError(f"{path} is not a usable SavedModel: {exc}") from exc
        signatures = dict(self._loaded.signatures)
        if "serving_default" in signatures:
            function = signatures["serving_default"]
        elif len(signatures) == 1:
            (function,) = signatures.values()
        else:
            raise ValueError(f"SavedModel {path}: no serving_default signature ({signatures})")
        _, inputs = function.structured_input_signature
        if len(inputs) != 1:
            raise ValueError(f"SavedModel {path}: expected one input, got {list(inputs)}")
        ((self._input_name, spec),) = inputs.items()
        if list(spec.shape)[1:] != [240, 320, 3]:
            raise ValueError(f"SavedModel {path}: input is {spec.shape}, expected [N, 240, 320, 3]")
        self._function = function
        info = ModelInfo(name=name, version=version or tree_sha256(path))
        super().__init__(info=info, score_threshold=score_threshold, iou_threshold=iou_threshold)
        self._set_boxes(boxes)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = self._function(**{self._input_name: self._tf.constant(batch)})
        return split_outputs({key: value.numpy() for key, value in outputs.items()})

    def close(self) -> None:
        super().close()
        self._function = None
        self._loaded = None
