"""Annotation pipeline (paper Eq. 7-8): boundary-distance sampling and best-IoU selection."""
from __future__ import annotations

import json

import numpy as np
import pytest

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.data import annotate
from videomolmo_ros.data.annotate import (annotate_frame, boundary_distance, main,
                                          sample_candidates)
from videomolmo_ros.segment.base import MaskTracker, Segmenter


def square_mask(h: int = 20, w: int = 24, box: tuple[int, int, int, int] = (4, 4, 15, 17)):
    mask = np.zeros((h, w), bool)
    r0, c0, r1, c1 = box
    mask[r0:r1, c0:c1] = True
    return mask


class _FakeTracker(MaskTracker):
    """Each point becomes a disk whose radius shrinks with its distance to a 'sweet spot', so
    the IoU with the GT is a known function of the point."""

    def __init__(self, owner: "FakeSegmenter") -> None:
        self.owner = owner

    def prompt(self, frame, points):
        self.owner.calls.append(dict(points))
        h, w = frame.image.shape[:2]
        rows, cols = np.mgrid[:h, :w]
        out = {}
        for qid, pts in points.items():
            x, y = np.asarray(pts, float)[0]
            sx, sy = self.owner.sweet_spot
            radius = max(0.0, 6.0 - np.hypot(x - sx, y - sy))
            out[qid] = (cols - x) ** 2 + (rows - y) ** 2 <= radius ** 2
        return out

    def forward(self, frame):
        return {}

    def backward(self, keyframe, key_masks, frames):
        return [{} for _ in frames]


class FakeSegmenter(Segmenter):
    name = "fake"

    def __init__(self, sweet_spot: tuple[float, float]) -> None:
        self.sweet_spot = sweet_spot
        self.calls: list[dict] = []

    def new_tracker(self) -> MaskTracker:
        return _FakeTracker(self)


def frame_of(mask: np.ndarray, index: int = 0) -> Frame:
    return Frame("cam", index, index, np.zeros(mask.shape + (3,), np.uint8))


def test_boundary_distance_zero_on_boundary_and_outside():
    mask = square_mask()
    d = boundary_distance(mask)
    assert d.dtype == np.float32 and d.shape == mask.shape
    assert np.all(d[~mask] == 0)
    assert d[4, 4] == 0 and d[4, 10] == 0  # corner and edge pixels are boundary
    assert d[5, 10] == pytest.approx(1.0) and d.max() == pytest.approx(5.0)
    # the image border counts as outside: a full-frame mask has its boundary on the border
    full = boundary_distance(np.ones((7, 7), bool))
    assert full[0, 3] == 0 and full[3, 3] == pytest.approx(3.0)


def test_samples_are_distinct_inside_and_deep():
    mask = square_mask()
    rng = np.random.default_rng(0)
    pts = sample_candidates(mask, 12, rng)
    assert pts.shape == (12, 2) and pts.dtype == np.int64
    assert len({tuple(p) for p in pts}) == 12
    assert mask[pts[:, 1], pts[:, 0]].all()
    assert (boundary_distance(mask)[pts[:, 1], pts[:, 0]] > 0).all()  # never on the boundary
    # Eq. 7: deeper pixels are drawn more often
    d = boundary_distance(mask)
    draws = np.concatenate([sample_candidates(mask, 1, np.random.default_rng(s))
                            for s in range(400)])
    depth = d[draws[:, 1], draws[:, 0]]
    uniform_mean = d[d > 0].mean()
    assert depth.mean() > uniform_mean + 0.3


def test_thin_and_empty_masks():
    thin = np.zeros((10, 10), bool)
    thin[5, 2:8] = True
    pts = sample_candidates(thin, 3, np.random.default_rng(1))
    assert len(pts) == 3 and thin[pts[:, 1], pts[:, 0]].all()
    assert sample_candidates(np.zeros((5, 5), bool), 3, np.random.default_rng(1)).shape == (0, 2)
    with pytest.raises(ValueError):
        sample_candidates(thin, 0, np.random.default_rng(1))


def test_picks_the_candidate_with_the_best_iou():
    mask = square_mask()
    segmenter = FakeSegmenter(sweet_spot=(9.0, 11.0))
    labels = annotate_frame(segmenter, frame_of(mask), {3: mask}, num_candidates=15, seed=4)
    label = labels[3]
    assert label is not None
    assert len(segmenter.calls) == 1 and len(segmenter.calls[0]) == len(label.candidates)
    best = int(np.argmax(label.ious))
    assert label.iou == pytest.approx(label.ious.max())
    assert (label.x, label.y) == tuple(label.candidates[best])
    # the winner is the candidate nearest to the sweet spot (the IoU grows towards it)
    distances = np.hypot(label.candidates[:, 0] - 9.0, label.candidates[:, 1] - 11.0)
    assert distances[best] == pytest.approx(distances.min())


def test_seeded_per_object_and_frame_and_empty_mask():
    mask = square_mask()
    other = square_mask(box=(2, 2, 8, 8))
    segmenter = FakeSegmenter(sweet_spot=(9.0, 11.0))
    alone = annotate_frame(segmenter, frame_of(mask, 5), {0: mask}, 6, seed=7)
    both = annotate_frame(segmenter, frame_of(mask, 5), {1: other, 0: mask,
                                                           2: np.zeros_like(mask)}, 6, seed=7)
    np.testing.assert_array_equal(alone[0].candidates, both[0].candidates)
    assert both[2] is None
    moved = annotate_frame(segmenter, frame_of(mask, 6), {0: mask}, 6, seed=7)
    assert not np.array_equal(moved[0].candidates, alone[0].candidates)


def test_cli_on_an_exported_scene(tmp_path, monkeypatch):
    from videomolmo_ros.data.synthetic import SceneConfig, make_scene, write_scene

    scene = make_scene(SceneConfig(width=64, height=48, num_frames=3, num_objects=(2, 2), seed=5))
    write_scene(scene, tmp_path / "scene")
    fake = FakeSegmenter(sweet_spot=(30.0, 20.0))
    monkeypatch.setattr("videomolmo_ros.backends.make_segmenter", lambda name: fake)
    out = tmp_path / "labels.json"
    assert main([str(tmp_path / "scene"), "--out", str(out), "--candidates", "4",
                 "--segmenter", "classical"]) == 0
    result = json.loads(out.read_text())["scenes"][0]
    assert result["frames"] == ["0000.png", "0001.png", "0002.png"]
    assert set(result["objects"]) == {"0", "1"}
    for object_id, labels in result["objects"].items():
        assert len(labels) == 3
        for t, label in enumerate(labels):
            gt = scene.masks[t, int(object_id)]
            if not gt.any():
                assert label is None
                continue
            assert gt[label["y"], label["x"]] and 0.0 <= label["iou"] <= 1.0


def test_works_with_the_classical_backend():
    from videomolmo_ros.segment.classical import ClassicalSegmenter

    image = np.full((40, 50, 3), 90, np.uint8)
    mask = square_mask(40, 50, (10, 12, 30, 36))
    image[mask] = (220, 40, 40)
    labels = annotate_frame(ClassicalSegmenter(), Frame("c", 0, 0, image), {0: mask}, 5, seed=0)
    assert labels[0] is not None and labels[0].iou > 0.8
    assert annotate.DEFAULT_CANDIDATES >= 1
