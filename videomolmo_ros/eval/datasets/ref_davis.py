"""Ref-DAVIS-17 (Khoreva et al. 2018): DAVIS-2017 videos with referring expressions.

Two published layouts are read; the root decides which.

1. ReferFormer's converted layout (``tools/data/convert_davis_to_ytvos.py``, used by ReferFormer,
   VISA and VideoLISA), the Ref-YouTube-VOS layout with ``valid`` = DAVIS ``val``::

       ROOT/meta_expressions/valid/meta_expressions.json
       ROOT/valid/JPEGImages/<video>/00000.jpg
       ROOT/valid/Annotations/<video>/00000.png      palette PNG (DAVIS Annotations_unsupervised)

2. The original downloads unpacked side by side (``DAVIS-2017-Unsupervised-trainval-480p.zip``
   and ``davis_text_annotations.zip``)::

       ROOT/DAVIS/ImageSets/2017/{train,val}.txt
       ROOT/DAVIS/JPEGImages/480p/<video>/00000.jpg
       ROOT/DAVIS/Annotations_unsupervised/480p/<video>/00000.png
       ROOT/davis_text_annotations/Davis17_annot{1,2}.txt             (first-frame expressions)
       ROOT/davis_text_annotations/Davis17_annot{1,2}_full_video.txt  (full-video expressions)

   A text line is ``<video> <object id> "<expression>"``; annotator 2's files are latin-1. Three
   video names in them differ from DAVIS' (clasic-car, dog-scale, motor-bike), fixed here as
   ReferFormer does. Expressions get ReferFormer's ids: per object (sorted by id), annotator 1
   first-frame, annotator 1 full-video, annotator 2 first-frame, annotator 2 full-video, so ids
   0..4N-1 match the converted layout.

The object id of an expression is the palette index in the ``Annotations_unsupervised`` masks
(255 is DAVIS' void label and belongs to no object). Frames: 24 fps.
"""
from __future__ import annotations

from pathlib import Path

from videomolmo_ros.eval.datasets.base import (DatasetError, Expression, VideoDataset,
                                               VideoSample, list_frames, require_dir,
                                               require_file)
from videomolmo_ros.eval.datasets.ref_youtube_vos import YTVOSFormatDataset, palette_mask_loader

_TEXT_FILES = (  # (file, encoding, annotator, kind), in ReferFormer's interleaving order
    ("Davis17_annot1.txt", "utf-8", "1", "first_frame"),
    ("Davis17_annot1_full_video.txt", "utf-8", "1", "full_video"),
    ("Davis17_annot2.txt", "latin-1", "2", "first_frame"),
    ("Davis17_annot2_full_video.txt", "latin-1", "2", "full_video"),
)
_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
_SPLIT_ALIASES = {"valid": "val", "val": "val", "train": "train"}


def open_ref_davis(root: str | Path, split: str | None = None) -> VideoDataset:
    """The Ref-DAVIS-17 reader for whichever layout ``root`` holds (default split: val)."""
    root = Path(root)
    if (root / "meta_expressions").is_dir():
        converted = {"val": "valid", "valid": "valid", "train": "train"}
        return RefDavisConverted(root, converted.get(split or "valid", split or "valid"))
    if (root / "DAVIS").is_dir():
        return RefDavisRaw(root, split or "val")
    raise DatasetError(f"ref-davis17: {root} holds neither meta_expressions/ (ReferFormer's "
                       "converted layout) nor DAVIS/ + davis_text_annotations/ (the original "
                       "downloads)")


class RefDavisConverted(YTVOSFormatDataset):
    """Ref-DAVIS-17 in ReferFormer's Ref-YouTube-VOS-style layout."""

    name = "ref-davis17"
    fps = 24.0


class RefDavisRaw(VideoDataset):
    """Ref-DAVIS-17 from the original DAVIS-2017 and text-annotation downloads."""

    name = "ref-davis17"
    fps = 24.0

    def __init__(self, root: str | Path, split: str = "val") -> None:
        self.root = Path(root)
        if split not in _SPLIT_ALIASES:
            raise DatasetError(f"ref-davis17: unknown split {split!r}; use train or val")
        self.split = _SPLIT_ALIASES[split]
        davis = self.root / "DAVIS"
        split_file = require_file(davis / "ImageSets" / "2017" / f"{self.split}.txt",
                                  "ref-davis17 split list")
        self.image_root = require_dir(davis / "JPEGImages" / "480p", "ref-davis17 frames")
        self.annotation_root = require_dir(davis / "Annotations_unsupervised" / "480p",
                                           "ref-davis17 unsupervised annotations")
        text_root = require_dir(self.root / "davis_text_annotations",
                                "ref-davis17 text annotations")
        self._ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        per_file = [_read_text_annotations(require_file(text_root / name, "ref-davis17 text"),
                                           encoding)
                    for name, encoding, _, _ in _TEXT_FILES]
        self._expressions: dict[str, tuple[Expression, ...]] = {}
        for video in self._ids:
            lists = [entries.get(video, []) for entries in per_file]
            expressions = []
            for rows in zip(*lists):  # one row per object: its four expressions
                for (object_id, text), (_, _, annotator, kind) in zip(rows, _TEXT_FILES):
                    expressions.append(Expression(
                        exp_id=str(len(expressions)), text=text, object_ids=(object_id,),
                        extra={"annotator": annotator, "kind": kind}))
            self._expressions[video] = tuple(expressions)

    def video_ids(self) -> list[str]:
        return list(self._ids)

    def sample(self, video_id: str) -> VideoSample:
        if video_id not in self._expressions:
            raise DatasetError(f"ref-davis17 {self.split}: no video {video_id!r}")
        paths = tuple(list_frames(require_dir(self.image_root / video_id,
                                              f"ref-davis17 frames of {video_id}")))
        names = tuple(p.stem for p in paths)
        annotations = self.annotation_root / video_id
        loader = palette_mask_loader(annotations, names) if annotations.is_dir() else None
        return VideoSample(dataset=self.name, video_id=video_id, frame_paths=paths,
                           frame_names=names, expressions=self._expressions[video_id],
                           mask_loader=loader, fps=self.fps)


def _read_text_annotations(path: Path, encoding: str) -> dict[str, list[tuple[str, str]]]:
    """video -> [(object id, expression)] sorted by object id, from one Davis17_annot file."""
    videos: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text(encoding=encoding).splitlines():
        parts = line.strip().split(maxsplit=2)
        if len(parts) < 3:
            continue
        video, object_id, text = parts
        video = _NAME_FIXES.get(video, video)
        text = text.strip()
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            text = text[1:-1]
        videos.setdefault(video, []).append((object_id, text))
    for entries in videos.values():
        entries.sort(key=lambda entry: int(entry[0]) if entry[0].isdigit() else entry[0])
    return videos
