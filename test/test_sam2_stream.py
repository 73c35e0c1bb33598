"""Streaming behaviour of the SAM2 tracker: bounded memory, shared features, failures.

Random seeded hiera-tiny at 64 px input on CPU (about 40 ms per frame and object here), so
long runs stay cheap; the masks' quality is not the point (see test_sam2_parity.py).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("sam2", reason="sam2 is not installed (pip install --no-deps sam2==1.1.0)")
import torch  # noqa: E402

from videomolmo_ros.core.frame import Frame  # noqa: E402
from videomolmo_ros.core.fusion import fuse_masks  # noqa: E402
from videomolmo_ros.segment.base import MaskTracker, Segmenter  # noqa: E402
from videomolmo_ros.segment.sam2_backend import Sam2Segmenter, Sam2Tracker  # noqa: E402

W, H = 80, 60
POINTS = {7: np.array([[20.0, 30.0]]), 9: np.array([[60.0, 15.0], [62.0, 18.0]])}


def _frame(t: int, camera: str = "cam") -> Frame:
    """A red disk moving right over a noisy green background."""
    rng = np.random.default_rng(t)
    img = np.clip(np.array([80, 130, 70]) + rng.normal(0, 10, (H, W, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    img[(xx - 20 - 2 * t) ** 2 + (yy - 30) ** 2 < 64] = (220, 40, 40)
    return Frame(camera, t, 10_000 + 1000 * t, img)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def seg() -> Sam2Segmenter:
    return Sam2Segmenter("sam2.1_hiera_t", random_weights=True, seed=2, image_size=64,
                         max_cached_frames=8)


def test_is_a_segmenter(seg: Sam2Segmenter) -> None:
    assert isinstance(seg, Segmenter) and seg.name == "sam2"
    tracker = seg.new_tracker()
    assert isinstance(tracker, MaskTracker) and tracker is not seg.new_tracker()
    assert seg.image_size == 64


def test_zero_points_give_empty_masks(seg: Sam2Segmenter) -> None:
    tracker = seg.new_tracker()
    assert tracker.forward(_frame(0)) == {}  # nothing prompted yet
    masks = tracker.prompt(_frame(1), {3: np.zeros((0, 2)), 7: POINTS[7]})
    assert set(masks) == {3, 7} and not masks[3].any() and masks[7].any()
    assert masks[3].shape == (H, W) and masks[3].dtype == bool
    later = tracker.forward(_frame(2))
    assert set(later) == {3, 7} and not later[3].any()
    assert tracker.memory_entries()["objects"] == 1  # one SAM2 object per point


def test_memory_stays_bounded_on_a_long_stream(seg: Sam2Segmenter) -> None:
    tracker = seg.new_tracker()
    tracker.prompt(_frame(0), POINTS)
    objects = 3
    for t in range(1, 40):
        masks = tracker.forward(_frame(t))
        assert set(masks) == set(POINTS)
        entries = tracker.memory_entries()
        # Spatial memories: the last num_maskmem - 1 = 6 frames; pointers: the last 15.
        assert entries["spatial_memories"] == objects * min(t, 6)
        assert entries["bank_entries"] == objects * min(t, 15)
        assert entries["cached_frames"] <= 8  # max_cached_frames
    for obj in tracker._objects:
        assert sorted(obj.bank) == list(range(25, 40))
        assert all(("maskmem_features" in e) == (t >= 34) for t, e in obj.bank.items())


def test_features_are_computed_once_and_forgotten(seg: Sam2Segmenter) -> None:
    """Engine order: prompt K0, forward, prompt K1, backward over the window, forget(K1)."""
    tracker = seg.new_tracker()
    frames = [_frame(t) for t in range(6)]
    tracker.prompt(frames[0], POINTS)
    for f in frames[1:5]:
        tracker.forward(f)
    key_masks = tracker.prompt(frames[5], POINTS)
    back = tracker.backward(frames[5], key_masks, frames[1:5])
    assert len(back) == 4 and all(set(b) == set(POINTS) for b in back)
    assert tracker.encoded_frames == 6  # each frame's image features computed once
    assert tracker.cached_indices == list(range(6))
    tracker.forget(5)
    assert tracker.cached_indices == [5]


def test_backward_leaves_the_forward_tracks_alone(seg: Sam2Segmenter) -> None:
    a, b = seg.new_tracker(), seg.new_tracker()
    frames = [_frame(t) for t in range(9)]
    for tracker in (a, b):
        tracker.prompt(frames[0], POINTS)
        for f in frames[1:4]:
            tracker.forward(f)
        key_masks = tracker.prompt(frames[4], POINTS)
    a.backward(frames[4], key_masks, frames[1:4])
    for f in frames[5:]:
        ma, mb = a.forward(f), b.forward(f)
        assert all(np.array_equal(ma[q], mb[q]) for q in POINTS)


def test_bad_inputs_are_rejected(seg: Sam2Segmenter) -> None:
    tracker = seg.new_tracker()
    key = _frame(5)
    masks = tracker.prompt(key, POINTS)
    with pytest.raises(ValueError, match="strictly increasing"):
        tracker.backward(key, masks, [_frame(3), _frame(2)])
    with pytest.raises(ValueError, match="shape"):
        tracker.backward(key, {7: np.zeros((3, 3), bool)}, [_frame(4)])
    with pytest.raises(ValueError, match="must follow"):
        tracker.forward(_frame(5))
    with pytest.raises(ValueError, match="uint8"):
        tracker.prompt(Frame("cam", 6, 0, np.zeros((H, W), np.uint8)), POINTS)
    with pytest.raises(ValueError, match="N x 2"):
        tracker.prompt(_frame(6), {1: np.zeros((2, 3))})


def test_empty_seed_gives_empty_backward_masks(seg: Sam2Segmenter) -> None:
    back = seg.new_tracker().backward(_frame(4), {7: np.zeros((H, W), bool)},
                                      [_frame(2), _frame(3)])
    assert [set(b) for b in back] == [{7}, {7}] and not any(b[7].any() for b in back)


def test_a_lost_object_gives_an_empty_mask_and_fusion_falls_back(seg: Sam2Segmenter) -> None:
    """SAM2 says "no object" (object score <= 0): empty mask, tracking goes on."""
    tracker = seg.new_tracker()
    assert tracker.prompt(_frame(0), {7: POINTS[7]})[7].any()
    head = seg.model.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    saved = last.bias.detach().clone()
    with torch.no_grad():
        last.bias -= 1e4
    try:
        lost = tracker.forward(_frame(1))[7]
    finally:
        with torch.no_grad():
            last.bias.copy_(saved)  # the model is shared by the module's tests
    assert lost.shape == (H, W) and not lost.any()
    assert set(tracker.forward(_frame(2))) == {7}  # the stream goes on
    backward = np.zeros((H, W), bool)
    backward[20:40, 10:30] = True
    assert np.array_equal(fuse_masks(lost, backward), backward)


def _oom_on(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """Make track_step raise CUDA out-of-memory on one frame index."""
    inner = model.track_step

    def track_step(*args, **kwargs):
        if kwargs["frame_idx"] == index:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return inner(*args, **kwargs)

    monkeypatch.setattr(model, "track_step", track_step)


def test_out_of_memory_on_a_forward_frame_skips_it(seg: Sam2Segmenter, monkeypatch,
                                                   caplog) -> None:
    frames = [_frame(t) for t in range(6)]
    reference = seg.new_tracker()  # never sees frame 3
    reference.prompt(frames[0], POINTS)
    for f in frames[1:3]:
        reference.forward(f)
    tracker = seg.new_tracker()
    tracker.prompt(frames[0], POINTS)
    for f in frames[1:3]:
        tracker.forward(f)
    _oom_on(seg.model, monkeypatch, 3)
    with caplog.at_level(logging.WARNING):
        skipped = tracker.forward(frames[3])
    assert "out of GPU memory in forward on frame 3" in caplog.text
    assert set(skipped) == set(POINTS) and not any(m.any() for m in skipped.values())
    assert all(3 not in obj.bank for obj in tracker._objects)
    # The stream goes on as if frame 3 had been dropped.
    for f in frames[4:]:
        got, want = tracker.forward(f), reference.forward(f)
        assert all(np.array_equal(got[q], want[q]) for q in POINTS)


def test_out_of_memory_in_prompt_and_backward(seg: Sam2Segmenter, monkeypatch, caplog) -> None:
    frames = [_frame(t) for t in range(8)]
    tracker = seg.new_tracker()
    with monkeypatch.context() as patch:
        _oom_on(seg.model, patch, 0)
        with caplog.at_level(logging.WARNING):
            masks = tracker.prompt(frames[0], POINTS)
    assert "in prompt on frame 0" in caplog.text
    assert not any(m.any() for m in masks.values())
    assert not any(m.any() for m in tracker.forward(frames[1]).values())  # empty till a prompt
    key_masks = tracker.prompt(frames[4], POINTS)
    assert any(m.any() for m in key_masks.values())
    _oom_on(seg.model, monkeypatch, 2)
    back = tracker.backward(frames[4], key_masks, frames[1:4])
    assert "in backward on frame 2" in caplog.text
    assert not any(m.any() for m in back[1].values())
    assert any(m.any() for m in back[0].values()) and any(m.any() for m in back[2].values())


def test_bfloat16_autocast_runs(seg: Sam2Segmenter) -> None:
    tracker = Sam2Tracker(seg.model, dtype=torch.bfloat16)
    masks = tracker.prompt(_frame(0), POINTS)
    masks = tracker.forward(_frame(1))
    assert set(masks) == set(POINTS) and all(m.shape == (H, W) for m in masks.values())
