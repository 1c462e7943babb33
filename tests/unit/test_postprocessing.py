"""Priors, box decoding, hard NMS and the end-to-end FaceBoxDecoder on synthetic outputs."""

from __future__ import annotations

import numpy as np
import pytest

from inference_service.detection.postprocessing import (
    FaceBoxDecoder,
    decode_boxes,
    hard_nms,
    iou_matrix,
    make_priors,
)
from inference_service.domain import BoundingBox


@pytest.fixture(scope="module")
def priors() -> np.ndarray:
    return make_priors()


def test_prior_count_and_dtype(priors: np.ndarray) -> None:
    assert priors.shape == (4420, 4)
    assert priors.dtype == np.float32


def test_prior_order_is_level_row_column_size(priors: np.ndarray) -> None:
    expected = {
        0: [0.5 / 40, 0.5 / 30, 10 / 320, 10 / 240],
        1: [0.5 / 40, 0.5 / 30, 16 / 320, 16 / 240],
        2: [0.5 / 40, 0.5 / 30, 24 / 320, 24 / 240],
        3: [1.5 / 40, 0.5 / 30, 10 / 320, 10 / 240],  # next column
        3 * 40: [0.5 / 40, 1.5 / 30, 10 / 320, 10 / 240],  # next row
        3600: [0.5 / 20, 0.5 / 15, 32 / 320, 32 / 240],  # level 2 starts after 40 * 30 * 3
        4200: [0.5 / 10, 0.5 / 8, 64 / 320, 64 / 240],  # level 3 after 20 * 15 * 2 more
        4360: [0.5 / 5, 0.5 / 4, 128 / 320, 128 / 240],  # level 4 after 10 * 8 * 2 more
        4419: [4.5 / 5, 3.5 / 4, 256 / 320, 1.0],  # 256 / 240 clamped to 1
    }
    for index, values in expected.items():
        np.testing.assert_allclose(priors[index], values, rtol=1e-6, err_msg=str(index))
    assert priors.min() >= 0.0
    assert priors.max() <= 1.0


def test_decode_zero_offsets_gives_the_prior_corners(priors: np.ndarray) -> None:
    boxes = decode_boxes(np.zeros((3, 4), np.float32), priors[3597:3600])
    cx, cy, w, h = priors[3599]
    np.testing.assert_allclose(
        boxes[2], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6
    )


def test_decode_hand_computed() -> None:
    prior = np.array([[0.5, 0.5, 0.2, 0.1]], np.float32)
    offsets = np.array([[1.0, -2.0, np.log(2) / 0.2, 0.0]], np.float32)
    # centre = (0.5 + 1 * 0.1 * 0.2, 0.5 - 2 * 0.1 * 0.1) = (0.52, 0.48); size = (0.4, 0.1)
    np.testing.assert_allclose(
        decode_boxes(offsets, prior), [[0.32, 0.43, 0.72, 0.53]], rtol=1e-5, atol=1e-6
    )


def test_iou_matrix() -> None:
    boxes = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [1, 1, 0, 0]], np.float32)
    iou = iou_matrix(boxes)
    assert iou.shape == (4, 4)
    assert iou[0, 1] == pytest.approx(2 / 6, rel=1e-4)
    assert iou[0, 2] == 0.0
    assert iou[3, 0] == 0.0  # an inverted box has no area
    assert iou[0, 0] == pytest.approx(1.0, rel=1e-4)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = (
        np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
        / 100
    )
    scores = np.array([0.8, 0.9, 0.85, 0.75], np.float32)
    # 1 beats 0 and 3 (IoU 0.82); 2 overlaps nothing.
    assert hard_nms(boxes, scores, iou_threshold=0.3).tolist() == [1, 2]


def test_nms_threshold_is_inclusive_for_keeping() -> None:
    boxes = np.array([[0, 0, 2, 2], [1, 0, 3, 2]], np.float32)  # IoU = 1/3 (minus eps)
    scores = np.array([0.9, 0.8], np.float32)
    assert hard_nms(boxes, scores, iou_threshold=0.34).tolist() == [0, 1]
    assert hard_nms(boxes, scores, iou_threshold=0.33).tolist() == [0]


def test_nms_considers_only_the_top_candidates() -> None:
    boxes = np.array([[i, 0, i + 0.5, 1] for i in range(300)], np.float32)  # disjoint
    scores = np.linspace(0.71, 0.99, 300).astype(np.float32)
    kept = hard_nms(boxes, scores, iou_threshold=0.3, candidate_size=200)
    assert len(kept) == 200
    assert kept.tolist() == list(range(299, 99, -1))


def test_nms_of_nothing() -> None:
    assert (
        hard_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), iou_threshold=0.3).size == 0
    )


def synthetic_outputs(faces: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Zero offsets and background scores, except face probabilities at the given priors."""
    offsets = np.zeros((4420, 4), np.float32)
    scores = np.zeros((4420, 2), np.float32)
    scores[:, 0] = 1.0
    for index, score in faces.items():
        scores[index] = (1 - score, score)
    return offsets, scores


def test_decoder_end_to_end(priors: np.ndarray) -> None:
    decoder = FaceBoxDecoder()
    # 4360 and 4361 are two sizes of one cell (IoU 0.44): the smaller, better one wins.
    offsets, scores = synthetic_outputs({0: 0.75, 4360: 0.95, 4361: 0.9, 2000: 0.7})
    detections = decoder(offsets, scores, 640, 480)
    assert [d.score for d in detections] == pytest.approx([0.95, 0.75])
    assert {d.label for d in detections} == {"face"}
    cx, cy, w, h = priors[4360]
    assert detections[0].box == pytest.approx(
        BoundingBox((cx - w / 2) * 640, (cy - h / 2) * 480, (cx + w / 2) * 640, (cy + h / 2) * 480)
    )
    # The corner prior sticks out of the image: not clipped.
    first = detections[1].box
    assert first.x_min < 0 < first.x_max
    assert first.x_min == pytest.approx((0.5 / 40 - 5 / 320) * 640, rel=1e-5)
    assert isinstance(first.x_min, float)


def test_decoder_score_threshold_is_strict() -> None:
    offsets, scores = synthetic_outputs({10: 0.5, 20: np.nextafter(np.float32(0.5), 1)})
    detections = FaceBoxDecoder(score_threshold=0.5)(offsets, scores, 320, 240)
    assert len(detections) == 1
    assert detections[0].score > 0.5


def test_decoder_finds_nothing() -> None:
    offsets, scores = synthetic_outputs({})
    assert FaceBoxDecoder()(offsets, scores, 320, 240) == ()


def test_decoder_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected outputs"):
        FaceBoxDecoder()(np.zeros((10, 4), np.float32), np.zeros((10, 2), np.float32), 1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"score_threshold": 1.0}, {"iou_threshold": 0.0}, {"candidate_size": 0}],
)
def test_decoder_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaceBoxDecoder(**kwargs)
