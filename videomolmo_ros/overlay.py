"""The debug picture: masks coloured by label, keyframe points as stars (OpenCV drawing)."""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np

from videomolmo_ros.core.points import Point

# Distinct colours (RGB) for labels 1, 2, ...; label 0 is the background.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
], dtype=np.uint8)


def label_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of a label (cycles through the palette)."""
    return tuple(int(c) for c in PALETTE[(label - 1) % len(PALETTE)])


def draw_overlay(image: np.ndarray, label_map: np.ndarray | None,
                 points: Mapping[int, Sequence[Point]] | None = None,
                 captions: Mapping[int, str] | None = None, alpha: float = 0.5) -> np.ndarray:
    """A copy of ``image`` (RGB) with each label's mask tinted and its outline drawn,
    the points of each label drawn as stars, and one caption line per label."""
    canvas = image.copy()
    if label_map is not None and label_map.shape[:2] == image.shape[:2]:
        for label in np.unique(label_map):
            if label == 0:
                continue
            mask = label_map == label
            colour = np.array(label_colour(int(label)), np.float32)
            canvas[mask] = (canvas[mask] * (1 - alpha) + colour * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, label_colour(int(label)), 1)
    size = max(8, min(image.shape[:2]) // 20)
    for label, label_points in (points or {}).items():
        for point in label_points:
            centre = (int(round(point.x)), int(round(point.y)))
            cv2.drawMarker(canvas, centre, (255, 255, 255), cv2.MARKER_STAR, size + 4, 3)
            cv2.drawMarker(canvas, centre, label_colour(label), cv2.MARKER_STAR, size, 2)
    for row, (label, text) in enumerate(sorted((captions or {}).items())):
        origin = (4, 14 + 14 * row)
        cv2.putText(canvas, f"{label}: {text}", origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, f"{label}: {text}", origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    label_colour(label), 1, cv2.LINE_AA)
    return canvas
