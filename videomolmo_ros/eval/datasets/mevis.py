"""MeViS (Ding et al. 2023): motion expressions, often naming several objects.

Layout (henghuiding/MeViS README "File Structure"; loaders ``lmpm/data/datasets/mevis.py`` and
``ReferFormer_dataset.py``)::

    ROOT/{train,valid_u,valid}/
      JPEGImages/<video>/<frame>.jpg
      meta_expressions.json
      mask_dict.json          (train and valid_u only; valid is scored by the challenge server)

``meta_expressions.json``: ``{"videos": {video: {"expressions": {exp_id: {"exp": text,
"obj_id": [..], "anno_id": [..]}}, "frames": [...]}}}``. ``mask_dict.json``: ``{anno_id:
[rle or null per frame of the video, in the order of "frames"]}``, COCO RLE (decoded by
``rle.py``). An expression's ground truth is the union of its ``anno_id`` masks, as MeViS'
``eval_mevis.py`` scores it; those anno ids are the sample's object ids.

Memory: ``mask_dict.json`` is one JSON file, so it is parsed whole, once per split, on the first
mask read; it stays compressed (RLE strings) and masks are decoded one frame at a time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from videomolmo_ros.eval.datasets.base import (DatasetError, Expression, VideoDataset,
                                               VideoSample, image_size, require_dir, require_file,
                                               resolve_frame, sorted_ids)
from videomolmo_ros.eval.datasets.rle import decode_rle


class MeViS(VideoDataset):
    """One split of MeViS (default ``valid_u``, the split with public ground truth)."""

    name = "mevis"
    fps = 6.0

    def __init__(self, root: str | Path, split: str = "valid_u") -> None:
        self.root = Path(root)
        self.split = split
        split_root = require_dir(self.root / split, f"mevis split {split}")
        self.image_root = require_dir(split_root / "JPEGImages", f"mevis {split} frames")
        with open(require_file(split_root / "meta_expressions.json", f"mevis {split} "
                               "expressions"), encoding="utf-8") as handle:
            self._videos: dict[str, Any] = json.load(handle)["videos"]
        self.mask_path = split_root / "mask_dict.json"
        self._mask_dict: dict[str, list] | None = None

    def video_ids(self) -> list[str]:
        return sorted(self._videos)

    def _masks(self) -> dict[str, list]:
        if self._mask_dict is None:
            with open(self.mask_path, encoding="utf-8") as handle:
                self._mask_dict = json.load(handle)
        return self._mask_dict

    def sample(self, video_id: str) -> VideoSample:
        if video_id not in self._videos:
            raise DatasetError(f"mevis {self.split}: no video {video_id!r}")
        entry = self._videos[video_id]
        names = tuple(sorted(str(name) for name in entry["frames"]))
        folder = self.image_root / video_id
        expressions = []
        for exp_id in sorted_ids(list(entry["expressions"])):
            data = entry["expressions"][exp_id]
            anno_ids = tuple(str(a) for a in (data.get("anno_id") or ()))
            obj_ids = [str(o) for o in (data.get("obj_id") or ())]
            expressions.append(Expression(exp_id=str(exp_id), text=str(data["exp"]),
                                          object_ids=anno_ids,
                                          extra={"obj_id": ",".join(obj_ids)}))
        paths = tuple(resolve_frame(folder, n) for n in names)
        loader = self._loader(paths) if self.mask_path.is_file() else None
        return VideoSample(dataset=self.name, video_id=video_id, frame_paths=paths,
                           frame_names=names, expressions=tuple(expressions),
                           mask_loader=loader, fps=self.fps)

    def _loader(self, paths: tuple[Path, ...]):
        """Mask loader: decode ``mask_dict[anno_id][t]``; null = object absent (empty mask)."""
        shape: list[tuple[int, int]] = []
        num_frames = len(paths)

        def load(t: int, object_id: str) -> np.ndarray | None:
            per_frame = self._masks().get(object_id)
            if per_frame is None:
                raise DatasetError(f"mevis {self.split}: anno_id {object_id} not in "
                                   f"{self.mask_path.name}")
            if len(per_frame) != num_frames:
                raise DatasetError(f"mevis {self.split}: anno_id {object_id} has "
                                   f"{len(per_frame)} masks for {num_frames} frames")
            rle = per_frame[t]
            if rle:
                mask = decode_rle(rle)
                if not shape:
                    shape.append(mask.shape)
                return mask
            if not shape:
                sizes = [r["size"] for r in per_frame if r]
                shape.append(tuple(int(v) for v in sizes[0]) if sizes else image_size(paths[t]))
            return np.zeros(shape[0], dtype=bool)

        return load
