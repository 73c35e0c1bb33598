"""The common sample API of all dataset readers, and the image/mask file helpers they share.

A reader lists video ids cheaply and builds one ``VideoSample`` at a time. A sample holds paths
and expression metadata only: frames and masks are read from disk when asked for, one frame at
a time, so no reader ever holds a whole dataset (or a whole video) in memory.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# (frame index, object id) -> H x W bool mask, or None when that frame has no annotation.
MaskLoader = Callable[[int, str], "np.ndarray | None"]


class DatasetError(ValueError):
    """The dataset root does not hold the expected layout; the text says what is missing."""


@dataclass(frozen=True)
class Expression:
    """One referring expression of a video.

    exp_id: the dataset's id, unique within the video (the name its predicted masks get in a
    submission). object_ids: the objects it refers to, as keys of ``VideoSample.object_mask``
    (several for MeViS' multi-object expressions, none when the split has no ground truth).
    points: annotated points per frame index, pixel (x, y) (VPoS-Bench). counting: the
    expression asks for a count, scored with EMA/MAE; count: a fixed ground-truth count, when
    the dataset gives one (otherwise the number of visible objects on each keyframe).
    extra: other fields of the annotation, kept for reports (annotator, source, kind, ...).
    """

    exp_id: str
    text: str
    object_ids: tuple[str, ...] = ()
    points: Mapping[int, tuple[tuple[float, float], ...]] | None = None
    counting: bool = False
    count: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class VideoSample:
    """One video: frame paths, expressions, and lazy access to ground-truth masks.

    frame_names: the dataset's frame names (file stems), used to name saved masks.
    mask_loader: reads one object's mask on one frame; None when the split has no ground truth.
    fps: nominal frame rate, only used to give frames stamps for the streaming engine.
    group: a sub-benchmark the video belongs to (VPoS-Bench subset, ReasonVOS source), or "".
    """

    dataset: str
    video_id: str
    frame_paths: tuple[Path, ...]
    frame_names: tuple[str, ...]
    expressions: tuple[Expression, ...]
    mask_loader: MaskLoader | None = None
    fps: float = 30.0
    group: str = ""

    def __post_init__(self) -> None:
        if len(self.frame_paths) != len(self.frame_names):
            raise ValueError(f"{self.video_id}: {len(self.frame_paths)} frame paths but "
                             f"{len(self.frame_names)} frame names")

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def has_masks(self) -> bool:
        """Whether ground-truth masks can be read (False for test/valid splits without GT)."""
        return self.mask_loader is not None

    def frame(self, t: int) -> np.ndarray:
        """Frame t as H x W x 3 uint8 RGB, read from disk."""
        return read_rgb(self.frame_paths[t])

    def object_mask(self, t: int, object_id: str) -> np.ndarray | None:
        """H x W bool mask of one object on frame t; None if frame t is not annotated."""
        if self.mask_loader is None:
            return None
        return self.mask_loader(t, object_id)

    def expression_mask(self, t: int, expression: Expression) -> np.ndarray | None:
        """Union of the expression's object masks on frame t (what J and F are scored on);
        None if frame t is not annotated. An expression without objects gets an empty mask."""
        masks = [self.object_mask(t, object_id) for object_id in expression.object_ids]
        if any(mask is None for mask in masks) or self.mask_loader is None:
            return None
        if not masks:
            height, width = self.frame_shape(t)
            return np.zeros((height, width), dtype=bool)
        out = masks[0].copy()
        for mask in masks[1:]:
            out |= mask
        return out

    def frame_shape(self, t: int) -> tuple[int, int]:
        """(H, W) of frame t, from the image header (no decode)."""
        return image_size(self.frame_paths[t])

    def stamp_ns(self, t: int) -> int:
        """Stamp of frame t for the streaming engine: t / fps seconds, in nanoseconds."""
        return int(math.floor(t * 1e9 / self.fps + 0.5))

    def index_for_stamp(self, stamp_ns: int) -> int | None:
        """Frame index of a stamp made by ``stamp_ns`` (None outside the video)."""
        t = int(math.floor(stamp_ns * self.fps / 1e9 + 0.5))
        return t if 0 <= t < self.num_frames else None


class VideoDataset(ABC):
    """A split of a dataset: cheap listing of video ids, one ``VideoSample`` at a time."""

    name: str = "dataset"

    @abstractmethod
    def video_ids(self) -> list[str]:
        """The videos of the split, in a stable order."""

    @abstractmethod
    def sample(self, video_id: str) -> VideoSample:
        """The sample of one video (paths and metadata only; nothing is decoded)."""

    def __len__(self) -> int:
        return len(self.video_ids())

    def __iter__(self) -> Iterator[VideoSample]:
        for video_id in self.video_ids():
            yield self.sample(video_id)


# ----------------------------------------------------------------------------- file helpers

def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else DatasetError naming ``what``."""
    if not path.is_dir():
        raise DatasetError(f"{what}: directory {path} not found")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else DatasetError naming ``what``."""
    if not path.is_file():
        raise DatasetError(f"{what}: file {path} not found")
    return path


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB; FileNotFoundError if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (Pillow reads no pixels for this)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as error:
        raise FileNotFoundError(f"cannot read image {path}: {error}") from error
    return height, width


def read_label_png(path: Path) -> np.ndarray | None:
    """An index-valued PNG (DAVIS / YouTube-VOS palette annotations) as H x W integer labels.

    The palette index is the object id; OpenCV would expand the palette to colours, so this
    uses Pillow. Greyscale PNGs are read as their grey values. None if the file is missing.
    """
    if not path.is_file():
        return None
    from PIL import Image  # Pillow ships with the SAM2 requirements; only needed here

    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise DatasetError(f"{path}: expected a palette or greyscale label PNG, got mode "
                               f"{image.mode!r}")
        return np.asarray(image).astype(np.int32)


def read_binary_png(path: Path) -> np.ndarray | None:
    """A mask PNG as H x W bool (nonzero = object, as the DAVIS toolkit reads it); None if the
    file is missing."""
    if not path.is_file():
        return None
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"cannot read mask {path}")
    return image > 0


def resolve_frame(folder: Path, name: str) -> Path:
    """The image file of frame ``name`` in ``folder``: the name itself if it has an image
    extension, else the first of name.jpg / .jpeg / .png / .bmp that exists (name.jpg if none)."""
    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        return folder / name
    for extension in IMAGE_EXTENSIONS:
        candidate = folder / f"{name}{extension}"
        if candidate.is_file():
            return candidate
    return folder / f"{name}.jpg"


def list_frames(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def frame_stem(name: str) -> str:
    """A frame name without its image extension."""
    path = Path(name)
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else name


class LabelMapCache:
    """The last few label maps read, so that the objects of one frame share one PNG decode.

    Bounded (``size`` frames) so memory does not grow with the video.
    """

    def __init__(self, reader: Callable[[Path], "np.ndarray | None"], size: int = 4) -> None:
        self.reader = reader
        self.size = size
        self._items: dict[Path, np.ndarray | None] = {}

    def get(self, path: Path) -> np.ndarray | None:
        if path in self._items:
            value = self._items.pop(path)
        else:
            value = self.reader(path)
        self._items[path] = value
        while len(self._items) > self.size:
            self._items.pop(next(iter(self._items)))
        return value


def sorted_ids(ids: Sequence[str]) -> list[str]:
    """Ids in natural order: numeric ones by value, then the rest alphabetically."""
    return sorted(ids, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
