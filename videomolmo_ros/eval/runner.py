"""Runs the streaming engine over one dataset video and scores what comes out.

The engine sees the video as a camera stream: frames in order, stamped by ``VideoSample``,
the video's expressions registered as standing queries before the first frame (so frame 0 is
their first keyframe), ``flush`` at the end. Expressions are run in passes of at most
``max_queries`` with distinct texts (a pointer is asked by text; Ref-DAVIS repeats texts
across annotators). Masks are scored as they arrive and never kept, so memory stays at a few
frames whatever the video length.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from videomolmo_ros.eval.datasets.base import Expression, VideoSample
from videomolmo_ros.eval.scoring import KINDS, ExpressionScorer
from videomolmo_ros.pointers.base import Pointer
from videomolmo_ros.segment.base import Segmenter
from videomolmo_ros.stream import (EngineConfig, EngineWarning, KeyframePoints, MaskEvent,
                                   StreamingEngine)

CAMERA = "eval"
MAX_WARNINGS_KEPT = 20

# (sample, the expressions of one pass) -> the pointer for that pass
PointerFactory = Callable[[VideoSample, Sequence[Expression]], Pointer]


def expression_passes(expressions: Sequence[Expression], size: int) -> list[list[Expression]]:
    """Expressions split into passes of at most ``size``, texts distinct within a pass."""
    passes: list[tuple[list[Expression], set[str]]] = []
    for expression in expressions:
        key = expression.text.strip()
        for members, texts in passes:
            if len(members) < size and key not in texts:
                members.append(expression)
                texts.add(key)
                break
        else:
            passes.append(([expression], {key}))
    return [members for members, _ in passes]


@dataclass
class _GroundTruth:
    """Ground-truth masks of the frames still awaiting scores (a few frames at most)."""

    sample: VideoSample
    expressions: dict[int, Expression]  # query id -> expression
    frames: dict[int, dict[int, tuple[np.ndarray | None, list[np.ndarray] | None]]]

    def get(self, t: int, query_id: int) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
        """(union mask, per-object masks) of a query's expression on frame t; None = frame t
        is not annotated."""
        per_frame = self.frames.setdefault(t, {})
        if query_id not in per_frame:
            expression = self.expressions[query_id]
            objects = [self.sample.object_mask(t, o) for o in expression.object_ids]
            if any(m is None for m in objects) or not self.sample.has_masks:
                per_frame[query_id] = (None, None)
            else:
                union = self.sample.expression_mask(t, expression) if not objects else \
                    np.logical_or.reduce(objects)
                per_frame[query_id] = (union, objects)
        return per_frame[query_id]

    def drop(self, t: int) -> None:
        self.frames.pop(t, None)


def run_video(sample: VideoSample, pointer_factory: PointerFactory, segmenter: Segmenter,
              config: EngineConfig, *, max_frames: int | None = None,
              save_masks: Path | None = None,
              on_frame: Callable[[], None] | None = None) -> dict[str, Any]:
    """Stream one video through the engine; the per-video result (JSON-ready).

    ``max_frames`` cuts the video (quick runs); ``save_masks`` writes the fused masks as
    ``<dir>/<video>/<exp_id>/<frame>.png`` (0/255, the layout of the MeViS and Ref-YouTube-VOS
    submissions); ``on_frame`` is called after every pushed frame (progress bars).
    """
    config = replace(config, max_query_chars=max(config.max_query_chars, 4096))
    num_frames = sample.num_frames if max_frames is None else min(max_frames, sample.num_frames)
    scorers = {e.exp_id: ExpressionScorer(e.exp_id, e.text, counting=e.counting)
               for e in sample.expressions}
    seen: dict[str, dict[str, set[int]]] = {e.exp_id: {k: set() for k in KINDS}
                                            for e in sample.expressions}
    warnings: list[str] = []
    start = time.perf_counter()
    pushed = 0
    runnable = [e for e in sample.expressions if e.text.strip()]
    for e in sample.expressions:
        if not e.text.strip():
            warnings.append(f"expression {e.exp_id} has no text; scored as empty masks")
    for members in expression_passes(runnable, config.max_queries):
        engine = StreamingEngine(pointer_factory(sample, members), segmenter, config)
        queries = {engine.add_query(e.text, CAMERA).id: e for e in members}
        truth = _GroundTruth(sample, queries, {})
        for t in range(num_frames):
            events = engine.push(CAMERA, sample.frame(t), sample.stamp_ns(t))
            _handle(events, sample, queries, scorers, seen, truth, warnings, save_masks)
            pushed += 1
            if on_frame is not None:
                on_frame()
        _handle(engine.flush(), sample, queries, scorers, seen, truth, warnings, save_masks)
    _score_missing(sample, scorers, seen, num_frames, save_masks)
    seconds = time.perf_counter() - start
    return {
        "dataset": sample.dataset, "video_id": sample.video_id, "group": sample.group,
        "num_frames": num_frames, "has_ground_truth": sample.has_masks,
        "expressions": [scorers[e.exp_id].result() for e in sample.expressions],
        "seconds": seconds, "frames_per_second": pushed / seconds if seconds > 0 else 0.0,
        "warnings": warnings[:MAX_WARNINGS_KEPT], "warnings_total": len(warnings),
    }


def _handle(events: list, sample: VideoSample, queries: dict[int, Expression],
            scorers: dict[str, ExpressionScorer], seen: dict[str, dict[str, set[int]]],
            truth: _GroundTruth, warnings: list[str], save_masks: Path | None) -> None:
    """Score (and maybe save) the masks and points of a batch of engine events."""
    for event in events:
        if isinstance(event, EngineWarning):
            warnings.append(f"frame {event.frame_index}: {event.message}")
        elif isinstance(event, KeyframePoints):
            expression = queries[event.query_id]
            _, objects = truth.get(event.frame_index, event.query_id)
            if objects is None:
                continue
            gt_count = expression.count
            if gt_count is None and expression.points is not None \
                    and event.frame_index in expression.points:
                gt_count = len(expression.points[event.frame_index])
            if gt_count is None:
                gt_count = sum(1 for m in objects if m.any())
            scorers[expression.exp_id].add_points([(p.x, p.y) for p in event.points], objects,
                                                  gt_count)
        elif isinstance(event, MaskEvent):
            t = event.frame_index
            for query_id, expression in queries.items():
                pred = event.masks.get(query_id)
                if pred is None:
                    continue
                seen[expression.exp_id][event.kind].add(t)
                if event.kind == "fused" and save_masks is not None:
                    _save_mask(save_masks, sample, expression, t, pred)
                gt, _ = truth.get(t, query_id)
                if gt is not None:
                    scorers[expression.exp_id].add_mask(event.kind, t, pred, gt)
            if event.kind == "fused":
                truth.drop(t)


def _score_missing(sample: VideoSample, scorers: dict[str, ExpressionScorer],
                   seen: dict[str, dict[str, set[int]]], num_frames: int,
                   save_masks: Path | None) -> None:
    """Frames that never got a mask of some kind score as (and are saved as) empty masks."""
    for expression in sample.expressions:
        for t in range(num_frames):
            missing = [k for k in KINDS if t not in seen[expression.exp_id][k]]
            if not missing:
                continue
            if save_masks is not None and "fused" in missing:
                _save_mask(save_masks, sample, expression, t,
                           np.zeros(sample.frame_shape(t), dtype=bool))
            gt = sample.expression_mask(t, expression) if sample.has_masks else None
            if gt is not None:
                for kind in missing:
                    scorers[expression.exp_id].add_mask(kind, t, None, gt)


def _save_mask(root: Path, sample: VideoSample, expression: Expression, t: int,
               mask: np.ndarray) -> None:
    folder = root / sample.video_id / expression.exp_id
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{sample.frame_names[t]}.png"), mask.astype(np.uint8) * 255)
