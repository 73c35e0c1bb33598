"""VPoS-Bench (VideoMolmo, Ahmad et al. 2025): pointing and segmentation in five domains.

PROVISIONAL LAYOUT. The benchmark's file layout is not published in anything we could read:
the VideoMolmo repository's ``eval/README.md`` says "Will be released soon", and the dataset
card (huggingface.co/datasets/ghazishazan/VPoS) describes the domains, not the files. What is
known (paper Sec. 4 and App. A.3): ~100 video-caption pairs with ~1k manually annotated object
points, masks made from those points with SAM2, subsets Cells, Ego4D, Autonomous, VideoGUI,
Robotics and a counting set from Kinetics. So this reader takes the Ref-YouTube-VOS
conventions those authors' tooling uses, plus points in pixels as the release's ``infer.py``
writes them to ``points.jsonl`` (frame -> list of [x, y]); adapt ``_parse_points`` and the
paths here once the real layout is out::

    ROOT/<subset>/                                 e.g. Cells, Ego4D, Autonomous, Counting
      meta_expressions.json
      JPEGImages/<video>/<frame>.jpg
      Annotations/<video>/<exp_id>/<frame>.png     label PNG: k = object of the k-th point of
                                                   that frame (1-based), 0 = background; a
                                                   0/255 PNG is one object

``meta_expressions.json``: ``{"videos": {video: {"frames": [...], "expressions": {exp_id:
{"exp": text, "points": {frame: [[x, y], ...]}, "count": n (optional)}}}}}``. A subset whose
name contains "count", or an expression with "count", is scored for counting. Video ids are
``<subset>/<video>``; the group is the subset; ``split`` restricts to one subset.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from videomolmo_ros.eval.datasets.base import (DatasetError, Expression, LabelMapCache,
                                               VideoDataset, VideoSample, read_label_png,
                                               require_dir, require_file, resolve_frame,
                                               sorted_ids)


class VPoSBench(VideoDataset):
    """All subsets of VPoS-Bench under ROOT (or the one named by ``split``)."""

    name = "vpos-bench"
    fps = 6.0

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = require_dir(Path(root), "vpos-bench root")
        subsets = sorted(p.name for p in self.root.iterdir()
                         if (p / "meta_expressions.json").is_file())
        if split is not None:
            if split not in subsets:
                raise DatasetError(f"vpos-bench: no subset {split!r} under {self.root}; "
                                   f"found {subsets}")
            subsets = [split]
        if not subsets:
            raise DatasetError(f"vpos-bench: no <subset>/meta_expressions.json under {self.root}")
        self._meta: dict[str, dict[str, Any]] = {}
        for subset in subsets:
            path = require_file(self.root / subset / "meta_expressions.json", "vpos-bench")
            with open(path, encoding="utf-8") as handle:
                self._meta[subset] = json.load(handle)["videos"]

    def video_ids(self) -> list[str]:
        return [f"{subset}/{video}" for subset in self._meta
                for video in sorted(self._meta[subset])]

    def sample(self, video_id: str) -> VideoSample:
        subset, _, video = video_id.partition("/")
        if subset not in self._meta or video not in self._meta[subset]:
            raise DatasetError(f"vpos-bench: no video {video_id!r}")
        entry = self._meta[subset][video]
        names = tuple(sorted(str(name) for name in entry["frames"]))
        folder = require_dir(self.root / subset / "JPEGImages" / video, f"vpos-bench {video_id}")
        index = {name: t for t, name in enumerate(names)}
        counting_subset = "count" in subset.lower()
        expressions = []
        for exp_id in sorted_ids(list(entry["expressions"])):
            data = entry["expressions"][exp_id]
            points = _parse_points(data.get("points") or {}, index, video_id)
            most = max((len(p) for p in points.values()), default=0)
            count = data.get("count")
            expressions.append(Expression(
                exp_id=str(exp_id), text=str(data["exp"]),
                object_ids=tuple(f"{exp_id}#{k}" for k in range(1, most + 1)),
                points=points, counting=counting_subset or count is not None,
                count=None if count is None else int(count)))
        annotations = self.root / subset / "Annotations" / video
        loader = _label_loader(annotations, names) if annotations.is_dir() else None
        return VideoSample(dataset=self.name, video_id=video_id,
                           frame_paths=tuple(resolve_frame(folder, n) for n in names),
                           frame_names=names, expressions=tuple(expressions),
                           mask_loader=loader, fps=self.fps, group=subset)


def _parse_points(raw: dict[str, Any], index: dict[str, int],
                  video_id: str) -> dict[int, tuple[tuple[float, float], ...]]:
    """frame name -> [[x, y], ...] as frame index -> ((x, y), ...)."""
    out: dict[int, tuple[tuple[float, float], ...]] = {}
    for name, points in raw.items():
        if str(name) not in index:
            raise DatasetError(f"vpos-bench {video_id}: points on unknown frame {name!r}")
        out[index[str(name)]] = tuple((float(x), float(y)) for x, y in points)
    return out


def _label_loader(folder: Path, names: tuple[str, ...]):
    """Mask loader for object ``<exp_id>#<k>``: label k of ``folder/<exp_id>/<frame>.png``."""
    cache = LabelMapCache(read_label_png)

    def load(t: int, object_id: str) -> np.ndarray | None:
        exp_id, _, k = object_id.rpartition("#")
        labels = cache.get(folder / exp_id / f"{names[t]}.png")
        if labels is None:
            return None
        if int(k) == 1 and set(np.unique(labels).tolist()) <= {0, 255}:
            return labels > 0  # a binary 0/255 mask: one object
        return labels == int(k)

    return load
