"""The unit the streaming engine works on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera image.

    image: H x W x 3 uint8, RGB. index: position in the processed stream of its camera
    (0, 1, 2, ...). stamp_ns: acquisition time in nanoseconds (the ROS header stamp).
    """

    camera: str
    index: int
    stamp_ns: int
    image: np.ndarray

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
