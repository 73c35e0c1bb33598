"""Point labels from ground-truth masks (VideoMolmo paper, Sec. 4, Eq. 7-8).

For one object mask m on one frame:

1. Candidates: ``k`` distinct mask pixels drawn without replacement with probability
   proportional to their Euclidean distance to the nearest boundary pixel of m (Eq. 7). The
   boundary is the set of mask pixels with a 4-neighbour outside the mask; the image border
   counts as outside (as in ``Scene.points_for``), so points hug no edge. Masks so thin that every
   pixel is boundary fall back to uniform sampling over the mask.
2. Each candidate prompts the segmenter (any ``Segmenter`` backend: classical or SAM2) on its
   own; all candidates of all objects of a frame go in one ``tracker.prompt`` call, one query
   id per candidate, so a backend encodes the frame once.
3. The label is the candidate whose mask has the highest IoU with m (Eq. 8); ties go to the
   deeper candidate (larger boundary distance), then to the earlier draw.

Draws are seeded per (seed, object, frame), so a label does not depend on which other objects
or frames are annotated, nor in which order.

CLI: ``python -m videomolmo_ros.data.annotate DIR --out labels.json`` reads a scene exported by
``python -m videomolmo_ros.data.synthetic --out DIR`` (``frames/NNNN.png``,
``masks/object_II/NNNN.png``, ``scene.json``) and writes ``{"scenes": [...]}``, per scene and
object one entry per annotated frame: the chosen point (pixels) and the IoU of its mask, or null
where the object is not visible.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.masks import mask_iou
from videomolmo_ros.segment.base import Segmenter

DEFAULT_CANDIDATES = 10
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass(frozen=True)
class PointLabel:
    """The chosen point of one object on one frame.

    x, y: pixel column and row. iou: IoU of the segmenter's mask for it with the GT mask.
    candidates: (k, 2) int array of all candidates tried (x, y), in draw order.
    ious: (k,) IoU of each candidate's mask.
    """

    x: int
    y: int
    iou: float
    candidates: np.ndarray
    ious: np.ndarray

    def to_json(self) -> dict:
        return {"x": self.x, "y": self.y, "iou": round(float(self.iou), 4)}


def boundary_distance(mask: np.ndarray) -> np.ndarray:
    """H x W float32: for mask pixels, the distance to the nearest boundary pixel (Eq. 7);
    0 on the boundary and outside the mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got {mask.shape}")
    padded = np.pad(mask.astype(np.uint8), 1)  # the image border counts as outside
    inner = cv2.erode(padded, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    boundary = (padded > 0) & (inner == 0)
    if not boundary.any():
        return np.zeros(mask.shape, np.float32)
    # distanceTransform measures the distance to the nearest zero pixel: make the boundary zero.
    distance = cv2.distanceTransform((~boundary).astype(np.uint8), cv2.DIST_L2,
                                     cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return np.where(mask, distance, 0.0).astype(np.float32)


def sample_candidates(mask: np.ndarray, num_candidates: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(k, 2) int64 distinct (x, y) mask pixels drawn with P proportional to the boundary
    distance; k = min(num_candidates, eligible pixels); (0, 2) for an empty mask."""
    if num_candidates < 1:
        raise ValueError("num_candidates must be at least 1")
    weights = boundary_distance(mask).reshape(-1).astype(np.float64)
    eligible = np.flatnonzero(weights > 0)
    if eligible.size == 0:  # empty, or every pixel is boundary (1-2 px thin): uniform
        eligible = np.flatnonzero(np.asarray(mask, dtype=bool).reshape(-1))
        if eligible.size == 0:
            return np.zeros((0, 2), np.int64)
        weights = np.ones(weights.shape, np.float64)
    p = weights[eligible] / weights[eligible].sum()
    chosen = rng.choice(eligible, size=min(num_candidates, eligible.size), replace=False, p=p)
    rows, cols = np.divmod(chosen, mask.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.int64)


def label_seed(seed: int, object_id: int, frame_index: int) -> np.random.Generator:
    """The generator for one (object, frame): independent of what else is annotated."""
    return np.random.default_rng([int(seed), int(object_id), int(frame_index)])


def annotate_frame(segmenter: Segmenter, frame: Frame, masks: Mapping[int, np.ndarray],
                   num_candidates: int = DEFAULT_CANDIDATES,
                   seed: int = 0) -> dict[int, PointLabel | None]:
    """Object id -> its best point on ``frame`` (None for an empty mask), per Eq. 7-8.

    masks: object id -> H x W bool GT mask of that object on ``frame``. One ``prompt`` call on
    a fresh tracker carries every candidate of every object (one query id per candidate).
    """
    candidates: dict[int, np.ndarray] = {}
    for object_id, mask in masks.items():
        if np.asarray(mask).shape != frame.image.shape[:2]:
            raise ValueError(f"mask of object {object_id} is {np.asarray(mask).shape}, "
                             f"the frame {frame.image.shape[:2]}")
        candidates[object_id] = sample_candidates(
            mask, num_candidates, label_seed(seed, object_id, frame.index))
    queries: dict[int, np.ndarray] = {}
    owners: dict[int, tuple[int, int]] = {}  # query id -> (object id, candidate index)
    for object_id, points in candidates.items():
        for i, point in enumerate(points):
            owners[len(queries)] = (object_id, i)
            queries[len(queries)] = point[None].astype(np.float64)  # (1, 2) x, y
    predicted = segmenter.new_tracker().prompt(frame, queries) if queries else {}
    labels: dict[int, PointLabel | None] = {}
    for object_id, mask in masks.items():
        points = candidates[object_id]
        if len(points) == 0:
            labels[object_id] = None
            continue
        ious = np.zeros(len(points), np.float64)
        for qid, (owner, i) in owners.items():
            if owner == object_id:
                ious[i] = mask_iou(predicted.get(qid, np.zeros_like(mask, bool)), mask)
        depth = boundary_distance(mask)[points[:, 1], points[:, 0]]
        # Highest IoU; ties -> deeper point; then earlier draw (lexsort: last key is primary).
        best = int(np.lexsort((np.arange(len(points)), -depth, -ious))[0])
        labels[object_id] = PointLabel(int(points[best, 0]), int(points[best, 1]),
                                       float(ious[best]), points, ious)
    return labels


# ------------------------------------------------------------------------------ dataset on disk
def read_scene_dir(directory: Path) -> tuple[list[Path], dict[int, Path]]:
    """Frame files (sorted) and object id -> mask folder of an exported scene."""
    directory = Path(directory)
    frames = sorted((directory / "frames").glob("*.png"))
    if not frames:
        raise FileNotFoundError(f"no frames/*.png under {directory}")
    objects: dict[int, Path] = {}
    for folder in sorted((directory / "masks").glob("object_*")):
        objects[int(folder.name.split("_", 1)[1])] = folder
    if not objects:
        raise FileNotFoundError(f"no masks/object_* folders under {directory}")
    return frames, objects


def annotate_scene_dir(directory: Path, segmenter: Segmenter,
                       num_candidates: int = DEFAULT_CANDIDATES, seed: int = 0,
                       frame_step: int = 1) -> dict:
    """Point labels for every object on every ``frame_step``-th frame of an exported scene.

    Returns a JSON-ready dict: ``{"frames": [names], "objects": {"<id>": [label or null per
    frame]}, ...}``, labels as ``{"x", "y", "iou"}`` in pixels.
    """
    directory = Path(directory)
    frame_files, objects = read_scene_dir(directory)
    stamps: list[int] | None = None
    meta = directory / "scene.json"
    if meta.is_file():
        stamps = json.loads(meta.read_text()).get("stamps_ns")
    out_frames: list[str] = []
    per_object: dict[str, list[dict | None]] = {str(i): [] for i in objects}
    for t in range(0, len(frame_files), max(1, frame_step)):
        path = frame_files[t]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read {path}")
        stamp = int(stamps[t]) if stamps and t < len(stamps) else t
        frame = Frame("annotate", t, stamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        masks = {}
        for object_id, folder in objects.items():
            gray = cv2.imread(str(folder / path.name), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise OSError(f"cannot read {folder / path.name}")
            masks[object_id] = gray > 127
        labels = annotate_frame(segmenter, frame, masks, num_candidates, seed)
        out_frames.append(path.name)
        for object_id, label in labels.items():
            per_object[str(object_id)].append(None if label is None else label.to_json())
    return {
        "source": directory.name,
        "segmenter": getattr(segmenter, "name", type(segmenter).__name__),
        "num_candidates": num_candidates,
        "seed": seed,
        "frames": out_frames,
        "objects": per_object,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: annotate one or more exported scenes into one JSON file."""
    from videomolmo_ros.backends import SEGMENTERS, make_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenes", nargs="+", type=Path, help="scene directories (synthetic export)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument("--segmenter", default="classical", choices=SEGMENTERS)
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES,
                        help="candidate points per object and frame (k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame-step", type=int, default=1, help="annotate every n-th frame")
    args = parser.parse_args(argv)
    segmenter = make_segmenter(args.segmenter)
    results = []
    for directory in args.scenes:
        result = annotate_scene_dir(directory, segmenter, args.candidates, args.seed,
                                    args.frame_step)
        ious = [p["iou"] for labels in result["objects"].values() for p in labels if p]
        print(f"{directory}: {len(result['frames'])} frames, {len(result['objects'])} objects, "
              f"{len(ious)} points, mean IoU {np.mean(ious) if ious else float('nan'):.3f}")
        results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scenes": results}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
