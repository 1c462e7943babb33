"""``OnnxFaceDetector``: an Ultra-Light face detector exported to ONNX, run by ONNX Runtime.

The upstream ONNX models take NCHW float32 [1, 3, 240, 320] and output ``scores`` (1, 4420, 2)
and ``boxes`` (1, 4420, 4): regressions (``*_without_postprocessing.onnx``) or corner boxes in
[0, 1] already decoded in the graph (``version-RFB-320.onnx``); no NMS in either. ONNX Runtime
is the optional extra ``onnx`` (``pip install 'inference-service[onnx]'``), imported here, when
a model needs it.
"""

from __future__ import annotations

import os

import numpy as np

from inference_service.artifacts import file_sha256
from inference_service.detection.base import BoxesKind, UltraFaceDetector, split_outputs
from inference_service.domain import ModelInfo


class OnnxFaceDetector(UltraFaceDetector):
    """One ``onnxruntime.InferenceSession`` (whose ``run`` is thread-safe) shared by every
    thread. ``boxes``: ``raw``, ``decoded`` or ``auto`` (see ``looks_decoded``)."""

    runtime = "onnx/onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        name: str,
        version: str | None = None,
        num_threads: int = 1,
        score_threshold: float = 0.7,
        iou_threshold: float = 0.3,
        boxes: BoxesKind = "auto",
    ) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise RuntimeError(
                "the onnx runtime needs onnxruntime: pip install 'inference-service[onnx]'"
            ) from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own exception types: not a usable model
            raise ValueError(f"{model_path} is not a usable ONNX model: {exc}") from exc
        (model_input,) = self._session.get_inputs()
        self._input_name = model_input.name
        if [int(n) if isinstance(n, int) else n for n in model_input.shape[1:]] != [3, 240, 320]:
            raise ValueError(f"ONNX model input is {model_input.shape}, expected [N, 3, 240, 320]")
        self._output_names = [output.name for output in self._session.get_outputs()]
        info = ModelInfo(name=name, version=version or file_sha256(model_path))
        super().__init__(
            info=info, score_threshold=score_threshold, iou_threshold=iou_threshold, layout="nchw"
        )
        self._set_boxes(boxes)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = self._session.run(self._output_names, {self._input_name: batch})
        return split_outputs(dict(zip(self._output_names, values, strict=True)))

    def close(self) -> None:
        super().close()
        self._session = None
