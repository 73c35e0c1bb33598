"""An oracle pointer for any dataset sample: ground-truth points derived from its masks.

Used by ``evaluate --oracle-points`` to score the mask stage (segmenter, propagation, fusion)
alone, with the pointing error taken out. Per query and keyframe it answers one point per
referred object: the object's deepest mask pixel (farthest from the mask boundary, the image
border counting as boundary), the point the paper's annotation pipeline favours (it samples
points in proportion to that distance). VPoS-Bench expressions carry annotated points: those
are replayed as they are on the frames that have them.

Objects showing fewer than ``min_visible_pixels`` pixels get no point, as an annotator would
not mark a sliver (and a prompt on one or two pixels seeds a mask from background).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.masks import deepest_point
from videomolmo_ros.core.points import Point
from videomolmo_ros.eval.datasets.base import Expression, VideoSample
from videomolmo_ros.pointers.base import Pointer


class MaskOraclePointer(Pointer):
    """Answers a sample's expressions with points from its ground truth (no model).

    ``expressions``: the ones that may be asked (default: all of the sample's); their texts,
    stripped, must be unique, since a query is matched to its expression by text. The frame
    is found from its stamp (``VideoSample.stamp_ns``). Unknown queries or stamps get no points.
    """

    name = "mask-oracle"

    def __init__(self, sample: VideoSample, expressions: Sequence[Expression] | None = None,
                 min_visible_pixels: int = 20) -> None:
        self.sample = sample
        self.min_visible_pixels = min_visible_pixels
        chosen = sample.expressions if expressions is None else tuple(expressions)
        self._by_text: dict[str, Expression] = {}
        for expression in chosen:
            key = expression.text.strip()
            if key in self._by_text:
                raise ValueError(f"two expressions of {sample.video_id} read {key!r}; give the "
                                 "oracle a set with unique texts")
            self._by_text[key] = expression

    def encode(self, frame: Frame) -> int:
        """The stamp is all the oracle needs."""
        return frame.stamp_ns

    def point(self, frame: Frame, features: Any, history: Sequence[Any],
              queries: Sequence[str]) -> list[list[Point]]:
        """Ground-truth points per query on the sample frame with this stamp."""
        t = self.sample.index_for_stamp(frame.stamp_ns)
        answers: list[list[Point]] = []
        for query in queries:
            expression = self._by_text.get(query.strip())
            answers.append([] if t is None or expression is None
                           else self.points_for(expression, t, label=query))
        return answers

    def points_for(self, expression: Expression, t: int, label: str = "") -> list[Point]:
        """The oracle's points for one expression on frame t."""
        if expression.points is not None and t in expression.points:
            return [Point(x=x, y=y, label=label) for x, y in expression.points[t]]
        points = []
        for object_id in expression.object_ids:
            mask = self.sample.object_mask(t, object_id)
            if mask is None or int(np.count_nonzero(mask)) < self.min_visible_pixels:
                continue
            center = deepest_point(mask)
            if center is not None:
                points.append(Point(x=float(center[0]), y=float(center[1]), label=label))
        return points
