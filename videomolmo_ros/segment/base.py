"""The interface every mask backend implements (classical OpenCV now, SAM2 later).

A ``MaskTracker`` belongs to one camera stream. The streaming engine drives it:

* ``prompt`` at a keyframe: points per query -> one mask per query; it also (re)starts the
  forward tracks from those masks.
* ``forward`` for every later frame: the causal masks, propagated from the last prompt.
* ``backward`` when the next keyframe has been prompted: from that keyframe's masks back over
  the frames buffered since the previous keyframe (newest first), for bidirectional fusion.
* ``forget`` drops whatever the tracker cached for frames older than an index (bounded memory).

Masks are H x W bool arrays. Queries are identified by the engine's integer query ids.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np

from videomolmo_ros.core.frame import Frame

Masks = dict[int, np.ndarray]


class MaskTracker(ABC):
    """Point-seeded masks plus forward and backward propagation for one camera."""

    @abstractmethod
    def prompt(self, frame: Frame, points: Mapping[int, np.ndarray]) -> Masks:
        """Masks for ``frame`` from pixel points (query id -> N x 2 array of x, y).

        A query with zero points gets an empty mask. Restarts the forward tracks: later
        ``forward`` calls propagate from these masks, and queries absent from ``points``
        stop being tracked.
        """

    @abstractmethod
    def forward(self, frame: Frame) -> Masks:
        """Causal masks for the next frame of the stream, one per tracked query."""

    @abstractmethod
    def backward(self, keyframe: Frame, key_masks: Mapping[int, np.ndarray],
                 frames: Sequence[Frame]) -> list[Masks]:
        """Propagate ``key_masks`` from ``keyframe`` backward over ``frames``.

        ``frames`` are in stream order (oldest first) and all precede ``keyframe``; the
        propagation visits them newest first. Returns one ``Masks`` per frame, in the order
        of ``frames``. Must not disturb the forward tracks.
        """

    def forget(self, before_index: int) -> None:
        """Drop cached state of frames with index < ``before_index``."""


class Segmenter(ABC):
    """Factory of per-camera trackers, so that each camera has its own state."""

    name: str = "segmenter"

    @abstractmethod
    def new_tracker(self) -> MaskTracker:
        """A fresh tracker for one camera stream."""
