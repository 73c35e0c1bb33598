"""Which frames are keyframes, and which frames must be encoded at all.

Points are predicted only on keyframes 0, k, 2k, ... (the paper's sampling rate k; the release
uses ``frame_rate`` = 10). VideoMolmo's temporal module reads the features of the l frames
right before a keyframe (every s-th frame back with a history stride s > 1), so a frame needs
encoding only if it is a keyframe or one of those history frames of the next keyframe; every
other frame is never encoded.
"""
from __future__ import annotations

import operator


def history_indices(frame: int, l: int, stride: int = 1) -> list[int]:  # noqa: E741
    """Frames frame-s, frame-2s, ..., frame-l*s that exist (>= 0), most recent first."""
    return [i for i in range(frame - stride, frame - stride * l - 1, -stride) if i >= 0]


class KeyframeSchedule:
    """Keyframe spacing ``k`` (>= 1), temporal history length ``l`` (>= 0) and its spacing
    ``stride`` (>= 1; 1 = the release's l consecutive frames)."""

    def __init__(self, k: int, l: int, stride: int = 1) -> None:  # noqa: E741 (the paper's name)
        k = operator.index(k)
        l = operator.index(l)  # noqa: E741
        stride = operator.index(stride)
        if k < 1:
            raise ValueError(f"keyframe spacing k must be >= 1, got {k}")
        if l < 0:
            raise ValueError(f"history length l must be >= 0, got {l}")
        if stride < 1:
            raise ValueError(f"history stride must be >= 1, got {stride}")
        self.k = k
        self.l = l  # noqa: E741
        self.stride = stride

    def __repr__(self) -> str:
        stride = f", stride={self.stride}" if self.stride != 1 else ""
        return f"KeyframeSchedule(k={self.k}, l={self.l}{stride})"

    @property
    def reach(self) -> int:
        """How many frames back the oldest history frame lies (l * stride)."""
        return self.l * self.stride

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
        """True for a keyframe and for a history frame of any later keyframe."""
        index = self._check(index)
        if index % self.k == 0:
            return True
        keyframe = self.next_keyframe(index)
        while keyframe - index <= self.reach:  # the history may reach past earlier keyframes
            if (keyframe - index) % self.stride == 0:
                return True
            keyframe += self.k
        return False

    def history_indices(self, keyframe: int) -> list[int]:
        """The frames whose features keyframe ``keyframe`` reads: up to l, most recent first.

        Shorter at the start of a stream (frames before 0 do not exist; padding them is the
        pointer's business). ValueError if ``keyframe`` is not a keyframe.
        """
        if not self.is_keyframe(keyframe):
            raise ValueError(f"frame {keyframe} is not a keyframe of {self!r}")
        return history_indices(keyframe, self.l, self.stride)
