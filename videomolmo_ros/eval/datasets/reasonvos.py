"""ReasonVOS (Bai et al. 2024, VideoLISA): reasoning expressions over BURST, VIPSeg, MOSE, MeViS.

Layout (showlab/VideoLISA ``BENCHMARK.md``, ``benchmark_check.py``,
``evaluation/reason_vos/eval_reason_vos.py``)::

    ROOT/
      meta_expressions.json
      JPEGImages/<video>/<frame>.jpg
      Annotations/<source>_<video>_<obj_id>/<frame>.png    binary mask, nonzero = object

``meta_expressions.json``: ``{"videos": {video: {"source": "MOSE", "frames": [...],
"expressions": [{"obj_id": .., "exp_id": .., "exp_text": "...", "is_sent": ..}]}}}``.
Several expressions may share an object. A sample's object id is the mask folder name
``<source>_<video>_<obj_id>``; its group is the source dataset. There is no split.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from videomolmo_ros.eval.datasets.base import (DatasetError, Expression, VideoDataset,
                                               VideoSample, frame_stem, list_frames,
                                               read_binary_png, require_dir, require_file,
                                               resolve_frame)


class ReasonVOS(VideoDataset):
    """The ReasonVOS benchmark (one split)."""

    name = "reasonvos"
    fps = 6.0

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        self.image_root = require_dir(self.root / "JPEGImages", "reasonvos frames")
        self.annotation_root = require_dir(self.root / "Annotations", "reasonvos annotations")
        with open(require_file(self.root / "meta_expressions.json", "reasonvos expressions"),
                  encoding="utf-8") as handle:
            self._videos: dict[str, Any] = json.load(handle)["videos"]

    def video_ids(self) -> list[str]:
        return sorted(self._videos)

    def sample(self, video_id: str) -> VideoSample:
        if video_id not in self._videos:
            raise DatasetError(f"reasonvos: no video {video_id!r}")
        entry = self._videos[video_id]
        source = str(entry["source"])
        folder = self.image_root / video_id
        if entry.get("frames"):
            paths = tuple(resolve_frame(folder, str(name)) for name in entry["frames"])
        else:
            paths = tuple(list_frames(require_dir(folder, f"reasonvos frames of {video_id}")))
        names = tuple(frame_stem(p.name) for p in paths)
        raw = list(entry["expressions"])
        plain_ids = [str(item["exp_id"]) for item in raw]
        unique = len(set(plain_ids)) == len(plain_ids)
        expressions = []
        for item, plain in zip(raw, plain_ids):
            key = f"{source}_{video_id}_{item['obj_id']}"
            expressions.append(Expression(
                exp_id=plain if unique else f"{item['obj_id']}/{plain}",
                text=str(item["exp_text"]), object_ids=(key,),
                extra={"source": source, "is_sent": str(item.get("is_sent", "")),
                       "mask_folder": key, "exp_id": plain}))
        annotations = self.annotation_root

        def load(t: int, object_id: str) -> np.ndarray | None:
            return read_binary_png(annotations / object_id / f"{names[t]}.png")

        return VideoSample(dataset=self.name, video_id=video_id, frame_paths=paths,
                           frame_names=names, expressions=tuple(expressions),
                           mask_loader=load, fps=self.fps, group=source)
