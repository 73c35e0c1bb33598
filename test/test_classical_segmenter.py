"""Tests of the classical OpenCV mask backend on synthetic video built here.

Main scene: a colourful textured background, a red disk moving right by 4 px per frame and a
static blue rectangle (wider than the disk) drawn in front of it, so the disk passes fully
behind it. Others: a checked square (texture for the flow), striped and dotted disks (prompt
on patterns), a disk leaving the image. Frames get soft edges and sensor noise.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.segment.base import MaskTracker, Segmenter
from videomolmo_ros.segment.classical import (ClassicalConfig, ClassicalSegmenter,
                                              ClassicalTracker)

W, H = 320, 240
RED, BLUE = 0, 1
DISK_R, DISK_X0, DISK_Y, DISK_V = 25, 60, 120, 4
RECT = (150, 80, 210, 170)  # x0, y0, x1, y1 (exclusive)


@lru_cache(maxsize=4)
def _background(w: int, h: int) -> np.ndarray:
    """Colourful texture: smoothed per-channel noise on a greenish-grey gradient."""
    rng = np.random.default_rng(7)
    noise = rng.normal(0.0, 1.0, (h // 4 + 1, w // 4 + 1, 3))
    noise = np.kron(noise, np.ones((4, 4, 1)))[:h, :w]  # 4x4 blocks: coarse texture
    fine = rng.normal(0.0, 6.0, (h, w, 3))
    grad = np.linspace(-20, 20, w)[None, :, None]
    base = np.array([110.0, 125.0, 100.0])
    return np.clip(base + grad + 22.0 * noise + fine, 0, 255).astype(np.uint8)


def _disk(w: int, h: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _rect(w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = RECT
    m[y0:y1, x0:x1] = True
    return m


def _scene(t: int, disk_x0: float = DISK_X0, v: float = DISK_V,
           with_rect: bool = True, w: int = W, h: int = H) -> tuple[Frame, dict[int, np.ndarray]]:
    """Frame t and the visible ground-truth mask of each shape."""
    rng = np.random.default_rng(1000 + t)
    img = _background(w, h).astype(np.int16)
    disk = _disk(w, h, disk_x0 + v * t, DISK_Y, DISK_R)
    img[disk] = np.array([205, 45, 40]) + rng.integers(-8, 9, (int(disk.sum()), 3))
    truth = {RED: disk}
    if with_rect:
        rect = _rect(w, h)
        img[rect] = np.array([40, 60, 200]) + rng.integers(-8, 9, (int(rect.sum()), 3))
        truth = {RED: disk & ~rect, BLUE: rect}
    return _camera(img, t), truth


def _camera(img: np.ndarray, t: int) -> Frame:
    """Soft edges (3x3 box blur) and sensor noise, as a camera would give."""
    rng = np.random.default_rng(2000 + t)
    img = img.astype(np.float32)
    soft = (img + np.roll(img, 1, 0) + np.roll(img, -1, 0)) / 3.0
    soft = (soft + np.roll(soft, 1, 1) + np.roll(soft, -1, 1)) / 3.0
    noisy = soft + rng.normal(0.0, 3.0, img.shape)
    return Frame(camera="cam", index=t, stamp_ns=t * 33_000_000,
                 image=np.clip(noisy, 0, 255).astype(np.uint8))


def _checker_scene(t: int) -> tuple[Frame, np.ndarray]:
    """A 48 px square of 12 px yellow/orange checks moving diagonally by (3, 2) px per frame."""
    img = _background(W, H).astype(np.int16)
    x0, y0 = 60 + 3 * t, 50 + 2 * t
    yy, xx = np.mgrid[0:48, 0:48]
    checks = ((yy // 12 + xx // 12) % 2).astype(bool)
    patch = np.where(checks[..., None], np.array([235, 215, 40]), np.array([230, 120, 20]))
    img[y0:y0 + 48, x0:x0 + 48] = patch
    truth = np.zeros((H, W), bool)
    truth[y0:y0 + 48, x0:x0 + 48] = True
    return _camera(img, t), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _centre_points(t: int) -> dict[int, np.ndarray]:
    x0, y0, x1, y1 = RECT
    return {RED: np.array([[DISK_X0 + DISK_V * t, DISK_Y]], float),
            BLUE: np.array([[(x0 + x1) / 2, (y0 + y1) / 2]], float)}


def _tracker(**overrides: object) -> ClassicalTracker:
    tracker = ClassicalSegmenter(**overrides).new_tracker()
    assert isinstance(tracker, ClassicalTracker)
    return tracker


def test_segmenter_is_a_factory_of_independent_trackers() -> None:
    seg = ClassicalSegmenter(flow_preset="medium")
    assert isinstance(seg, Segmenter) and seg.name == "classical"
    assert seg.config.flow_preset == "medium"
    a, b = seg.new_tracker(), seg.new_tracker()
    assert isinstance(a, MaskTracker) and a is not b
    a.prompt(_scene(0)[0], _centre_points(0))
    assert set(a.forward(_scene(1)[0])) == {RED, BLUE}
    assert b.forward(_scene(1)[0]) == {}  # b has no tracks of its own
    with pytest.raises(ValueError):
        ClassicalConfig(flow_preset="slow")


def test_prompt_masks_match_the_shapes() -> None:
    frame, truth = _scene(0)
    masks = _tracker().prompt(frame, _centre_points(0))
    assert set(masks) == {RED, BLUE}
    for qid in (RED, BLUE):
        assert masks[qid].shape == (H, W) and masks[qid].dtype == bool
        assert _iou(masks[qid], truth[qid]) > 0.9, qid


def test_prompt_with_grabcut_refinement() -> None:
    frame, truth = _scene(0)
    masks = _tracker(grabcut_iters=2).prompt(frame, _centre_points(0))
    for qid in (RED, BLUE):
        assert _iou(masks[qid], truth[qid]) > 0.9, qid


def test_prompt_fills_holes_such_as_highlights() -> None:
    frame, truth = _scene(0, with_rect=False)
    img = frame.image.copy()
    img[_disk(W, H, DISK_X0 + 5, DISK_Y - 5, 6)] = 255  # specular highlight inside the disk
    frame = Frame(camera="cam", index=0, stamp_ns=0, image=img)
    point = {RED: np.array([[DISK_X0 - 10.0, DISK_Y + 10.0]])}
    assert _iou(_tracker().prompt(frame, point)[RED], truth[RED]) > 0.9
    holed = _tracker(fill_holes=False).prompt(frame, point)[RED]
    assert not holed[DISK_Y - 5, DISK_X0 + 5]


def _patterned_disk(pattern: str) -> tuple[Frame, np.ndarray]:
    """A disk with dark stripes of its own hue, or a white disk with grey dots, on texture."""
    img = _background(W, H).astype(np.float64)
    disk = _disk(W, H, 160, 120, 30)
    yy, xx = np.mgrid[0:H, 0:W]
    if pattern == "striped":
        base = np.array([205.0, 45.0, 40.0])
        dark = ((xx + yy) // 5) % 2 == 1
    else:
        base = np.array([240.0, 240.0, 240.0])
        dark = ((xx - 160 + 4) % 9 - 4) ** 2 + ((yy - 120 + 4) % 9 - 4) ** 2 <= 4
    img[disk] = np.where(dark[disk][:, None], 0.35 * base, base)
    return _camera(img, 0), disk


@pytest.mark.parametrize(("pattern", "least_iou"), [("striped", 0.9), ("dotted", 0.85)])
def test_prompt_covers_patterned_objects(pattern: str, least_iou: float) -> None:
    # Striped: the shade test joins the dark stripes of the same hue. Dotted: the point
    # lands on a dot (a detail), so the surface around it is added; dots cut into the edge.
    frame, truth = _patterned_disk(pattern)
    mask = _tracker().prompt(frame, {0: np.array([[160.0, 120.0]])})[0]
    assert _iou(mask, truth) > least_iou
    plain = _tracker(shade_tolerance=0, detail_area_fraction=0).prompt(
        frame, {0: np.array([[160.0, 120.0]])})[0]
    assert _iou(plain, truth) < 0.6


def test_several_points_of_one_query_are_united() -> None:
    frame, truth = _scene(0)
    x0, y0, x1, y1 = RECT
    both = np.array([[DISK_X0, DISK_Y], [(x0 + x1) / 2, (y0 + y1) / 2]], float)
    mask = _tracker().prompt(frame, {5: both})[5]
    assert _iou(mask, truth[RED] | truth[BLUE]) > 0.9


def test_zero_points_and_points_outside_give_empty_masks() -> None:
    frame, truth = _scene(0)
    tracker = _tracker()
    outside = np.array([[-5.0, 10.0], [W + 40.0, 50.0], [30.0, H + 1.0]])
    masks = tracker.prompt(frame, {0: np.zeros((0, 2)), 1: outside,
                                   2: np.vstack([outside, [[DISK_X0, DISK_Y]]])})
    assert masks[0].shape == (H, W) and not masks[0].any()
    assert not masks[1].any()
    assert _iou(masks[2], truth[RED]) > 0.9  # the inside point still counts
    nxt = tracker.forward(_scene(1)[0])
    assert set(nxt) == {0, 1, 2} and not nxt[0].any() and not nxt[1].any()


def test_seed_on_flat_background_does_not_flood_the_image() -> None:
    img = np.full((H, W, 3), 128, np.uint8)
    frame = Frame(camera="cam", index=0, stamp_ns=0, image=img)
    tracker = _tracker(max_area_fraction=0.25)
    mask = tracker.prompt(frame, {0: np.array([[100.0, 100.0]])})[0]
    assert 0 < mask.sum() <= 0.25 * H * W
    assert mask[100, 100]


def test_prompt_restarts_tracks_and_drops_absent_queries() -> None:
    tracker = _tracker()
    tracker.prompt(_scene(0)[0], _centre_points(0))
    assert set(tracker.forward(_scene(1)[0])) == {RED, BLUE}
    tracker.prompt(_scene(2)[0], {BLUE: _centre_points(2)[BLUE]})
    assert set(tracker.forward(_scene(3)[0])) == {BLUE}


def test_forward_before_any_prompt_tracks_nothing() -> None:
    assert _tracker().forward(_scene(0)[0]) == {}


def test_forward_propagation_keeps_both_shapes() -> None:
    tracker = _tracker()
    tracker.prompt(_scene(0)[0], _centre_points(0))
    for t in range(1, 11):
        frame, truth = _scene(t)
        masks = tracker.forward(frame)
        for qid in (RED, BLUE):
            assert _iou(masks[qid], truth[qid]) > 0.8, (t, qid)


def test_forward_follows_a_fast_plain_object() -> None:
    # 10 px per frame: dense flow under-estimates the motion of a plain disk; the colour
    # mean-shift recentring keeps the mask on it.
    tracker = _tracker()
    tracker.prompt(_scene(0, v=10, with_rect=False)[0], {RED: np.array([[DISK_X0, DISK_Y]])})
    for t in range(1, 19):
        frame, truth = _scene(t, v=10, with_rect=False)
        assert _iou(tracker.forward(frame)[RED], truth[RED]) > 0.8, t


def test_forward_into_occlusion_follows_the_visible_part_then_empties() -> None:
    # The disk (50 px) goes behind the wider rectangle (60 px): partly hidden from frame 17,
    # fully hidden in frames 29-31. No re-detection: the track stays empty afterwards.
    tracker = _tracker()
    start = 12
    tracker.prompt(_scene(start)[0], _centre_points(start))
    rect = _rect(W, H)
    for t in range(start + 1, 40):
        frame, truth = _scene(t)
        masks = tracker.forward(frame)
        red = masks[RED]
        assert (red & rect).sum() < 0.02 * rect.sum(), t  # never claims the occluder
        assert _iou(masks[BLUE], truth[BLUE]) > 0.9, t
        if t < 29 and truth[RED].sum() > 400:
            assert _iou(red, truth[RED]) > 0.75, t
        if 29 <= t <= 31:
            assert not truth[RED].any()
        if t >= 29:
            assert not red.any(), t  # lost, and no false mask once it re-emerges


def test_forward_grows_with_an_emerging_object() -> None:
    # Prompted while only 710 px of the disk show right of the rectangle; whole again at 44.
    start = 36
    frame, truth = _scene(start)
    x = DISK_X0 + DISK_V * start + DISK_R - 8
    tracker = _tracker()
    first = tracker.prompt(frame, {RED: np.array([[x, DISK_Y]])})[RED]
    assert _iou(first, truth[RED]) > 0.8
    for t in range(start + 1, 46):
        frame, truth = _scene(t)
        red = tracker.forward(frame)[RED]
        assert _iou(red, truth[RED]) > 0.8, t
    assert red.sum() > 0.9 * np.pi * DISK_R ** 2


def test_textured_object_propagates_with_flow() -> None:
    # A checked square: one point seeds one check only, so start from the true mask.
    scenes = [_checker_scene(t) for t in range(21)]
    tracker = _tracker()
    out = tracker.backward(scenes[20][0], {7: scenes[20][1]}, [f for f, _ in scenes[:20]])
    for t, (masks, (_, truth)) in enumerate(zip(out, scenes)):
        assert _iou(masks[7], truth) > 0.85, t
    one = tracker.prompt(scenes[0][0], {7: np.array([[66.0, 56.0]])})[7]
    assert one.sum() < 0.2 * scenes[0][1].sum()  # documented: the check under the point


def test_object_leaving_the_frame_becomes_empty() -> None:
    tracker = _tracker()
    x0 = W - 40.0
    frame, truth = _scene(0, disk_x0=x0, v=6, with_rect=False)
    tracker.prompt(frame, {RED: np.array([[x0, DISK_Y]])})
    for t in range(1, 16):
        frame, truth = _scene(t, disk_x0=x0, v=6, with_rect=False)
        mask = tracker.forward(frame)[RED]
        if truth[RED].sum() > 400:  # still well inside: tracked
            assert _iou(mask, truth[RED]) > 0.7, t
    assert not truth[RED].any()
    assert mask.sum() < 0.01 * np.pi * DISK_R ** 2


def test_backward_propagation_matches_and_keeps_order() -> None:
    frames = [_scene(t) for t in range(11)]
    tracker = _tracker()
    key, _ = frames[10]
    key_masks = tracker.prompt(key, _centre_points(10))
    out = tracker.backward(key, key_masks, [f for f, _ in frames[:10]])
    assert len(out) == 10
    for t, (masks, (_, truth)) in enumerate(zip(out, frames[:10])):
        assert set(masks) == {RED, BLUE}
        for qid in (RED, BLUE):
            assert _iou(masks[qid], truth[qid]) > 0.8, (t, qid)


def test_backward_does_not_disturb_forward() -> None:
    frames = [_scene(t)[0] for t in range(21)]
    key_masks = _tracker().prompt(frames[20], _centre_points(20))
    plain, mixed = _tracker(), _tracker()
    for tr in (plain, mixed):
        tr.prompt(frames[0], _centre_points(0))
    for t in range(1, 11):
        a = plain.forward(frames[t])
        if t == 5:
            mixed.backward(frames[20], key_masks, frames[6:20])
        b = mixed.forward(frames[t])
        assert set(a) == set(b)
        for qid in a:
            assert np.array_equal(a[qid], b[qid]), (t, qid)


def test_resolution_change_resets_without_raising() -> None:
    tracker = _tracker()
    tracker.prompt(_scene(0)[0], _centre_points(0))
    tracker.forward(_scene(1)[0])
    small, small_truth = _scene(2, w=160, h=120, disk_x0=30, with_rect=False)
    masks = tracker.forward(small)
    assert set(masks) == {RED, BLUE}
    for m in masks.values():
        assert m.shape == (120, 160) and not m.any()
    masks = tracker.forward(_scene(3, w=160, h=120, disk_x0=30, with_rect=False)[0])
    assert all(m.shape == (120, 160) and not m.any() for m in masks.values())
    # A prompt at the new resolution tracks again.
    red = tracker.prompt(small, {RED: np.array([[30.0 + 2 * DISK_V, DISK_Y / 2]])})[RED]
    assert red.shape == (120, 160) and red.sum() > 100
    # Backward over a resolution change: empty from the first mismatching frame on.
    key, _ = _scene(6)
    key_masks = _tracker().prompt(key, _centre_points(6))
    small4 = _scene(4, w=160, h=120, disk_x0=30, with_rect=False)[0]
    out = tracker.backward(key, key_masks, [_scene(3)[0], small4, _scene(5)[0]])
    assert out[2][RED].shape == (H, W) and out[2][RED].sum() > 1000
    assert out[1][RED].shape == (120, 160) and not out[1][RED].any()
    assert out[0][RED].shape == (H, W) and not out[0][RED].any()


def test_invalid_inputs_raise_value_error() -> None:
    tracker = _tracker()
    frame, _ = _scene(0)
    grey = Frame(camera="cam", index=0, stamp_ns=0, image=np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError):
        tracker.prompt(grey, {0: np.array([[1.0, 1.0]])})
    with pytest.raises(ValueError):
        tracker.prompt(frame, {0: np.array([1.0, 2.0, 3.0])})
    key, _ = _scene(5)
    with pytest.raises(ValueError):  # frames must precede the keyframe, oldest first
        tracker.backward(key, {}, [_scene(4)[0], _scene(3)[0]])
    with pytest.raises(ValueError):
        tracker.backward(key, {0: np.zeros((10, 10), bool)}, [_scene(4)[0]])


def test_cache_is_bounded_by_forget_and_by_its_cap() -> None:
    frames = [_scene(t, with_rect=False)[0] for t in range(40)]
    tracker = _tracker(max_cache_frames=16)
    tracker.prompt(frames[0], {RED: np.array([[DISK_X0, DISK_Y]])})
    for t in range(1, 40):
        tracker.forward(frames[t])
        tracker.forget(t - 5)
        assert tracker.cached_indices == list(range(max(0, t - 5), t + 1))
    capped = _tracker(max_cache_frames=16)
    capped.prompt(frames[0], {RED: np.array([[DISK_X0, DISK_Y]])})
    for t in range(1, 40):
        capped.forward(frames[t])
    assert capped.cached_indices == list(range(24, 40))
    capped.forget(1000)
    assert capped.cached_indices == []
    # The forward state survives forget: tracking continues.
    nxt, truth = _scene(40, with_rect=False)
    assert _iou(capped.forward(nxt)[RED], truth[RED]) > 0.8
