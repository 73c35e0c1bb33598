"""Parity of the streaming SAM2 backend with the ``sam2`` package's own SAM2VideoPredictor.

Same random seeded weights (one model object serves both paths), same frames, same prompts,
CPU, 128 px input. Input identity: the frames are written as JPEG files for ``init_state``
(its only image input), and the tracker gets those same files decoded by PIL, so both paths
see identical pixels and the tracker's own resize/normalisation is under test as well.

The video has 20 frames: stock SAM2 scales its object-pointer encoding by
min(video length, 16), while a stream is unbounded, so parity needs a video of >= 16 frames;
forward runs over all 20 so that both memory-bank bounds (6 spatial memories, 15 object
pointers) are exercised. Masks must be identical, and the low-resolution logits too.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("sam2", reason="sam2 is not installed (pip install --no-deps sam2==1.1.0)")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.masks import mask_iou  # noqa: E402
from videomolmo_ros.segment.sam2_backend import Sam2Segmenter, Sam2Tracker  # noqa: E402

# The stock predictor warns once that sam2's optional C extension (hole filling) is not built.
pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning")

W, H, N = 96, 72, 20
SIZE = 128
# Query 0: two points on the red disk (two SAM2 objects, OR-ed); query 1: one on the blue box.
POINTS = {0: np.array([[20.0, 36.0], [24.0, 38.0]], np.float32),
          1: np.array([[72.0, 20.0]], np.float32)}
KEY, LEFT = 15, 8  # backward: from keyframe 15 over frames 8..14


def _image(t: int) -> np.ndarray:
    """Frame t: a red disk moving right by 3 px per frame and a static blue box."""
    rng = np.random.default_rng(t)
    img = np.clip(np.array([90, 120, 80]) + rng.normal(0, 8, (H, W, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    img[(xx - 20 - 3 * t) ** 2 + (yy - 36) ** 2 < 100] = (220, 40, 40)
    img[10:30, 60:85] = (40, 60, 210)
    return img


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def seg() -> Sam2Segmenter:
    return Sam2Segmenter("sam2.1_hiera_t", random_weights=True, seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def video() -> Iterator[tuple[str, list[Frame]]]:
    """A JPEG folder for init_state and the same frames decoded for the tracker."""
    with tempfile.TemporaryDirectory() as folder:
        frames = []
        for t in range(N):
            path = os.path.join(folder, f"{t:05d}.jpg")
            Image.fromarray(_image(t)).save(path, quality=95)
            decoded = np.asarray(Image.open(path).convert("RGB"))
            frames.append(Frame("cam", t, 1000 * t, decoded))
        yield folder, frames


def _stock_objects(model, state, frame_idx: int) -> dict[int, int]:
    """Add every point as its own object (VideoMolmo's way); object id -> query id."""
    owner, obj = {}, 0
    for qid, pts in POINTS.items():
        for xy in pts:
            model.add_new_points_or_box(state, frame_idx, obj, points=xy[None],
                                        labels=np.array([1], np.int32))
            owner[obj] = qid
            obj += 1
    return owner


def _stock_run(model, state, owner: dict[int, int], **kwargs) -> dict[int, dict[int, np.ndarray]]:
    """propagate_in_video -> frame index -> query id -> OR of its objects' masks."""
    out = {}
    for index, obj_ids, video_masks in model.propagate_in_video(state, **kwargs):
        masks = {q: np.zeros((H, W), bool) for q in set(owner.values())}
        for k, obj in enumerate(obj_ids):
            masks[owner[obj]] |= (video_masks[k, 0] > 0.0).cpu().numpy()
        out[index] = masks
    return out


def _record_logits(tracker: Sam2Tracker) -> list[torch.Tensor]:
    """Capture the low-res logits the tracker turns into masks (n_obj x 1 x S/4 x S/4)."""
    seen: list[torch.Tensor] = []
    inner = tracker._video_masks

    def spy(frame, objects, logits, queries):
        seen.append(torch.cat(list(logits)).clone())
        return inner(frame, objects, logits, queries)

    tracker._video_masks = spy
    return seen


def _assert_same(ours: dict[int, np.ndarray], stock: dict[int, np.ndarray], where: str) -> None:
    assert set(ours) == set(stock), where
    for qid in stock:
        assert ours[qid].shape == (H, W) and ours[qid].dtype == bool
        assert mask_iou(ours[qid], stock[qid]) == 1.0, (where, qid)
        assert np.array_equal(ours[qid], stock[qid]), (where, qid)


def test_forward_matches_stock(seg: Sam2Segmenter, video) -> None:
    folder, frames = video
    tracker = seg.new_tracker()
    logits = _record_logits(tracker)
    ours = [tracker.prompt(frames[0], POINTS)] + [tracker.forward(f) for f in frames[1:]]

    model = seg.model
    state = model.init_state(folder)
    owner = _stock_objects(model, state, 0)
    stock = _stock_run(model, state, owner, start_frame_idx=0)

    assert sorted(stock) == list(range(N))
    for t in range(N):
        _assert_same(ours[t], stock[t], f"forward frame {t}")
        kind = "cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"
        low = torch.cat([state["output_dict_per_obj"][k][kind][t]["pred_masks"]
                         for k in range(len(owner))])
        assert torch.equal(low, logits[t]), f"logits differ on frame {t}"
    # Not a vacuous comparison: masks are neither empty nor full.
    assert all(0 < ours[t][q].sum() < H * W for t in range(N) for q in POINTS)
    # Bounded memory after 20 frames: per object 6 spatial memories, 15 entries in all.
    entries = tracker.memory_entries()
    assert entries["objects"] == 3
    assert entries["spatial_memories"] == 3 * 6 and entries["bank_entries"] == 3 * 15


def test_backward_from_points_matches_stock(seg: Sam2Segmenter, video) -> None:
    folder, frames = video
    tracker = seg.new_tracker()
    key_masks = tracker.prompt(frames[KEY], POINTS)
    ours = tracker.backward(frames[KEY], key_masks, frames[LEFT:KEY])

    model = seg.model
    state = model.init_state(folder)
    owner = _stock_objects(model, state, KEY)
    stock = _stock_run(model, state, owner, start_frame_idx=KEY,
                       max_frame_num_to_track=KEY - LEFT, reverse=True)

    assert sorted(stock) == list(range(LEFT, KEY + 1))
    _assert_same(key_masks, stock[KEY], "keyframe")
    assert len(ours) == KEY - LEFT
    for t, masks in zip(range(LEFT, KEY), ours):
        _assert_same(masks, stock[t], f"backward frame {t}")


def test_backward_from_masks_matches_stock(seg: Sam2Segmenter, video) -> None:
    """Seeds that are not the tracker's own prompt masks are mask prompts (add_new_mask)."""
    folder, frames = video
    yy, xx = np.mgrid[:H, :W]
    seeds = {0: (xx - 20 - 3 * KEY) ** 2 + (yy - 36) ** 2 < 100,
             1: (yy >= 10) & (yy < 30) & (xx >= 60) & (xx < 85)}
    ours = seg.new_tracker().backward(frames[KEY], seeds, frames[LEFT:KEY])

    model = seg.model
    state = model.init_state(folder)
    for qid, mask in seeds.items():
        model.add_new_mask(state, KEY, qid, mask)
    stock = _stock_run(model, state, {0: 0, 1: 1}, start_frame_idx=KEY,
                       max_frame_num_to_track=KEY - LEFT, reverse=True)
    for t, masks in zip(range(LEFT, KEY), ours):
        _assert_same(masks, stock[t], f"backward (mask seeds) frame {t}")
