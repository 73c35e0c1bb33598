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

from videomolmo_ros.core.masks import bool_mask_pair, mask_iou

DEFAULT_TAU = 0.7


def fuse_masks(forward: np.ndarray, backward: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Fused bool mask for a frame between two keyframes (rule in the module docstring).

    Always returns a new bool array; ValueError for different shapes or tau outside [0, 1].
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"fuse_masks: tau must be in [0, 1], got {tau}")
    forward, backward = bool_mask_pair(forward, backward, "fuse_masks")
    if not forward.any():
        return backward.copy()
    if not backward.any():
        return forward.copy()
    if mask_iou(forward, backward) >= tau:
        return forward & backward
    return forward | backward
