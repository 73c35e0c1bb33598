"""The pointer interface the streaming engine calls on keyframes.

VideoMolmo's temporal module reads the features of the l frames before a keyframe. The
engine therefore asks the pointer to ``encode`` each frame it will need (the keyframe and
its l predecessors) exactly once, keeps the results in a per-camera ring buffer, and hands
them back to ``point``. What a "feature" is, is the pointer's business (a tensor for the
model, the frame itself for the oracle).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.points import Point


class Pointer(ABC):
    """Frame + history + queries -> points per query (pixel coordinates)."""

    name: str = "pointer"

    @abstractmethod
    def encode(self, frame: Frame) -> Any:
        """Per-frame features, computed once per frame and cached by the engine."""

    @abstractmethod
    def point(self, frame: Frame, features: Any, history: Sequence[Any],
              queries: Sequence[str]) -> list[list[Point]]:
        """Points for every query on ``frame``.

        ``history`` holds the features of up to l previous frames, most recent first
        (shorter at the start of a stream; padding is the pointer's choice). Returns one
        list of points per query, in the order of ``queries``; an empty list means the
        query names nothing visible.
        """
