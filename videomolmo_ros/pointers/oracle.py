"""A pointer that replays ground truth from a synthetic scene (no model)."""
from __future__ import annotations

from typing import Any, Sequence

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.points import Point
from videomolmo_ros.data.synthetic import Scene
from videomolmo_ros.pointers.base import Pointer


class OraclePointer(Pointer):
    """Answers queries with the ground-truth points of a ``Scene``; it does not look at pixels.

    This is not a model: it replays annotations, the way the VideoMolmo paper turns the point
    annotations of VPoS-Bench into masks. Use it to test and benchmark everything downstream of
    the pointer (masks, fusion, streaming, ROS) with the pointing error taken out.

    A query is the text of one of ``scene.expressions`` (compared after strip and lower-casing);
    the frame is found from its stamp. An unknown query or stamp gets no points.

    Objects showing fewer than ``min_visible_pixels`` pixels (a sliver at the image edge, the
    last corner of an occluded shape) get no point, as an annotator would not mark them: a
    prompt on one or two pixels seeds a mask from background, and the fusion rule then spreads
    that error over the whole window.
    """

    name = "oracle"

    def __init__(self, scene: Scene, min_visible_pixels: int = 20) -> None:
        self.scene = scene
        self.min_visible_pixels = min_visible_pixels

    def encode(self, frame: Frame) -> int:
        """The stamp is all the oracle needs; nothing is computed."""
        return frame.stamp_ns

    def point(self, frame: Frame, features: Any, history: Sequence[Any],
              queries: Sequence[str]) -> list[list[Point]]:
        """Ground-truth points per query on the scene frame with the same stamp."""
        t = self.scene.frame_index_for_stamp(frame.stamp_ns)
        answers: list[list[Point]] = []
        for query in queries:
            expression = self.scene.find_expression(query)
            if t is None or expression is None:
                answers.append([])
            else:
                visible = [o for o in expression.object_ids
                           if int(self.scene.masks[t, o].sum()) >= self.min_visible_pixels]
                answers.append(self.scene.points_for(visible, t, label=query))
        return answers
