"""A detector of our own, plugged in through the model configuration (``runtime = "python"``,
``detector = "support.custom_detector:opencv_dnn"``): the upstream RFB-320 ONNX model run by
OpenCV's DNN module, a runtime the service does not ship. docs/operations.md ("Your own
detector") shows it."""

from __future__ import annotations

import threading

import cv2
import numpy as np

from inference_service.detection.postprocessing import FaceBoxDecoder
from inference_service.detection.preprocessing import Preprocessor
from inference_service.domain import ModelOutput


class OpenCvDnnFaceDetector:
    """``detect`` from several threads at once: one ``cv2.dnn.Net`` per thread."""

    def __init__(self, path: str, *, score_threshold: float = 0.7, decoded: bool = True) -> None:
        self._path = path
        self._local = threading.local()
        self._preprocess = Preprocessor()
        self._decode = FaceBoxDecoder(score_threshold=score_threshold, boxes_decoded=decoded)
        self.closed = False
        self._net()  # fail at load time on a bad file

    def _net(self) -> cv2.dnn.Net:
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = cv2.dnn.readNetFromONNX(self._path)
        return net

    def detect(self, image: np.ndarray) -> ModelOutput:
        height, width = image.shape[:2]
        blob = np.ascontiguousarray(self._preprocess(image).transpose(2, 0, 1)[None])
        net = self._net()
        net.setInput(blob)
        scores, boxes = net.forward(["scores", "boxes"])
        detections = self._decode(boxes[0], scores[0], width, height)
        return ModelOutput(detections=detections, image_width=width, image_height=height)

    def close(self) -> None:
        self.closed = True


def opencv_dnn(path: str | None, **options: object) -> OpenCvDnnFaceDetector:
    """The factory the model configuration names."""
    if path is None:
        raise ValueError("opencv_dnn needs the model's source (an ONNX file)")
    return OpenCvDnnFaceDetector(path, **options)  # type: ignore[arg-type]


class FixedFaceDetector:
    """Finds one face in the middle of every image; remembers being closed."""

    def __init__(self, label: str = "face") -> None:
        self.label = label
        self.closed = False

    def detect(self, image: np.ndarray) -> ModelOutput:
        from inference_service.domain import BoundingBox, Detection

        height, width = image.shape[:2]
        box = BoundingBox(width / 4, height / 4, width * 3 / 4, height * 3 / 4)
        return ModelOutput((Detection(box, 0.99, self.label),), width, height)

    def close(self) -> None:
        self.closed = True


MADE: list[FixedFaceDetector] = []
"""Every ``FixedFaceDetector`` that ``fixed`` made, in order (tests check they were closed)."""


def fixed(path: str | None, **options: object) -> FixedFaceDetector:
    """A factory of ``FixedFaceDetector`` (``options``: ``label``)."""
    detector = FixedFaceDetector(**options)  # type: ignore[arg-type]
    MADE.append(detector)
    return detector
