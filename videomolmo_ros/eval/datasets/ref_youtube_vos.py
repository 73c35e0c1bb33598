"""Ref-YouTube-VOS (Seo et al. 2020, URVOS), in the layout of its CodaLab release.

Layout (as ReferFormer's ``docs/data.md`` and ``inference_ytvos.py`` read it)::

    ROOT/
      meta_expressions/{train,valid,test}/meta_expressions.json
      train/JPEGImages/<video>/<frame>.jpg
      train/Annotations/<video>/<frame>.png     palette PNG, index = object id
      train/meta.json                           (objects and categories; not needed here)
      valid/JPEGImages/<video>/<frame>.jpg      (no public annotations)

``meta_expressions.json``: ``{"videos": {video: {"expressions": {exp_id: {"exp": text,
"obj_id": "1"}}, "frames": ["00000", "00005", ...]}}}``; valid expressions have no ``obj_id``.
The competition's ``valid`` expressions also list the 305 ``test`` videos: like ReferFormer, the
reader drops the videos of ``meta_expressions/test`` when that file is there (202 remain).
Frames are every 5th of a 30 fps video, hence the nominal 6 fps. The valid split has no ground
truth: its samples have no mask loader and are for writing a submission
(``<video>/<exp_id>/<frame>.png``) scored by the challenge server.

The same layout is what ReferFormer's ``convert_davis_to_ytvos.py`` makes of Ref-DAVIS-17,
so ``YTVOSFormatDataset`` serves both.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from videomolmo_ros.eval.datasets.base import (DatasetError, Expression, LabelMapCache,
                                               VideoDataset, VideoSample, read_label_png,
                                               require_dir, require_file, resolve_frame,
                                               sorted_ids)


class YTVOSFormatDataset(VideoDataset):
    """Any dataset in the Ref-YouTube-VOS layout above (one split)."""

    name = "ref-youtube-vos"
    fps = 6.0

    def __init__(self, root: str | Path, split: str = "valid") -> None:
        self.root = Path(root)
        self.split = split
        meta_path = require_file(self.root / "meta_expressions" / split / "meta_expressions.json",
                                 f"{self.name} {split} expressions")
        self.image_root = require_dir(self.root / split / "JPEGImages",
                                      f"{self.name} {split} frames")
        self.annotation_root = self.root / split / "Annotations"
        with open(meta_path, encoding="utf-8") as handle:
            self._videos: dict = json.load(handle)["videos"]
        excluded: set[str] = set()
        test_path = self.root / "meta_expressions" / "test" / "meta_expressions.json"
        if split != "test" and test_path.is_file():
            with open(test_path, encoding="utf-8") as handle:
                excluded = set(json.load(handle)["videos"])
        self._ids = sorted(v for v in self._videos if v not in excluded)

    def video_ids(self) -> list[str]:
        return list(self._ids)

    def sample(self, video_id: str) -> VideoSample:
        if video_id not in self._videos:
            raise DatasetError(f"{self.name} {self.split}: no video {video_id!r}")
        entry = self._videos[video_id]
        names = tuple(sorted(str(name) for name in entry["frames"]))
        folder = self.image_root / video_id
        paths = tuple(resolve_frame(folder, name) for name in names)
        expressions = []
        for exp_id in sorted_ids(list(entry["expressions"])):
            data = entry["expressions"][exp_id]
            obj_id = data.get("obj_id")
            objects = () if obj_id is None else (str(obj_id),)
            expressions.append(Expression(exp_id=str(exp_id), text=str(data["exp"]),
                                          object_ids=objects))
        annotations = self.annotation_root / video_id
        loader = None
        if annotations.is_dir():
            loader = palette_mask_loader(annotations, names)
        return VideoSample(dataset=self.name, video_id=video_id, frame_paths=paths,
                           frame_names=names, expressions=tuple(expressions),
                           mask_loader=loader, fps=self.fps)


def palette_mask_loader(folder: Path, names: tuple[str, ...]):
    """Mask loader over ``folder/<frame>.png`` palette PNGs (index = int(object id))."""
    cache = LabelMapCache(read_label_png)

    def load(t: int, object_id: str) -> np.ndarray | None:
        labels = cache.get(folder / f"{names[t]}.png")
        if labels is None:
            return None
        return labels == int(object_id)

    return load


class RefYouTubeVOS(YTVOSFormatDataset):
    """Ref-YouTube-VOS; default split ``valid`` (no public ground truth: submission only)."""

    name = "ref-youtube-vos"
