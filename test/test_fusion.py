"""Bidirectional temporal mask fusion (paper Sec. 3.3): the full decision table."""
import numpy as np
import pytest

from videomolmo_ros.core.fusion import fuse_masks, mask_iou


def mask(shape, *boxes):
    """Bool mask with the given (row0, row1, col0, col1) boxes set."""
    out = np.zeros(shape, dtype=bool)
    for r0, r1, c0, c1 in boxes:
        out[r0:r1, c0:c1] = True
    return out


EMPTY = np.zeros((10, 10), dtype=bool)


def test_iou_values():
    a = mask((10, 10), (0, 10, 0, 5))   # 50 px
    b = mask((10, 10), (0, 10, 3, 8))   # 50 px, overlap 20, union 80
    assert mask_iou(a, b) == pytest.approx(0.25)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(a, EMPTY) == 0.0


def test_iou_both_empty_is_one():
    assert mask_iou(EMPTY, EMPTY) == 1.0


def test_iou_accepts_non_bool_masks():
    a = mask((4, 4), (0, 2, 0, 2)).astype(np.uint8) * 255
    assert mask_iou(a, a > 0) == 1.0


def test_both_empty_gives_empty():
    fused = fuse_masks(EMPTY, EMPTY)
    assert fused.dtype == bool and fused.shape == (10, 10) and not fused.any()


def test_forward_empty_takes_backward():
    backward = mask((10, 10), (2, 5, 2, 5))
    np.testing.assert_array_equal(fuse_masks(EMPTY, backward), backward)


def test_backward_empty_takes_forward():
    forward = mask((10, 10), (2, 5, 2, 5))
    np.testing.assert_array_equal(fuse_masks(forward, EMPTY), forward)


def test_agreement_above_tau_gives_intersection():
    forward = mask((10, 10), (0, 10, 0, 10))    # 100 px
    backward = mask((10, 10), (0, 10, 0, 9))    # 90 px inside it: IoU 0.9
    fused = fuse_masks(forward, backward, tau=0.7)
    np.testing.assert_array_equal(fused, forward & backward)
    assert fused.sum() == 90


def test_disagreement_below_tau_gives_union():
    forward = mask((10, 10), (0, 10, 0, 5))
    backward = mask((10, 10), (0, 10, 3, 8))   # IoU 0.25
    fused = fuse_masks(forward, backward, tau=0.7)
    np.testing.assert_array_equal(fused, forward | backward)
    assert fused.sum() == 80


def test_iou_exactly_tau_gives_intersection():
    forward = mask((10, 10), (0, 10, 0, 10))   # 100 px
    backward = mask((10, 10), (0, 7, 0, 10))   # 70 px inside: IoU exactly 0.7
    assert mask_iou(forward, backward) == 0.7
    fused = fuse_masks(forward, backward, tau=0.7)
    assert fused.sum() == 70
    # just below tau -> union
    below = mask((10, 10), (0, 7, 0, 9))        # 63 px: IoU 0.63
    assert fuse_masks(forward, below, tau=0.7).sum() == 100


def test_tau_extremes():
    a = mask((10, 10), (0, 10, 0, 5))
    b = mask((10, 10), (0, 10, 5, 10))   # disjoint, IoU 0
    assert fuse_masks(a, b, tau=0.0).sum() == 0      # always intersection
    assert fuse_masks(a, a, tau=1.0).sum() == 50     # identical masks: IoU 1 >= 1
    assert fuse_masks(a, a | b, tau=1.0).sum() == 100


def test_default_tau_is_paper_value():
    forward = mask((10, 10), (0, 10, 0, 10))
    assert fuse_masks(forward, mask((10, 10), (0, 7, 0, 10))).sum() == 70   # IoU 0.7
    assert fuse_masks(forward, mask((10, 10), (0, 6, 0, 10))).sum() == 100  # IoU 0.6


def test_result_is_a_new_array():
    forward = mask((10, 10), (2, 5, 2, 5))
    fused = fuse_masks(forward, EMPTY)
    fused[:] = False
    assert forward.sum() == 9


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_masks(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(np.zeros((4, 5), bool), np.zeros((4, 6), bool))


def test_tau_out_of_range_raises():
    with pytest.raises(ValueError):
        fuse_masks(EMPTY, EMPTY, tau=1.5)
    with pytest.raises(ValueError):
        fuse_masks(EMPTY, EMPTY, tau=-0.1)
