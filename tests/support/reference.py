"""Compare detections with the upstream detector's output in ``images/reference.json``."""

from __future__ import annotations

from collections.abc import Sequence

Box = Sequence[float]  # x_min, y_min, x_max, y_max, score

MIN_IOU = 0.97
SCORE_TOLERANCE = 1e-3


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_matches_reference(actual: Sequence[Box], expected: Sequence[Box], name: str) -> None:
    """Same count; each expected box matched one-to-one (greedy by IoU) with IoU >= 0.97
    and a score within 1e-3."""
    assert len(actual) == len(expected), f"{name}: {len(actual)} faces, expected {len(expected)}"
    unmatched = list(range(len(actual)))
    for want in expected:
        best = max(unmatched, key=lambda i: iou(actual[i], want), default=None)
        assert best is not None, f"{name}: no box left for {want}"
        overlap = iou(actual[best], want)
        assert overlap >= MIN_IOU, f"{name}: best IoU {overlap:.4f} < {MIN_IOU} for {want}"
        assert abs(actual[best][4] - want[4]) <= SCORE_TOLERANCE, (
            f"{name}: score {actual[best][4]:.6f} vs reference {want[4]:.6f}"
        )
        unmatched.remove(best)
