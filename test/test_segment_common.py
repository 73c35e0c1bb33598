"""The shared pieces of the mask backends: input checks and the bounded frame cache."""
import numpy as np
import pytest

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.segment.common import FrameCache, as_points, check_image


def frame(index: int, stamp: int = 0, shape=(4, 5, 3), dtype=np.uint8) -> Frame:
    return Frame("cam", index, stamp, np.zeros(shape, dtype))


def test_cache_computes_once_per_frame_and_stays_bounded():
    calls = []
    cache = FrameCache(max_frames=3)
    for i in range(5):
        cache.get(frame(i, stamp=i), lambda f: calls.append(f.index) or f.index)
        cache.get(frame(i, stamp=i), lambda f: calls.append(f.index) or f.index)
    assert calls == [0, 1, 2, 3, 4]          # each frame computed once
    assert cache.indices == [2, 3, 4]         # the oldest went first
    cache.forget(4)
    assert cache.indices == [4] and len(cache) == 1


def test_cache_keys_on_stamp_and_recomputes_invalid_entries():
    cache = FrameCache(max_frames=4)
    assert cache.get(frame(0, stamp=1), lambda f: "first") == "first"
    assert cache.get(frame(0, stamp=2), lambda f: "restarted") == "restarted"  # same index
    assert cache.get(frame(0, stamp=2), lambda f: "again", valid=lambda e: False) == "again"
    with pytest.raises(ValueError):
        FrameCache(max_frames=0)


def test_checks():
    check_image(frame(0))
    for bad in (frame(0, shape=(4, 5)), frame(0, dtype=np.float32), frame(0, shape=(0, 5, 3))):
        with pytest.raises(ValueError, match="H x W x 3 uint8"):
            check_image(bad)
    assert as_points([]).shape == (0, 2)
    np.testing.assert_array_equal(as_points([[1, 2], [np.nan, 3]]), [[1.0, 2.0]])
    with pytest.raises(ValueError, match="N x 2"):
        as_points([1, 2, 3])


def test_backward_frames_must_precede_the_keyframe_in_order():
    from videomolmo_ros.segment.common import check_backward_frames
    check_backward_frames(frame(5), [frame(2), frame(3), frame(4)])
    for frames in ([frame(3), frame(2)], [frame(2), frame(5)], [frame(6)]):
        with pytest.raises(ValueError, match="strictly increasing"):
            check_backward_frames(frame(5), frames)
