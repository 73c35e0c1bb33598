"""Per-expression scores, accumulated frame by frame, and their aggregation over a dataset.

Protocol (MeViS' ``eval_mevis.py`` and VideoLISA's ReasonVOS evaluation, which score every
expression on its own): an expression's J and F are the means over the annotated frames of
the video, its J&F their mean; a dataset's J and F are the means over expressions and its J&F
is (J + F) / 2. Scored separately for the fused and the causal masks. A frame without a
predicted mask (the engine recovering from an error) counts as an empty prediction.

Points (Molmo protocol via ``core.metrics.point_precision_recall_f1``): on every keyframe, the
predicted points against the masks of the referred objects visible there; precision, recall
and F1 are averaged over keyframes, then over expressions. Counting (expressions that ask for
a count): predicted = number of points, ground truth = the dataset's count or else the number
of visible objects; EMA and MAE pool all keyframes of those expressions.

Ref-DAVIS-17 note: ReferFormer-style tools score it with the DAVIS unsupervised protocol per
annotator (all objects of a video at once, matched to proposals); per-expression scoring is
the same up to that matching and treats all four expression sets alike.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from videomolmo_ros.core.metrics import (counting_metrics, j_and_f,
                                         point_precision_recall_f1)

KINDS = ("fused", "causal")


def _fit(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The prediction at the ground truth's size (nearest neighbour) when they differ."""
    if pred.shape == shape:
        return pred
    resized = cv2.resize(pred.astype(np.uint8), (shape[1], shape[0]),
                         interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


@dataclass
class ExpressionScorer:
    """Running sums of one expression's scores."""

    exp_id: str
    text: str
    counting: bool = False
    j: dict[str, dict[int, float]] = field(default_factory=lambda: {k: {} for k in KINDS})
    f: dict[str, dict[int, float]] = field(default_factory=lambda: {k: {} for k in KINDS})
    point_scores: list[tuple[float, float, float]] = field(default_factory=list)
    counts: list[tuple[int, int]] = field(default_factory=list)

    def add_mask(self, kind: str, t: int, pred: np.ndarray | None, gt: np.ndarray) -> None:
        """Score frame t's ``kind`` mask (None = no prediction = empty) against ``gt``."""
        pred = np.zeros(gt.shape, dtype=bool) if pred is None else _fit(np.asarray(pred, bool),
                                                                        gt.shape)
        j, f, _ = j_and_f(pred, gt)
        self.j[kind][t] = j
        self.f[kind][t] = f

    def scored(self, kind: str, t: int) -> bool:
        return t in self.j[kind]

    def add_points(self, points: Sequence[tuple[float, float]],
                   object_masks: Sequence[np.ndarray], gt_count: int | None) -> None:
        """Score one keyframe's points against the visible objects' masks."""
        visible = [m for m in object_masks if m.any()]
        self.point_scores.append(point_precision_recall_f1(points, visible))
        if self.counting and gt_count is not None:
            self.counts.append((len(points), int(gt_count)))

    def result(self) -> dict[str, Any]:
        """JSON-ready scores of this expression."""
        out: dict[str, Any] = {"exp_id": self.exp_id, "text": self.text,
                               "frames_scored": len(self.j["fused"])}
        for kind in KINDS:
            out[kind] = region_boundary(list(self.j[kind].values()), list(self.f[kind].values()))
        if self.point_scores:
            p, r, f1 = (float(np.mean(v)) for v in zip(*self.point_scores))
            out["points"] = {"P": p, "R": r, "F1": f1, "keyframes": len(self.point_scores)}
        if self.counting:
            out["counts"] = [list(pair) for pair in self.counts]
        return out


def region_boundary(js: Sequence[float], fs: Sequence[float]) -> dict[str, float] | None:
    """{"J", "F", "JF"} from per-item J and F values (None when there are none)."""
    if not js:
        return None
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "JF": (j + f) / 2}


@dataclass
class Summary:
    """Dataset-level numbers (fractions in [0, 1]; MAE in objects)."""

    videos: int
    expressions: int
    frames: int
    fused: dict[str, float] | None
    causal: dict[str, float] | None
    points: dict[str, float] | None
    counting: dict[str, float] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(videos: Iterable[dict[str, Any]]) -> Summary:
    """Aggregate per-video results (``VideoResult`` JSON) as in the module docstring."""
    videos = list(videos)
    expressions = [e for v in videos for e in v["expressions"]]
    kinds: dict[str, dict[str, float] | None] = {}
    for kind in KINDS:
        scored = [e[kind] for e in expressions if e.get(kind)]
        kinds[kind] = region_boundary([s["J"] for s in scored], [s["F"] for s in scored])
    with_points = [e["points"] for e in expressions if e.get("points")]
    points = None
    if with_points:
        points = {name: float(np.mean([p[name] for p in with_points])) for name in ("P", "R", "F1")}
        points["expressions"] = len(with_points)
    pairs = [pair for e in expressions for pair in e.get("counts", [])]
    counting = None
    if pairs:
        ema, mae = counting_metrics([p for p, _ in pairs], [g for _, g in pairs])
        counting = {"EMA": ema, "MAE": mae, "keyframes": len(pairs)}
    return Summary(videos=len(videos), expressions=len(expressions),
                   frames=sum(int(v.get("num_frames", 0)) for v in videos),
                   fused=kinds["fused"], causal=kinds["causal"], points=points, counting=counting)
