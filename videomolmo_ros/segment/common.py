"""What every mask backend needs: input checks and a bounded per-frame cache."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np

from videomolmo_ros.core.frame import Frame

_V = TypeVar("_V")


def check_image(frame: Frame) -> None:
    """ValueError unless the frame's image is a non-empty H x W x 3 uint8 array."""
    img = frame.image
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
            and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0):
        shape = getattr(img, "shape", None)
        raise ValueError(f"frame {frame.index}: image must be H x W x 3 uint8 RGB, got "
                         f"{shape} {getattr(img, 'dtype', type(img).__name__)}")


def check_backward_frames(keyframe: Frame, frames: Sequence[Frame]) -> None:
    """ValueError unless every image is valid and ``frames`` are in increasing index order,
    all before ``keyframe`` (what ``MaskTracker.backward`` is given)."""
    check_image(keyframe)
    last = keyframe.index
    for frame in reversed(frames):
        check_image(frame)
        if frame.index >= last:
            raise ValueError("backward frames must be strictly increasing in index and "
                             f"precede the keyframe ({frame.index} >= {last})")
        last = frame.index


def as_points(pts: np.ndarray) -> np.ndarray:
    """N x 2 float (x, y) pixels; non-finite points dropped; ValueError for other shapes."""
    arr = np.asarray(pts, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points must be N x 2 (x, y), got shape {arr.shape}")
    return arr[np.isfinite(arr).all(axis=1)]


class FrameCache(Generic[_V]):
    """Per-frame data computed once and shared by the forward and backward passes.

    Keyed by (index, stamp) so that a restarted stream reusing indices never hits stale data;
    at most ``max_frames`` entries (the oldest inserted goes first), and ``forget`` drops the
    frames the engine no longer needs, so memory stays bounded on an endless stream.
    """

    def __init__(self, max_frames: int) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = max_frames
        self._entries: OrderedDict[tuple[int, int], _V] = OrderedDict()

    def get(self, frame: Frame, compute: Callable[[Frame], _V],
            valid: Callable[[_V], bool] = lambda entry: True) -> _V:
        """The frame's entry; computed (and stored) when absent or no longer ``valid``."""
        key = (frame.index, frame.stamp_ns)
        entry = self._entries.get(key)
        if entry is None or not valid(entry):
            entry = compute(frame)
            self._entries[key] = entry
            while len(self._entries) > self.max_frames:
                self._entries.popitem(last=False)
        return entry

    def forget(self, before_index: int) -> None:
        """Drop the entries of frames with index < ``before_index``."""
        for key in [k for k in self._entries if k[0] < before_index]:
            del self._entries[key]

    @property
    def indices(self) -> list[int]:
        """Frame indices with an entry (for monitoring and tests)."""
        return sorted(k[0] for k in self._entries)

    def __len__(self) -> int:
        return len(self._entries)
