"""Compare detections with the upstream detector's output in ``images/reference.json``."""

from __future__ import annotations

from collections.abc import Sequence

Box = Sequence[float]  # x_min, y_min, x_max, y_max[, score]

MIN_IOU = 0.97
SCORE_TOLERANCE = 1e-3


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0


def mismatches(
    actual: Sequence[Box], expected: Sequence[Box], *, min_iou: float = MIN_IOU
) -> list[str]:
    """Match every expected ``[x0, y0, x1, y1(, score)]`` to a distinct actual box (best IoU
    first) and describe every count, IoU or score problem; empty when all match."""
    problems = []
    if len(actual) != len(expected):
        problems.append(f"{len(actual)} faces, expected {len(expected)}")
    free = list(actual)
    for box in expected:
        if not free:
            problems.append(f"no detection left for {box}")
            continue
        best = max(free, key=lambda row: iou(row, box))
        free.remove(best)
        if iou(best, box) < min_iou:
            problems.append(f"{box} best match {best} has IoU {iou(best, box):.4f}")
        elif len(box) > 4 and abs(best[4] - box[4]) > SCORE_TOLERANCE:
            problems.append(f"{box} matched with score {best[4]:.6f}")
    return problems


def assert_matches_reference(actual: Sequence[Box], expected: Sequence[Box], name: str) -> None:
    """Same count; each expected box matched one-to-one with IoU >= 0.97, score within 1e-3."""
    problems = mismatches(actual, expected)
    assert not problems, f"{name}: {problems}"
