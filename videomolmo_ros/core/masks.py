"""Shared checks and measures on boolean masks (used by fusion and metrics)."""
from __future__ import annotations

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
