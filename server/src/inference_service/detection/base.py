"""What every Ultra-Light face detector shares, whatever runs the network: the checks of the
input image, the preprocessing, and the decoding of the two outputs (box regressions or decoded
boxes, and class scores) into detections. A runtime implements ``_infer``."""

from __future__ import annotations

import abc
import logging
from typing import Literal

import numpy as np

from inference_service.detection.postprocessing import FaceBoxDecoder, make_priors
from inference_service.detection.preprocessing import Preprocessor
from inference_service.domain import Detection, ModelInfo, ModelOutput
from inference_service.errors import ModelError, ModelNotReadyError

logger = logging.getLogger(__name__)

BoxesKind = Literal["auto", "raw", "decoded"]
Layout = Literal["nhwc", "nchw"]


def looks_decoded(boxes: np.ndarray) -> bool:
    """Whether a model's box output (N, 4) holds corner boxes already decoded against the priors
    rather than regressions: decoded boxes have positive extents and are centred on their priors
    (regressions of any image are small numbers around 0, nowhere near the prior centres)."""
    priors = make_priors()
    if boxes.shape != priors.shape:
        return False
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    positive = bool(np.all(boxes[:, 2:] >= boxes[:, :2]))
    return positive and float(np.mean(np.abs(centres - priors[:, :2]))) < 0.05


class UltraFaceDetector(abc.ABC):
    """A ``Detector`` for the Ultra-Light face detectors (320x240 input, (x - 127) / 128,
    4420 priors); subclasses run the network in ``_infer``, which must be safe to call from
    several threads at once."""

    runtime: str = ""
    """What runs the network (``ListModels``' runtime), e.g. ``onnx/onnxruntime``."""

    def __init__(
        self,
        *,
        info: ModelInfo,
        score_threshold: float = 0.7,
        iou_threshold: float = 0.3,
        layout: Layout = "nhwc",
    ) -> None:
        self._info = info
        self._layout = layout
        self._preprocess = Preprocessor()
        self._score_threshold = score_threshold
        self._iou_threshold = iou_threshold
        self._decode = FaceBoxDecoder(score_threshold=score_threshold, iou_threshold=iou_threshold)
        self._closed = False

    def _set_boxes(self, boxes: BoxesKind) -> None:
        """Say what the box output is; ``auto`` runs a blank image to tell (``looks_decoded``)."""
        if boxes == "auto":
            raw, _ = self._infer(self._input(np.zeros((240, 320, 3), dtype=np.uint8)))
            boxes = "decoded" if looks_decoded(raw) else "raw"
            logger.info("model %s outputs %s boxes", self._info.name, boxes)
        self._decode = FaceBoxDecoder(
            score_threshold=self._score_threshold,
            iou_threshold=self._iou_threshold,
            boxes_decoded=boxes == "decoded",
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run a batch of one preprocessed image; return its boxes (N, 4) and scores (N, 2)."""

    def _run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocess ``image`` and run the network on it: its boxes (N, 4) and scores (N, 2).
        A runtime that can take the input in place (TFLite) overrides it."""
        return self._infer(self._input(image))

    def _input(self, image: np.ndarray) -> np.ndarray:
        x = self._preprocess(image)
        if self._layout == "nchw":
            x = np.ascontiguousarray(x.transpose(2, 0, 1))
        return x[None]

    def detect(self, image: np.ndarray) -> ModelOutput:
        """Faces in an RGB ``uint8`` (H, W, 3) image, in its pixels, best score first."""
        if self._closed:
            raise ModelNotReadyError("the model is closed")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        try:
            boxes, scores = self._run(image)
        except (RuntimeError, ValueError) as exc:
            raise ModelError("the model failed on the input") from exc
        detections: tuple[Detection, ...] = self._decode(boxes, scores, width, height)
        return ModelOutput(detections=detections, image_width=width, image_height=height)

    def warm_up(self) -> None:
        """Run one blank image (first runs are slower)."""
        self.detect(np.zeros((240, 320, 3), dtype=np.uint8))

    def close(self) -> None:
        self._closed = True
        logger.info("closed model %s", self._info.name)


def split_outputs(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) of one image from a model's named outputs: the one whose last axis is 4,
    and the one whose last axis is 2."""
    by_width = {int(value.shape[-1]): value for value in outputs.values()}
    if sorted(by_width) != [2, 4] or len(outputs) != 2:
        shapes = {name: value.shape for name, value in outputs.items()}
        raise ValueError(f"expected two outputs (N, 4) and (N, 2), got {shapes}")
    return by_width[4][0], by_width[2][0]
