"""Evaluation metrics: J, F, J&F (DAVIS-2017), point P/R/F1 (Molmo), counting EMA/MAE.

J and F follow davisvideochallenge/davis2017-evaluation (``davis2017/metrics.py``:
``db_eval_iou``, ``f_measure``, ``_seg2bmap``) without void pixels, re-implemented with
numpy/OpenCV so the project needs no scikit-image (the toolkit takes its dilation disk from
``skimage.morphology.disk``).
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from videomolmo_ros.core.masks import bool_mask_pair, mask_iou

DAVIS_BOUND_TH = 0.008


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of prediction and ground truth; 1.0 when both are empty (DAVIS convention)."""
    pred, gt = bool_mask_pair(pred, gt, "region_similarity", require_2d=True)
    return mask_iou(pred, gt)


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-px boundary map as in DAVIS ``_seg2bmap``.

    A pixel is boundary when it differs from its east, south or south-east neighbour; in the
    last row only east counts, in the last column only south, and the bottom-right pixel never
    is. So the image border is not a boundary (a full mask has none) and boundaries sit half a
    pixel towards the origin.
    """
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _disk(radius: float) -> np.ndarray:
    """uint8 disk kernel like ``skimage.morphology.disk``: offsets with dx^2 + dy^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    return (dx ** 2 + dy ** 2 <= radius ** 2).astype(np.uint8)


def boundary_radius(shape: tuple[int, int], bound_th: float = DAVIS_BOUND_TH) -> float:
    """Tolerance in pixels: ceil(bound_th * image diagonal) if bound_th < 1, else bound_th."""
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray,
                       bound_th: float = DAVIS_BOUND_TH) -> float:
    """F: boundary F-measure with the DAVIS-2017 protocol.

    Boundaries from ``_seg2bmap``; a predicted boundary pixel is correct when a ground-truth
    boundary pixel lies within the disk of radius ``boundary_radius`` (and vice versa for
    recall). Both boundaries empty -> 1; only the prediction's empty -> P=1, R=0 -> F=0; only
    the ground truth's empty -> P=0, R=1 -> F=0. Note a full mask has an empty boundary.
    """
    pred, gt = bool_mask_pair(pred, gt, "boundary_f_measure", require_2d=True)
    pred_boundary = _seg2bmap(pred)
    gt_boundary = _seg2bmap(gt)
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    kernel = _disk(boundary_radius(pred.shape, bound_th))
    pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pred_boundary & gt_dilated) / n_pred
    recall = np.count_nonzero(gt_boundary & pred_dilated) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def j_and_f(pred: np.ndarray, gt: np.ndarray,
            bound_th: float = DAVIS_BOUND_TH) -> tuple[float, float, float]:
    """(J, F, J&F) for one frame; J&F is the plain mean of J and F."""
    j = region_similarity(pred, gt)
    f = boundary_f_measure(pred, gt, bound_th)
    return j, f, (j + f) / 2


def point_in_mask(x: float, y: float, mask: np.ndarray) -> bool:
    """Molmo's ``is_point_in_region``: round to the nearest pixel, outside the image is a miss."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    col, row = int(round(x)), int(round(y))
    height, width = mask.shape
    if not (0 <= col < width and 0 <= row < height):
        return False
    return bool(mask[row, col])


def _max_bipartite_matching(adjacency: list[list[int]], n_right: int) -> int:
    """Size of a maximum matching, by augmenting paths (Kuhn's algorithm).

    Hand-written because the project has no scipy (Molmo uses scipy's
    ``linear_sum_assignment``); point and object counts are small, so O(V * E) is plenty.
    """
    match_of_right = [-1] * n_right

    def augment(left: int, visited: list[bool]) -> bool:
        for right in adjacency[left]:
            if visited[right]:
                continue
            visited[right] = True
            if match_of_right[right] == -1 or augment(match_of_right[right], visited):
                match_of_right[right] = left
                return True
        return False

    return sum(augment(left, [False] * n_right) for left in range(len(adjacency)))


def point_precision_recall_f1(pred_points: Sequence[tuple[float, float]],
                              gt_masks: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """Point precision, recall and F1 against one mask per ground-truth object.

    A predicted point hits an object when it lies inside the object's mask (rounded to the
    nearest pixel, as Molmo does); each point and each object is used at most once, and the
    pairing maximises the number of hits. P = hits / predictions, R = hits / objects,
    F1 = 2PR / (P + R) (0 when P + R = 0).

    Zero-count cases (Molmo's ``PointingEval``): no objects and no predictions -> (1, 1, 1);
    no objects but some predictions -> (0, 0, 0); objects but no predictions -> (0, 0, 0).

    Difference from Molmo: Molmo pairs points with ground-truth *points* by minimum total
    distance, then counts pairs whose point is inside the paired mask. With masks only, we
    take the pairing with the most hits, which is never below Molmo's count.
    """
    masks = [np.asarray(mask).astype(bool, copy=False) for mask in gt_masks]
    for mask in masks:
        if mask.ndim != 2:
            raise ValueError(f"point_precision_recall_f1: masks must be 2-D, got {mask.shape}")
    n_pred, n_gt = len(pred_points), len(masks)
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0, 0.0, 0.0
    adjacency = [[j for j, mask in enumerate(masks) if point_in_mask(float(x), float(y), mask)]
                 for x, y in pred_points]
    hits = _max_bipartite_matching(adjacency, n_gt)
    precision = hits / n_pred
    recall = hits / n_gt
    if precision + recall == 0:
        return precision, recall, 0.0
    return precision, recall, 2 * precision * recall / (precision + recall)


def counting_metrics(pred_counts: Sequence[int],
                     gt_counts: Sequence[int]) -> tuple[float, float]:
    """(EMA, MAE): fraction of exactly right counts, and mean absolute count error.

    ValueError when the sequences differ in length or are empty (nothing to average).
    """
    pred = np.asarray(pred_counts, dtype=np.float64).reshape(-1)
    gt = np.asarray(gt_counts, dtype=np.float64).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"counting_metrics: {pred.size} predictions but {gt.size} ground truths")
    if pred.size == 0:
        raise ValueError("counting_metrics: no counts to score")
    return float(np.mean(pred == gt)), float(np.mean(np.abs(pred - gt)))
