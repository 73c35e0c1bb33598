"""J, F (DAVIS-2017 protocol), point P/R/F1 (Molmo protocol), counting EMA/MAE.

Expected values are worked out by hand in the comments. Boundary facts used below (DAVIS
_seg2bmap): a full-height stripe of columns [c0, c1) has boundary columns c0 - 1 and c1 - 1,
H pixels each; the tolerance radius for a 100 x 100 image is ceil(0.008 * 141.4) = 2 px.
"""
import numpy as np
import pytest

from videomolmo_ros.core.metrics import (
    boundary_f_measure, boundary_radius, counting_metrics, j_and_f,
    point_precision_recall_f1, region_similarity)


def stripe(c0, c1, shape=(100, 100)):
    m = np.zeros(shape, dtype=bool)
    m[:, c0:c1] = True
    return m


def box(r0, r1, c0, c1, shape=(100, 100)):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


EMPTY = np.zeros((100, 100), dtype=bool)
FULL = np.ones((100, 100), dtype=bool)


# --- tolerance radius -------------------------------------------------------------------

def test_boundary_radius():
    assert boundary_radius((100, 100)) == 2.0        # ceil(1.131)
    assert boundary_radius((480, 854)) == 8.0        # ceil(0.008 * 979.6 = 7.84)
    assert boundary_radius((20, 20)) == 1.0          # ceil(0.226)
    assert boundary_radius((100, 100), bound_th=3) == 3.0   # >= 1: pixels, as given


# --- J ------------------------------------------------------------------------------------

def test_region_similarity_values():
    assert region_similarity(box(10, 50, 10, 50), box(10, 50, 10, 50)) == 1.0
    assert region_similarity(stripe(0, 50), stripe(50, 100)) == 0.0
    assert region_similarity(stripe(20, 40), stripe(22, 42)) == pytest.approx(18 / 22)
    assert region_similarity(EMPTY, EMPTY) == 1.0
    assert region_similarity(EMPTY, box(0, 5, 0, 5)) == 0.0
    assert region_similarity(FULL, stripe(0, 50)) == 0.5


def test_shape_checks():
    with pytest.raises(ValueError):
        region_similarity(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        boundary_f_measure(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)))


# --- F ------------------------------------------------------------------------------------

def test_identical_masks_f_is_one():
    m = box(10, 60, 20, 70)
    assert boundary_f_measure(m, m) == 1.0
    assert j_and_f(m, m) == (1.0, 1.0, 1.0)


def test_disjoint_masks_far_apart():
    j, f, jf = j_and_f(box(5, 20, 5, 20), box(60, 90, 60, 90))
    assert (j, f, jf) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("shift,expected_f", [(1, 1.0), (2, 1.0), (3, 0.0), (5, 0.0)])
def test_shifted_stripe_within_and_outside_tolerance(shift, expected_f):
    # boundary columns move by `shift`; they still match iff shift <= radius 2
    gt, pred = stripe(20, 40), stripe(20 + shift, 40 + shift)
    assert boundary_f_measure(pred, gt) == expected_f
    j, f, jf = j_and_f(pred, gt)
    assert j == pytest.approx((20 - shift) / (20 + shift))
    assert jf == pytest.approx((j + expected_f) / 2)


def test_bound_th_in_pixels_widens_tolerance():
    gt, pred = stripe(20, 40), stripe(25, 45)
    assert boundary_f_measure(pred, gt) == 0.0
    assert boundary_f_measure(pred, gt, bound_th=5) == 1.0
    assert boundary_f_measure(pred, gt, bound_th=4) == 0.0


def test_partial_boundary_match():
    # pred boundary cols {19, 59}, gt {19, 39}: P = R = 1/2 -> F = 1/2
    assert boundary_f_measure(stripe(20, 60), stripe(20, 40)) == pytest.approx(0.5)
    # pred has an extra stripe: boundary cols {19, 39, 69, 79} -> P = 1/2, R = 1 -> F = 2/3
    pred = stripe(20, 40) | stripe(70, 80)
    assert boundary_f_measure(pred, stripe(20, 40)) == pytest.approx(2 / 3)
    assert boundary_f_measure(stripe(20, 40), pred) == pytest.approx(2 / 3)


def test_empty_and_full_conventions():
    m = box(10, 30, 10, 30)
    assert boundary_f_measure(EMPTY, EMPTY) == 1.0       # both empty
    assert boundary_f_measure(EMPTY, m) == 0.0           # P=1, R=0
    assert boundary_f_measure(m, EMPTY) == 0.0           # P=0, R=1
    # the image border is no boundary: a full mask has none, so FULL vs FULL is perfect
    assert boundary_f_measure(FULL, FULL) == 1.0
    assert boundary_f_measure(FULL, EMPTY) == 1.0
    assert boundary_f_measure(FULL, m) == 0.0
    assert j_and_f(EMPTY, m) == (0.0, 0.0, 0.0)


def test_mask_touching_right_and_bottom_border():
    # a box reaching the bottom-right corner has only its top and left edges as boundary
    gt = box(50, 100, 50, 100)
    assert boundary_f_measure(gt, gt) == 1.0
    # gt boundary: row 49 cols 49..99 (51 px) + col 49 rows 50..99 (50 px) = 101 px.
    # Shift (2, 2): pred boundary is row 51 / col 51 (97 px), all within 2 px of gt (P = 1);
    # gt corner pixels (49,49), (49,50), (50,49) are sqrt(8) / sqrt(5) from the pred corner
    # (51,51), beyond 2 px: R = 98/101, F = 2R / (1 + R) = 196/199.
    assert boundary_f_measure(box(51, 100, 51, 100), gt) == pytest.approx(1.0)
    assert boundary_f_measure(box(52, 100, 52, 100), gt) == pytest.approx(196 / 199)
    assert boundary_f_measure(box(55, 100, 55, 100), gt) == 0.0


