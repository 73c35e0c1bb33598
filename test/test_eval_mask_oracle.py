"""The mask oracle pointer: deepest-point prompts from any dataset sample's ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.data.synthetic import generate_scene, write_scene
from videomolmo_ros.eval.datasets import open_dataset
from videomolmo_ros.eval.datasets.base import Expression, VideoSample
from videomolmo_ros.core.masks import deepest_point
from videomolmo_ros.pointers.mask_oracle import MaskOraclePointer
from videomolmo_ros.pointers.oracle import OraclePointer


def _frame(sample: VideoSample, t: int) -> Frame:
    return Frame(camera="c", index=t, stamp_ns=sample.stamp_ns(t),
                 image=np.zeros((4, 4, 3), dtype=np.uint8))


def _sample(masks: dict[str, np.ndarray], expressions) -> VideoSample:
    """A one-frame sample with in-memory masks."""
    return VideoSample(dataset="test", video_id="v", frame_paths=(Path("f.png"),),
                       frame_names=("f",), expressions=tuple(expressions),
                       mask_loader=lambda t, o: masks[o])


def test_deepest_point():
    mask = np.zeros((9, 12), dtype=bool)
    mask[2:7, 3:8] = True  # 5 x 5 square: its centre is deepest
    assert deepest_point(mask) == (5, 4)
    mask[2:7, 3:10] = True  # 5 x 7: a tie along the middle row goes to its first pixel
    assert deepest_point(mask) == (5, 4)
    assert deepest_point(np.zeros((3, 3), dtype=bool)) is None
    full = np.ones((5, 5), dtype=bool)  # the image border counts as boundary
    assert deepest_point(full) == (2, 2)


def test_matches_the_synthetic_oracle(tmp_path):
    scene = generate_scene(3, num_frames=4)
    write_scene(scene, tmp_path / "s")
    sample = open_dataset("synthetic", tmp_path).sample("s")
    queries = [e.text for e in scene.expressions]
    mask_oracle = MaskOraclePointer(sample)
    scene_oracle = OraclePointer(scene)
    for t in range(4):
        frame = scene.frame(t)
        assert mask_oracle.point(frame, None, [], queries) == \
            scene_oracle.point(frame, None, [], queries)


def test_small_objects_unknown_queries_and_annotated_points():
    big = np.zeros((20, 20), dtype=bool)
    big[2:10, 2:10] = True
    tiny = np.zeros((20, 20), dtype=bool)
    tiny[15:18, 15:18] = True  # 9 pixels < 20
    expressions = [Expression("0", "both things", ("big", "tiny")),
                   Expression("1", "annotated", ("big",), points={0: ((1.0, 2.0), (3.5, 4.5))})]
    sample = _sample({"big": big, "tiny": tiny}, expressions)
    oracle = MaskOraclePointer(sample)
    frame = _frame(sample, 0)
    both, annotated, unknown = oracle.point(frame, oracle.encode(frame), [],
                                            ["  both things ", "annotated", "nothing"])
    assert [(p.x, p.y) for p in both] == [(5.0, 5.0)]  # the tiny object gets no point
    assert [(p.x, p.y) for p in annotated] == [(1.0, 2.0), (3.5, 4.5)]
    assert unknown == []
    assert MaskOraclePointer(sample, min_visible_pixels=5).point(frame, None, [],
                                                                 ["both things"])[0][1].x == 16.0
    late = Frame(camera="c", index=9, stamp_ns=sample.stamp_ns(9), image=frame.image)
    assert oracle.point(late, None, [], ["both things"]) == [[]]  # stamp outside the video


def test_duplicate_texts_are_refused():
    sample = _sample({}, [Expression("0", "a dog"), Expression("1", "a dog ")])
    with pytest.raises(ValueError, match="unique"):
        MaskOraclePointer(sample)
    assert MaskOraclePointer(sample, sample.expressions[:1]).point(
        _frame(sample, 0), None, [], ["a dog"]) == [[]]
