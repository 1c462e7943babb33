"""Postprocessing of the Ultra-Light face detector's raw outputs: priors, box decoding, hard NMS.

Follows the upstream ``vision/utils/box_utils.py`` and ``fd_config.py`` of
Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB (see ``shared/models/MANIFEST.md``).
All boxes are ``[x_min, y_min, x_max, y_max]``; "normalized" means fractions of the image size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from inference_service.domain import BoundingBox, Detection
from inference_service.limits import MAX_DETECTIONS

logger = logging.getLogger(__name__)

FACE_LABEL = "face"
"""Label of every detection of this model."""

CENTER_VARIANCE = 0.1
"""Scale of the predicted centre offsets (upstream ``center_variance``)."""
SIZE_VARIANCE = 0.2
"""Scale of the predicted log-size offsets (upstream ``size_variance``)."""

INPUT_SIZE = (320, 240)
"""Model input (width, height) in pixels that the priors are laid out for."""
FEATURE_MAPS = ((40, 30), (20, 15), (10, 8), (5, 4))
"""(width, height) in cells of each detection level's feature map."""
MIN_BOXES = ((10.0, 16.0, 24.0), (32.0, 48.0), (64.0, 96.0), (128.0, 192.0, 256.0))
"""Prior box sizes of each level, in pixels of the model input (square boxes)."""


def make_priors(
    input_size: tuple[int, int] = INPUT_SIZE,
    feature_maps: Sequence[tuple[int, int]] = FEATURE_MAPS,
    min_boxes: Sequence[Sequence[float]] = MIN_BOXES,
) -> np.ndarray:
    """The prior (anchor) boxes, float32 (N, 4) as normalized ``[cx, cy, w, h]``, clamped to [0, 1].

    Order: level, row, column, box size (4420 priors for the defaults). ``input_size`` is
    (width, height) in pixels.
    """
    width, height = input_size
    levels = []
    for (map_w, map_h), sizes in zip(feature_maps, min_boxes, strict=True):
        sizes_arr = np.asarray(sizes, dtype=np.float64)
        rows, cols, box = np.meshgrid(
            np.arange(map_h), np.arange(map_w), np.arange(len(sizes_arr)), indexing="ij"
        )
        level = np.stack(
            [
                (cols + 0.5) / map_w,
                (rows + 0.5) / map_h,
                sizes_arr[box] / width,
                sizes_arr[box] / height,
            ],
            axis=-1,
        )
        levels.append(level.reshape(-1, 4))
    return np.clip(np.concatenate(levels), 0.0, 1.0).astype(np.float32)


def decode_boxes(offsets: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Turn regressions (N, 4) against ``priors`` (N, 4) ``[cx, cy, w, h]`` into corner boxes.

    ``centre = offset * 0.1 * prior_size + prior_centre``,
    ``size = exp(offset * 0.2) * prior_size``.
    Returns float32 (N, 4) normalized ``[x_min, y_min, x_max, y_max]`` (not clipped).
    """
    offsets = np.asarray(offsets, dtype=np.float32)
    priors = np.asarray(priors, dtype=np.float32)
    centres = offsets[:, :2] * np.float32(CENTER_VARIANCE) * priors[:, 2:] + priors[:, :2]
    sizes = np.exp(offsets[:, 2:] * np.float32(SIZE_VARIANCE)) * priors[:, 2:]
    half = sizes * np.float32(0.5)
    return np.concatenate([centres - half, centres + half], axis=1)


def iou_matrix(boxes: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Pairwise IoU of corner boxes (N, 4) as (N, N), as upstream ``iou_of`` (``eps`` in the
    denominator; negative extents count as zero area)."""
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    overlap_w = np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :])
    overlap_h = np.minimum(y1[:, None], y1[None, :]) - np.maximum(y0[:, None], y0[None, :])
    overlap = np.maximum(overlap_w, 0.0) * np.maximum(overlap_h, 0.0)
    area = np.maximum(x1 - x0, 0.0) * np.maximum(y1 - y0, 0.0)
    iou: np.ndarray = overlap / (area[:, None] + area[None, :] - overlap + eps)
    return iou


def hard_nms(
    boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float, candidate_size: int = 200
) -> np.ndarray:
    """Greedy hard non-maximum suppression; returns the indices kept, best score first.

    Only the ``candidate_size`` highest-scoring boxes take part. A box is kept when its IoU with
    every already-kept box is ``<= iou_threshold``. The IoU matrix of the candidates is computed
    once; the greedy pass then only looks up rows.
    """
    if len(scores) == 0:
        return np.empty(0, dtype=np.intp)
    order = np.argsort(-scores, kind="stable")[:candidate_size]
    overlaps = iou_matrix(boxes[order]) > iou_threshold
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= overlaps[i]
    return order[kept]


class FaceBoxDecoder:
    """Turns one image's raw model outputs into face detections in pixels of the original image.

    Priors are computed once, at construction. Stateless afterwards, so one instance can be shared
    between threads.
    """

    def __init__(
        self,
        *,
        score_threshold: float = 0.7,
        iou_threshold: float = 0.3,
        candidate_size: int = MAX_DETECTIONS,
        priors: np.ndarray | None = None,
        boxes_decoded: bool = False,
    ) -> None:
        """``score_threshold``: keep faces scoring strictly above it (a probability);
        ``iou_threshold``: suppress boxes overlapping a better one by more (IoU on normalized
        coordinates); ``candidate_size``: how many top-scoring boxes enter NMS;
        ``boxes_decoded``: the model outputs normalized corner boxes (its graph decodes them
        against the priors), not regressions."""
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if candidate_size < 1:
            raise ValueError(f"candidate_size must be positive, got {candidate_size}")
        self._score_threshold = score_threshold
        self._iou_threshold = iou_threshold
        self._candidate_size = candidate_size
        self._priors = make_priors() if priors is None else np.asarray(priors, dtype=np.float32)
        self._boxes_decoded = boxes_decoded

    @property
    def num_priors(self) -> int:
        """Number of boxes the model outputs per image."""
        return len(self._priors)

    def __call__(
        self, offsets: np.ndarray, scores: np.ndarray, image_width: int, image_height: int
    ) -> tuple[Detection, ...]:
        """Decode one image's outputs: ``offsets`` (N, 4) box regressions (or corner boxes, when
        ``boxes_decoded``) and ``scores`` (N, 2)
        class probabilities (column 1 = face). Returns detections sorted by score, descending,
        with boxes in pixels of an ``image_width`` x ``image_height`` image (float, not clipped).
        """
        if offsets.shape != self._priors.shape or scores.shape != (len(self._priors), 2):
            raise ValueError(
                f"expected outputs ({len(self._priors)}, 4) and ({len(self._priors)}, 2), "
                f"got {offsets.shape} and {scores.shape}"
            )
        face = scores[:, 1]
        candidates = np.flatnonzero(face > self._score_threshold)
        if len(candidates) == 0:
            return ()
        if self._boxes_decoded:
            boxes = np.asarray(offsets[candidates], dtype=np.float32)
        else:
            boxes = decode_boxes(offsets[candidates], self._priors[candidates])
        face = face[candidates]
        kept = hard_nms(
            boxes, face, iou_threshold=self._iou_threshold, candidate_size=self._candidate_size
        )
        pixels = (
            boxes[kept]
            * np.array([image_width, image_height, image_width, image_height], dtype=np.float32)
        ).tolist()
        return tuple(
            Detection(box=BoundingBox(*box), score=score, label=FACE_LABEL)
            for box, score in zip(pixels, face[kept].tolist(), strict=True)
        )
