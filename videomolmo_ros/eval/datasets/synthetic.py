"""The project's synthetic scenes, as exported by ``videomolmo_ros.data.synthetic.write_scene``.

Layout::

    ROOT/<scene>/                     one folder per scene (or ROOT itself is one scene)
      scene.json                      config (fps), objects, expressions, stamps_ns
      frames/NNNN.png
      masks/object_II/NNNN.png        0/255, the visible part of object II

Expressions are ``{"text", "kind", "object_ids"}``; kind "counting" is scored for counting
(ground truth: the objects visible on each keyframe). The group is "synthetic".
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from videomolmo_ros.eval.datasets.base import (DatasetError, Expression, VideoDataset,
                                               VideoSample, list_frames, read_binary_png,
                                               require_dir)


class SyntheticExport(VideoDataset):
    """Scenes written by ``write_scene`` under ROOT."""

    name = "synthetic"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = require_dir(Path(root), "synthetic root")
        if (self.root / "scene.json").is_file():
            self._dirs = {self.root.name: self.root}
        else:
            self._dirs = {p.name: p for p in sorted(self.root.iterdir())
                          if (p / "scene.json").is_file()}
        if not self._dirs:
            raise DatasetError(f"synthetic: no scene.json in {self.root} or its subfolders")

    def video_ids(self) -> list[str]:
        return sorted(self._dirs)

    def sample(self, video_id: str) -> VideoSample:
        if video_id not in self._dirs:
            raise DatasetError(f"synthetic: no scene {video_id!r}")
        folder = self._dirs[video_id]
        meta = json.loads((folder / "scene.json").read_text())
        paths = tuple(list_frames(require_dir(folder / "frames", f"synthetic {video_id}")))
        expressions = tuple(
            Expression(exp_id=str(i), text=e["text"],
                       object_ids=tuple(str(o) for o in e["object_ids"]),
                       counting=e.get("kind") == "counting", extra={"kind": e.get("kind", "")})
            for i, e in enumerate(meta["expressions"]))
        names = tuple(p.stem for p in paths)
        masks = folder / "masks"

        def load(t: int, object_id: str) -> np.ndarray | None:
            return read_binary_png(masks / f"object_{int(object_id):02d}" / f"{names[t]}.png")

        return VideoSample(dataset=self.name, video_id=video_id, frame_paths=paths,
                           frame_names=names, expressions=expressions, mask_loader=load,
                           fps=float(meta.get("config", {}).get("fps", 10.0)), group="synthetic")