def test_tiny_mask():
    # 20 x 20 image, radius 1; one pixel has a 2 x 2 boundary block (rows/cols 4..5)
    gt = box(5, 6, 5, 6, shape=(20, 20))
    assert j_and_f(gt, gt) == (1.0, 1.0, 1.0)
    one_off = box(5, 6, 6, 7, shape=(20, 20))
    assert region_similarity(one_off, gt) == 0.0
    assert boundary_f_measure(one_off, gt) == 1.0      # all boundary pixels within 1 px
    far = box(5, 6, 8, 9, shape=(20, 20))
    assert boundary_f_measure(far, gt) == 0.0


def test_thin_line():
    # 50 x 50 image, radius ceil(0.566) = 1; a 1-px line has boundary rows r-1 and r
    gt = box(10, 11, 5, 45, shape=(50, 50))
    assert j_and_f(gt, gt) == (1.0, 1.0, 1.0)
    down_one = box(11, 12, 5, 45, shape=(50, 50))
    assert region_similarity(down_one, gt) == 0.0
    assert boundary_f_measure(down_one, gt) == 1.0
    down_three = box(13, 14, 5, 45, shape=(50, 50))
    assert boundary_f_measure(down_three, gt) == 0.0


def test_accepts_uint8_masks():
    m = box(10, 60, 20, 70).astype(np.uint8) * 255
    assert j_and_f(m, m > 0) == (1.0, 1.0, 1.0)


# --- points ---------------------------------------------------------------------------------

def test_point_matching_needs_one_to_one_maximum_matching():
    big = box(0, 100, 0, 100)      # object 0: the whole image
    small = box(0, 10, 0, 10)      # object 1: top-left corner
    # point A lies in both objects, point B only in object 0. Greedy (A takes the first object
    # it hits, object 0) leaves B unmatched; the maximum matching pairs A-1 and B-0.
    preds = [(5, 5), (50, 50)]
    assert point_precision_recall_f1(preds, [big, small]) == (1.0, 1.0, 1.0)


def test_two_points_on_one_object_count_once():
    p, r, f1 = point_precision_recall_f1([(5, 5), (6, 6)], [box(0, 10, 0, 10)])
    assert (p, r) == (0.5, 1.0)
    assert f1 == pytest.approx(2 / 3)


def test_point_partial_hits():
    masks = [box(0, 10, 0, 10), box(50, 60, 50, 60), box(80, 90, 80, 90)]
    preds = [(5, 5), (55, 55), (30, 30), (99, 0)]
    p, r, f1 = point_precision_recall_f1(preds, masks)
    assert (p, r) == (0.5, pytest.approx(2 / 3))
    assert f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_point_rounding_and_bounds():
    corner = box(0, 1, 0, 1, shape=(4, 4))     # only pixel (x=0, y=0)
    assert point_precision_recall_f1([(0.4, -0.4)], [corner]) == (1.0, 1.0, 1.0)
    assert point_precision_recall_f1([(-0.6, 0)], [corner]) == (0.0, 0.0, 0.0)
    assert point_precision_recall_f1([(0.6, 0)], [corner]) == (0.0, 0.0, 0.0)
    assert point_precision_recall_f1([(4.2, 0)], [np.ones((4, 4), bool)]) == (0.0, 0.0, 0.0)
    assert point_precision_recall_f1([(float("nan"), 0)], [corner]) == (0.0, 0.0, 0.0)


def test_point_zero_cases():
    m = box(0, 10, 0, 10)
    assert point_precision_recall_f1([], []) == (1.0, 1.0, 1.0)
    assert point_precision_recall_f1([(5, 5)], []) == (0.0, 0.0, 0.0)
    assert point_precision_recall_f1([], [m]) == (0.0, 0.0, 0.0)


def test_point_all_miss():
    assert point_precision_recall_f1([(50, 50)], [box(0, 10, 0, 10)]) == (0.0, 0.0, 0.0)


def test_point_matching_larger_chain():
    # a chain where each point i hits objects i and i+1, and the last point hits only object 0:
    # a perfect matching exists (point i -> object i+1, last -> 0) but greedy-by-order fails
    n = 6
    masks = [np.zeros((1, 10 * n), bool) for _ in range(n)]
    preds = []
    for i in range(n - 1):
        x = 10 * i
        masks[i][0, x] = masks[i + 1][0, x] = True
        preds.append((x, 0))
    masks[0][0, 10 * (n - 1)] = True
    preds.append((10 * (n - 1), 0))
    assert point_precision_recall_f1(preds, masks) == (1.0, 1.0, 1.0)


# --- counting -------------------------------------------------------------------------------

def test_counting_metrics():
    ema, mae = counting_metrics([1, 2, 3, 0], [1, 3, 3, 2])
    assert ema == 0.5 and mae == 0.75
    assert counting_metrics([4], [4]) == (1.0, 0.0)


def test_counting_metrics_errors():
    with pytest.raises(ValueError):
        counting_metrics([1, 2], [1])
    with pytest.raises(ValueError):
        counting_metrics([], [])
