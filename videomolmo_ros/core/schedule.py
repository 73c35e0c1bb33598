"""Which frames are keyframes, and which frames must be encoded at all.

Points are predicted only on keyframes 0, k, 2k, ... (the paper's sampling rate k; the release
uses ``frame_rate`` = 10). VideoMolmo's temporal module reads the features of the l frames
right before a keyframe, so a frame needs encoding only if it is a keyframe or one of the l
frames preceding the next keyframe; every other frame is never encoded.
"""
from __future__ import annotations

import operator


class KeyframeSchedule:
    """Keyframe spacing ``k`` (>= 1) and temporal history length ``l`` (>= 0)."""

    def __init__(self, k: int, l: int) -> None:  # noqa: E741 (the paper's name)
        k = operator.index(k)
        l = operator.index(l)  # noqa: E741
        if k < 1:
            raise ValueError(f"keyframe spacing k must be >= 1, got {k}")
        if l < 0:
            raise ValueError(f"history length l must be >= 0, got {l}")
        self.k = k
        self.l = l  # noqa: E741

    def __repr__(self) -> str:
        return f"KeyframeSchedule(k={self.k}, l={self.l})"

    def _check(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        return index

    def is_keyframe(self, index: int) -> bool:
        """True for frames 0, k, 2k, ..."""
        return self._check(index) % self.k == 0

    def next_keyframe(self, index: int) -> int:
        """The smallest keyframe >= index."""
        index = self._check(index)
        return -(-index // self.k) * self.k

    def previous_keyframe(self, index: int) -> int:
        """The largest keyframe <= index."""
        index = self._check(index)
        return index // self.k * self.k

    def needs_features(self, index: int) -> bool:
        """True for a keyframe and for the l frames right before the next keyframe."""
        index = self._check(index)
        if index % self.k == 0:
            return True
        return self.next_keyframe(index) - index <= self.l

    def history_indices(self, keyframe: int) -> list[int]:
        """The frames whose features keyframe ``keyframe`` reads: up to l, most recent first.

        Shorter at the start of a stream (frames before 0 do not exist; padding them is the
        pointer's business). ValueError if ``keyframe`` is not a keyframe.
        """
        if not self.is_keyframe(keyframe):
            raise ValueError(f"frame {keyframe} is not a keyframe of {self!r}")
        return [i for i in range(keyframe - 1, keyframe - 1 - self.l, -1) if i >= 0]
