"""Bidirectional temporal mask fusion (VideoMolmo paper, Sec. 3.3, Eq. 5).

Between two pointed keyframes i and i+k, SAM2 propagates the keyframe masks forward (from
m_i) and backward (from m_{i+k}). For each frame in between the two estimates are reconciled:

* forward empty -> backward; backward empty -> forward (the paper's fallback "where one of the
  propagated masks is missing"; both empty -> empty);
* IoU(forward, backward) >= tau -> their intersection (they agree: keep the tight mask);
* otherwise -> their union (they disagree: keep everything either direction saw).

Eq. 5 uses ">= tau" (the prose says "exceeds"); we follow the equation, so IoU exactly equal
to tau gives the intersection. Eq. 5 also literally writes IOU(.,.) in the intersection branch,
a typo for the intersection the prose describes. tau = 0.7 is the paper's best (Appendix A.1).
"""
from __future__ import annotations

import numpy as np

DEFAULT_TAU = 0.7


def _as_bool_pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays (nonzero = foreground); ValueError if shapes differ."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: mask shapes differ, {a.shape} vs {b.shape}")
    return a.astype(bool, copy=False), b.astype(bool, copy=False)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-shape masks.

    Two empty masks count as identical (IoU 1.0), the DAVIS J convention: they agree exactly,
    and 0/0 must not become NaN.
    """
    a, b = _as_bool_pair(a, b, "mask_iou")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def fuse_masks(forward: np.ndarray, backward: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Fused bool mask for a frame between two keyframes (rule in the module docstring).

    Always returns a new bool array; ValueError for different shapes or tau outside [0, 1].
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"fuse_masks: tau must be in [0, 1], got {tau}")
    forward, backward = _as_bool_pair(forward, backward, "fuse_masks")
    if not forward.any():
        return backward.copy()
    if not backward.any():
        return forward.copy()
    if mask_iou(forward, backward) >= tau:
        return forward & backward
    return forward | backward
