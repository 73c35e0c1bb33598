"""Shared checks and measures on boolean masks (used by fusion and metrics)."""
from __future__ import annotations

import cv2
import numpy as np


def bool_mask_pair(a: np.ndarray, b: np.ndarray, what: str,
                   require_2d: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays (nonzero = foreground); ValueError naming ``what`` if their
    shapes differ (or, with ``require_2d``, are not H x W)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: mask shapes differ, {a.shape} vs {b.shape}")
    if require_2d and a.ndim != 2:
        raise ValueError(f"{what}: masks must be 2-D (H x W), got shape {a.shape}")
    return a.astype(bool, copy=False), b.astype(bool, copy=False)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-shape masks.

    Two empty masks count as identical (IoU 1.0), the DAVIS J convention: they agree exactly,
    and 0/0 must not become NaN.
    """
    a, b = bool_mask_pair(a, b, "mask_iou")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def deepest_point(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the mask pixel farthest from the mask boundary (the image border counts as
    boundary), or None for an empty mask; ties go to the first pixel in row-major order.

    The point an annotator would click, and the one the paper's annotation pipeline favours
    (it samples points in proportion to this distance)."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    padded = np.zeros((r1 - r0 + 2, c1 - c0 + 2), dtype=np.uint8)  # zero rim: border = boundary
    padded[1:-1, 1:-1] = mask[r0:r1, c0:c1]
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(col - 1 + c0), int(row - 1 + r0)
