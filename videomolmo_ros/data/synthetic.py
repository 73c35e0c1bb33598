"""Synthetic referring-video scenes: moving shapes, exact visible masks, true expressions.

A scene is a short clip of coloured, textured shapes on a noisy background. Objects stay still
or move at constant velocity, pass in front of each other (ground-truth masks are the VISIBLE
parts) and may enter or leave the image. Each referring expression is checked against the
ground truth so that it is true and unambiguous on every frame: resolved on any single frame
(plus a few frames of history for motion), it names exactly the listed objects that are
visible there, and nothing else. It feeds tests, the demo, benchmarks and training, so the
language is kept small and regular. Everything follows from ``np.random.default_rng(seed)``.

CLI: ``python -m videomolmo_ros.data.synthetic --seed 3 --out DIR`` writes frames, per-object
masks and a JSON of objects and expressions into DIR.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.masks import deepest_point
from videomolmo_ros.core.points import Point

# Saturated, well-separated colours; the background stays muted so none of them appear there.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 175, 60),
    "blue": (40, 85, 230),
    "yellow": (240, 215, 40),
    "purple": (145, 55, 195),
    "orange": (250, 135, 25),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "large")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
MOTIONS: tuple[str, ...] = ("static", "left", "right", "up", "down")
KINDS: tuple[str, ...] = ("attribute", "spatial", "motion", "counting")

_DIRECTIONS: dict[str, tuple[float, float]] = {
    "static": (0.0, 0.0), "left": (-1.0, 0.0), "right": (1.0, 0.0),
    "up": (0.0, -1.0), "down": (0.0, 1.0),
}
_RADIUS_RANGE: dict[str, tuple[float, float]] = {"small": (11.0, 15.0), "large": (22.0, 28.0)}
_SHAPE_EXTENT = 1.2  # sprites reach at most this many radii from the centre (triangle, star)
_MAX_ATTEMPTS = 20
_ATTRIBUTE_KEYS: tuple[str, ...] = ("size", "texture", "color", "shape")


@dataclass(frozen=True)
class SceneConfig:
    """What to generate. Sizes and speeds are given for 320x240 and scale with the image."""

    width: int = 320
    height: int = 240
    num_frames: int = 48
    fps: float = 10.0
    num_objects: tuple[int, int] = (3, 6)  # inclusive range
    seed: int = 0
    static_prob: float = 0.4
    speed_range: tuple[float, float] = (1.5, 4.5)  # pixels per frame at width 320
    brightness_amplitude: float = 0.12  # slow global gain change, +- this fraction at most
    noise_level: int = 6  # per-pixel uniform noise, +- grey levels
    relation_margin: float = 0.05  # fraction of width/height that counts as "clearly left of"
    max_expressions_per_kind: int = 10
    # chance that an object copies the colour and shape of an earlier one and moves unlike it:
    # then only motion (or position) tells the two apart, so motion words must be read
    twin_prob: float = 0.0


@dataclass(frozen=True)
class ObjectSpec:
    """One object to place: appearance, motion and where its centre is on frame 0 (pixels).

    ``radius`` None draws one from the size class; larger ``depth`` is nearer the camera
    (drawn later, hides what is behind it); ties go to the later object.
    """

    color: str
    shape: str
    size: str
    texture: str
    motion: str
    start: tuple[float, float]
    speed: float = 0.0
    radius: float | None = None
    depth: int = 0


@dataclass(frozen=True, eq=False)
class SceneObject:
    """A placed object. ``centers`` (T x 2, x and y) may lie outside the image.

    ``depth`` is the rank in drawing order: 0 is farthest, num_objects - 1 nearest.
    """

    object_id: int
    color: str
    shape: str
    size: str
    texture: str
    motion: str
    speed: float
    radius: float
    depth: int
    centers: np.ndarray = field(repr=False)

    def to_json(self) -> dict:
        """Metadata for the JSON export (centres rounded to 0.01 px)."""
        data = {k: v for k, v in asdict(self).items() if k != "centers"}
        data["centers"] = np.round(self.centers, 2).tolist()
        return data


@dataclass(frozen=True)
class Expression:
    """A referring expression that is true of exactly ``object_ids`` (empty for zero counts)."""

    text: str
    kind: str
    object_ids: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class _Sprite:
    """Pre-drawn appearance of an object: RGB and mask on a square of side 2 * half + 1."""

    rgb: np.ndarray
    mask: np.ndarray
    half: int


@dataclass(eq=False)
class Scene:
    """A generated clip with its ground truth.

    frames: T x H x W x 3 uint8 RGB. masks: T x N x H x W bool, the visible part of each object
    (empty when it is out of the image or fully hidden). objects[i].object_id == i.
    """

    config: SceneConfig
    frames: np.ndarray
    masks: np.ndarray
    objects: list[SceneObject]
    expressions: list[Expression]
    _sprites: list[_Sprite] = field(repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def stamp_ns(self, t: int) -> int:
        """Stamp of frame t: t * 1e9 / fps, rounded to integer nanoseconds."""
        return int(math.floor(t * 1e9 / self.config.fps + 0.5))

    def frame_index_for_stamp(self, stamp_ns: int) -> int | None:
        """Nearest frame index for a stamp, or None when that index is outside the video."""
        t = int(math.floor(stamp_ns * self.config.fps / 1e9 + 0.5))
        return t if 0 <= t < self.num_frames else None

    def frame(self, t: int, camera: str = "synthetic") -> Frame:
        """Frame t as the streaming engine sees it."""
        return Frame(camera=camera, index=t, stamp_ns=self.stamp_ns(t), image=self.frames[t])

    def visibility(self) -> np.ndarray:
        """T x N bool: whether any pixel of each object is visible on each frame."""
        return self.masks.any(axis=(2, 3))

    def amodal_mask(self, t: int, object_id: int) -> np.ndarray:
        """Full shape of an object on frame t, occluded parts included, clipped to the image."""
        out = np.zeros((self.height, self.width), dtype=bool)
        sprite = self._sprites[object_id]
        box = _paste_box(self.objects[object_id].centers[t], sprite.half, self.width, self.height)
        if box is not None:
            dst, src = box
            out[dst] = sprite.mask[src]
        return out

    def expressions_of_kind(self, kind: str) -> list[Expression]:
        """The expressions of one kind ("attribute", "spatial", "motion" or "counting")."""
        return [e for e in self.expressions if e.kind == kind]

    def find_expression(self, text: str) -> Expression | None:
        """The expression with this text (compared after strip and lower-casing), if any."""
        key = text.strip().lower()
        return next((e for e in self.expressions if e.text == key), None)

    def points_for(self, object_ids: Iterable[int], t: int, label: str = "") -> list[Point]:
        """One ground-truth point per object visible on frame t, in the order given.

        The point is the mask pixel farthest from the mask boundary (the image border counts
        as boundary); ties go to the first pixel in row-major order. x is the column, y the row.
        """
        points = []
        for object_id in object_ids:
            center = deepest_point(self.masks[t, object_id])
            if center is not None:
                points.append(Point(x=float(center[0]), y=float(center[1]), label=label))
        return points

    def to_json(self) -> dict:
        """Config, objects, expressions and frame stamps, for export."""
        config = asdict(self.config)
        return {
            "config": config,
            "objects": [o.to_json() for o in self.objects],
            "expressions": [asdict(e) for e in self.expressions],
            "stamps_ns": [self.stamp_ns(t) for t in range(self.num_frames)],
        }


def generate_scene(seed: int = 0, **overrides) -> Scene:
    """Shortcut: ``make_scene(SceneConfig(seed=seed, **overrides))``."""
    return make_scene(SceneConfig(seed=seed, **overrides))


def make_scene(config: SceneConfig = SceneConfig(),
               objects: Sequence[ObjectSpec] | None = None) -> Scene:
    """Generate a scene; deterministic in ``config`` (and ``objects`` when given).

    Without ``objects`` they are drawn at random and redrawn until every object is clearly
    visible on some frames. With ``objects`` they are used as given (handy for tests).
    """
    rng = np.random.default_rng(config.seed)
    for _ in range(_MAX_ATTEMPTS):
        specs = list(objects) if objects is not None else _sample_specs(config, rng)
        placed = _place(specs, config)
        sprites = [_make_sprite(o.shape, o.radius, o.color, o.texture) for o in placed]
        labels = _label_maps(placed, sprites, config)
        if objects is not None or _clearly_visible(labels, sprites, len(placed)):
            break
    background = _background(config, rng)
    frames = _render(placed, sprites, background, config, rng)
    masks = labels[:, None] == np.arange(len(placed), dtype=labels.dtype)[None, :, None, None]
    expressions = build_expressions(placed, masks.any(axis=(2, 3)), config, rng)
    return Scene(config=config, frames=frames, masks=masks, objects=placed,
                 expressions=expressions, _sprites=sprites)


# --------------------------------------------------------------------------- objects


def _sample_specs(config: SceneConfig, rng: np.random.Generator) -> list[ObjectSpec]:
    """Random objects; static ones do not overlap each other (no permanent occlusion)."""
    lo, hi = config.num_objects
    count = int(rng.integers(lo, hi + 1))
    scale = min(config.width, config.height) / 240.0
    depths = rng.permutation(count)
    color_names = list(COLORS)
    specs: list[ObjectSpec] = []
    statics: list[tuple[float, float, float]] = []
    for i in range(count):
        color = color_names[int(rng.integers(len(color_names)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        radius = float(rng.uniform(*_RADIUS_RANGE[size])) * scale
        if specs and config.twin_prob > 0 and rng.random() < config.twin_prob:
            twin_of = specs[int(rng.integers(len(specs)))]
            color, shape = twin_of.color, twin_of.shape
            motion = _unlike(twin_of.motion, rng)
        elif rng.random() < config.static_prob:
            motion = "static"
        else:
            motion = ("left", "right", "up", "down")[int(rng.integers(4))]
        if motion == "static":
            speed = 0.0
            start = _static_start(radius, statics, config, rng)
            statics.append((start[0], start[1], radius))
        else:
            speed = float(rng.uniform(*config.speed_range)) * config.width / 320.0
            start = _moving_start(motion, speed, radius, config, rng)
        specs.append(ObjectSpec(color=color, shape=shape, size=size, texture=texture,
                                motion=motion, start=start, speed=speed, radius=radius,
                                depth=int(depths[i])))
    return specs


def _unlike(motion: str, rng: np.random.Generator) -> str:
    """A motion other than ``motion``: any direction for a static one; for a moving one, static
    half of the time, else one of the three other directions."""
    directions = [m for m in MOTIONS[1:] if m != motion]
    choices = directions if motion == "static" else ["static"] * 3 + directions
    return choices[int(rng.integers(len(choices)))]


def _static_start(radius: float, statics: list[tuple[float, float, float]],
                  config: SceneConfig, rng: np.random.Generator) -> tuple[float, float]:
    """A position fully inside the image, away from the static objects placed so far."""
    reach = _SHAPE_EXTENT * radius
    x = y = 0.0
    for _ in range(50):
        x = float(rng.uniform(reach + 2, config.width - reach - 2))
        y = float(rng.uniform(reach + 2, config.height - reach - 2))
        if all(math.hypot(x - sx, y - sy) > _SHAPE_EXTENT * (radius + sr) + 4
               for sx, sy, sr in statics):
            break
    return x, y


def _moving_start(motion: str, speed: float, radius: float, config: SceneConfig,
                  rng: np.random.Generator) -> tuple[float, float]:
    """Frame-0 centre such that the centre is inside the image for at least a quarter of
    the clip; positions near and beyond the border make objects enter and leave."""
    dx, dy = _DIRECTIONS[motion]
    frames = config.num_frames
    steps = np.arange(frames)
    reach = _SHAPE_EXTENT * radius
    along_x = dx != 0
    length = config.width if along_x else config.height
    across = config.height if along_x else config.width
    direction = dx if along_x else dy
    for _ in range(50):
        middle = float(rng.uniform(-0.25 * length, 1.25 * length))
        first = middle - direction * speed * (frames - 1) / 2.0
        path = first + direction * speed * steps
        if np.count_nonzero((path >= 0) & (path < length)) >= max(1, frames // 4):
            break
    other = float(rng.uniform(reach, across - reach))
    return (first, other) if along_x else (other, first)


def _place(specs: Sequence[ObjectSpec], config: SceneConfig) -> list[SceneObject]:
    """Trajectories and depth ranks for the specs (ids follow their order)."""
    scale = min(config.width, config.height) / 240.0
    order = sorted(range(len(specs)), key=lambda i: (specs[i].depth, i))
    rank = {index: r for r, index in enumerate(order)}
    steps = np.arange(config.num_frames, dtype=np.float64)[:, None]
    placed = []
    for i, spec in enumerate(specs):
        _check_spec(spec)
        radius = spec.radius if spec.radius is not None else \
            float(np.mean(_RADIUS_RANGE[spec.size])) * scale
        velocity = np.array(_DIRECTIONS[spec.motion]) * spec.speed
        centers = np.array(spec.start, dtype=np.float64)[None, :] + steps * velocity[None, :]
        placed.append(SceneObject(object_id=i, color=spec.color, shape=spec.shape,
                                  size=spec.size, texture=spec.texture, motion=spec.motion,
                                  speed=float(spec.speed), radius=float(radius),
                                  depth=rank[i], centers=centers))
    return placed


def _check_spec(spec: ObjectSpec) -> None:
    """Reject attribute values the expression grammar does not know."""
    for value, allowed in ((spec.color, tuple(COLORS)), (spec.shape, SHAPES),
                           (spec.size, SIZES), (spec.texture, TEXTURES),
                           (spec.motion, MOTIONS)):
        if value not in allowed:
            raise ValueError(f"unknown value {value!r}; expected one of {allowed}")


# --------------------------------------------------------------------------- drawing


def _make_sprite(shape: str, radius: float, color: str, texture: str) -> _Sprite:
    """Draw one object (shape mask, colour, texture) once; frames paste it where it is."""
    half = int(math.ceil(_SHAPE_EXTENT * radius)) + 1
    side = 2 * half + 1
    mask = np.zeros((side, side), dtype=np.uint8)
    c = half
    if shape == "circle":
        cv2.circle(mask, (c, c), int(round(radius)), 1, -1)
    elif shape == "square":
        h = int(round(0.85 * radius))
        cv2.rectangle(mask, (c - h, c - h), (c + h, c + h), 1, -1)
    elif shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        r = _SHAPE_EXTENT * radius
        cv2.fillPoly(mask, [_polygon(c, r * np.ones(3), angles)], 1)
    elif shape == "star":
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, _SHAPE_EXTENT * radius, 0.5 * radius)
        cv2.fillPoly(mask, [_polygon(c, radii, angles)], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    yy, xx = np.mgrid[0:side, 0:side]
    if texture == "striped":
        period = max(3, int(round(radius / 3.0)))
        dark = ((xx + yy) // period) % 2 == 1
    elif texture == "dotted":
        spacing = max(7, int(round(radius / 2.0)))
        dot = max(1.5, 0.25 * spacing)
        ox = (xx - c + spacing // 2) % spacing - spacing // 2
        oy = (yy - c + spacing // 2) % spacing - spacing // 2
        dark = ox * ox + oy * oy <= dot * dot
    else:
        dark = np.zeros((side, side), dtype=bool)
    base = np.array(COLORS[color], dtype=np.float64)
    rgb = np.where(dark[..., None], base * 0.35, base).astype(np.uint8)
    mask_bool = mask.astype(bool)
    rgb[~mask_bool] = 0
    return _Sprite(rgb=rgb, mask=mask_bool, half=half)


def _polygon(c: int, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Integer polygon vertices around (c, c) for cv2.fillPoly."""
    xs = c + radii * np.cos(angles)
    ys = c + radii * np.sin(angles)
    return np.round(np.stack([xs, ys], axis=1)).astype(np.int32)


def _paste_box(center: np.ndarray, half: int, width: int,
               height: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Image and sprite slices where a sprite centred at ``center`` overlaps the image."""
    x0 = int(math.floor(center[0] + 0.5)) - half
    y0 = int(math.floor(center[1] + 0.5)) - half
    side = 2 * half + 1
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, width), min(y0 + side, height)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    dst = (slice(iy0, iy1), slice(ix0, ix1))
    src = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    return dst, src


def _label_maps(objects: Sequence[SceneObject], sprites: Sequence[_Sprite],
                config: SceneConfig) -> np.ndarray:
    """T x H x W int16: id of the visible object per pixel (-1 background), back to front."""
    labels = np.full((config.num_frames, config.height, config.width), -1, dtype=np.int16)
    order = sorted(range(len(objects)), key=lambda i: objects[i].depth)
    for t in range(config.num_frames):
        for i in order:
            box = _paste_box(objects[i].centers[t], sprites[i].half, config.width, config.height)
            if box is not None:
                dst, src = box
                labels[t][dst][sprites[i].mask[src]] = i
    return labels


def _clearly_visible(labels: np.ndarray, sprites: Sequence[_Sprite], count: int) -> bool:
    """Every object shows at least 30% of its area on at least a fifth of the frames."""
    frames = labels.shape[0]
    areas = np.stack([np.bincount(labels[t].ravel() + 1, minlength=count + 1)[1:]
                      for t in range(frames)])
    full = np.array([s.mask.sum() for s in sprites], dtype=np.float64)
    clear = areas >= 0.3 * full[None, :]
    return bool(np.all(clear.sum(axis=0) >= max(3, frames // 5)))


def _background(config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Muted, low-saturation texture: smooth blotches, fine grain and faint grey strokes."""
    h, w = config.height, config.width
    base = rng.uniform(85.0, 135.0) + rng.uniform(-10.0, 10.0, size=3)
    blotch = cv2.resize(rng.normal(0.0, 1.0, (5, 7)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC) * 22.0
    tint = cv2.resize(rng.normal(0.0, 1.0, (4, 5, 3)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC) * 6.0
    grain = cv2.resize(rng.normal(0.0, 1.0, (max(1, h // 5), max(1, w // 5))).astype(np.float32),
                       (w, h), interpolation=cv2.INTER_LINEAR) * 9.0
    image = base[None, None, :] + blotch[..., None] + tint + grain[..., None]
    strokes = np.zeros((h, w), dtype=np.float32)
    for _ in range(int(rng.integers(6, 14))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(strokes, p0, p1, float(rng.uniform(-30.0, 30.0)), int(rng.integers(1, 4)))
    strokes = cv2.GaussianBlur(strokes, (5, 5), 1.0)
    image += strokes[..., None]
    return np.clip(image, 0, 255).astype(np.float32)


def _render(objects: Sequence[SceneObject], sprites: Sequence[_Sprite], background: np.ndarray,
            config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Paint frames back to front, then apply the global gain and per-pixel noise."""
    frames_count = config.num_frames
    amplitude = float(rng.uniform(0.0, config.brightness_amplitude))
    phase = float(rng.uniform(0.0, 2.0 * math.pi))
    cycles = float(rng.uniform(0.3, 1.0))
    steps = np.arange(frames_count)
    gains = 1.0 + amplitude * np.sin(2.0 * math.pi * cycles * steps / frames_count + phase)
    order = sorted(range(len(objects)), key=lambda i: objects[i].depth)
    frames = np.empty((frames_count, config.height, config.width, 3), dtype=np.uint8)
    level = int(config.noise_level)
    for t in range(frames_count):
        canvas = background.copy()
        for i in order:
            box = _paste_box(objects[i].centers[t], sprites[i].half, config.width, config.height)
            if box is not None:
                dst, src = box
                sprite_mask = sprites[i].mask[src]
                canvas[dst][sprite_mask] = sprites[i].rgb[src][sprite_mask]
        canvas *= gains[t]
        if level > 0:
            canvas += rng.integers(-level, level + 1, size=canvas.shape, dtype=np.int16)
        frames[t] = np.clip(canvas, 0, 255).astype(np.uint8)
    return frames


# --------------------------------------------------------------------------- language

_REL_AXIS: dict[str, tuple[int, float]] = {  # relation -> (axis, sign): sign*(anchor - target)
    "left of": (0, 1.0), "right of": (0, -1.0), "above": (1, 1.0), "below": (1, -1.0),
}
_SUPERLATIVES: dict[str, tuple[int, float]] = {  # sign*(other - target) > margin
    "leftmost": (0, 1.0), "rightmost": (0, -1.0), "topmost": (1, 1.0), "bottommost": (1, -1.0),
}
_DESCRIPTORS: tuple[tuple[str, ...], ...] = ((), ("shape",), ("color",), ("color", "shape"))
SUPERLATIVES: tuple[str, ...] = tuple(_SUPERLATIVES)  # "the leftmost circle"; else a relation
RELATIONS: tuple[str, ...] = tuple(_REL_AXIS)  # "the star left of the red square"


def _matches(obj: SceneObject, constraints: dict[str, str]) -> bool:
    """Whether an object has every attribute in ``constraints`` ("moving" = not static)."""
    for key, value in constraints.items():
        if key == "motion" and value == "moving":
            if obj.motion == "static":
                return False
        elif getattr(obj, key) != value:
            return False
    return True


def _select(objects: Sequence[SceneObject], constraints: dict[str, str]) -> tuple[int, ...]:
    return tuple(o.object_id for o in objects if _matches(o, constraints))


def _phrase(constraints: dict[str, str], plural: bool = False) -> str:
    """Noun phrase: [static|moving] [size] [texture] [colour] shape|object [moving <dir>]."""
    motion = constraints.get("motion")
    words = [motion] if motion in ("static", "moving") else []
    words += [constraints[k] for k in ("size", "texture", "color") if k in constraints]
    noun = constraints.get("shape", "object")
    words.append(noun + "s" if plural else noun)
    if motion in ("left", "right", "up", "down"):
        words += ["moving", motion]
    return " ".join(words)


def _describe(obj: SceneObject, keys: Sequence[str]) -> dict[str, str]:
    return {k: getattr(obj, k) for k in keys}


def build_expressions(objects: Sequence[SceneObject], visible: np.ndarray, config: SceneConfig,
                      rng: np.random.Generator) -> list[Expression]:
    """All four kinds, each true and unambiguous for the scene; texts are unique."""
    attribute = _attribute_expressions(objects, rng)
    anchors = {}  # objects that a short attribute phrase singles out can anchor relations
    for obj in objects:
        found = _unique_descriptions(objects, obj)
        if found:
            anchors[obj.object_id] = found[0]
    spatial = _spatial_expressions(objects, visible, anchors, config)
    motion = _motion_expressions(objects)
    counting = _counting_expressions(objects, config.max_expressions_per_kind, rng)
    expressions: list[Expression] = []
    seen: set[str] = set()
    limit = config.max_expressions_per_kind
    for group in (attribute, spatial, motion, counting):
        for expression in _subsample(group, limit, rng):
            if expression.text not in seen:
                seen.add(expression.text)
                expressions.append(expression)
    return expressions


def _subsample(group: list[Expression], limit: int, rng: np.random.Generator) -> list[Expression]:
    """At most ``limit`` expressions, chosen at random, kept in their original order."""
    if len(group) <= limit:
        return group
    keep = np.sort(rng.choice(len(group), size=limit, replace=False))
    return [group[int(i)] for i in keep]


def _unique_descriptions(objects: Sequence[SceneObject], obj: SceneObject) -> list[dict[str, str]]:
    """Attribute combinations (shortest first) that match this object and no other."""
    found = []
    for n in range(1, len(_ATTRIBUTE_KEYS) + 1):
        for keys in itertools.combinations(_ATTRIBUTE_KEYS, n):
            constraints = _describe(obj, keys)
            if _select(objects, constraints) == (obj.object_id,):
                found.append(constraints)
    # within one length, colour and shape read most naturally: prefer them
    found.sort(key=lambda c: (len(c), "shape" not in c, "color" not in c))
    return found


def _attribute_expressions(objects: Sequence[SceneObject],
                           rng: np.random.Generator) -> list[Expression]:
    """Per object: its most natural unique description and one other at random."""
    out = []
    for obj in objects:
        found = _unique_descriptions(objects, obj)
        if not found:
            continue  # an identical twin exists: only motion or position can tell them apart
        chosen = [found[0]]
        if len(found) > 1:
            chosen.append(found[1 + int(rng.integers(len(found) - 1))])
        for constraints in chosen:
            out.append(Expression(f"the {_phrase(constraints)}", "attribute", (obj.object_id,)))
    return out


def _motion_expressions(objects: Sequence[SceneObject]) -> list[Expression]:
    """Per object: the shortest unique description that uses its motion."""
    out = []
    for obj in objects:
        motions = [obj.motion] + ([] if obj.motion == "static" else ["moving"])
        found = []
        for keys in _DESCRIPTORS:
            for motion in motions:
                constraints = {"motion": motion, **_describe(obj, keys)}
                if _select(objects, constraints) == (obj.object_id,):
                    found.append(constraints)
        if found:
            out.append(Expression(f"the {_phrase(found[0])}", "motion", (obj.object_id,)))
    return out


def _counting_expressions(objects: Sequence[SceneObject], limit: int,
                          rng: np.random.Generator) -> list[Expression]:
    """'all the ...' / 'every ...' over one attribute or colour+shape; up to two name none."""
    candidates: list[dict[str, str]] = []
    candidates += [{"shape": s} for s in SHAPES]
    candidates += [{"color": c} for c in COLORS]
    candidates += [{"size": s} for s in SIZES] + [{"texture": s} for s in TEXTURES]
    candidates += [{"motion": m} for m in ("static", "moving", "left", "right", "up", "down")]
    candidates += [{"color": o.color, "shape": o.shape} for o in objects]
    present, absent = [], []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for constraints in candidates:
        key = tuple(sorted(constraints.items()))
        if key in seen:
            continue
        seen.add(key)
        ids = _select(objects, constraints)
        if rng.random() < 0.5:
            text = f"all the {_phrase(constraints, plural=True)}"
        else:
            text = f"every {_phrase(constraints)}"
        (present if ids else absent).append(Expression(text, "counting", ids))
    zero = [absent[int(i)] for i in np.sort(rng.choice(len(absent), size=min(2, len(absent)),
                                                       replace=False))] if absent else []
    return _subsample(present, max(0, limit - len(zero)), rng) + zero[:limit]


def _spatial_expressions(objects: Sequence[SceneObject], visible: np.ndarray,
                         anchors: dict[int, dict[str, str]],
                         config: SceneConfig) -> list[Expression]:
    """Superlatives in a group and relations to a uniquely described anchor, checked per frame.

    A relation must hold (by a margin) on every frame where the target is visible, with the
    anchor visible there too; every other object fitting the description must clearly fail it
    (or be out of sight) on every frame. So the per-frame referent is always the target or nothing.
    """
    margins = (config.relation_margin * config.width, config.relation_margin * config.height)
    out = []
    for keys in ((), ("shape",), ("color",)):
        groups: dict[tuple[int, ...], dict[str, str]] = {}
        for obj in objects:
            constraints = _describe(obj, keys)
            members = _select(objects, constraints)
            if len(members) >= 2:
                groups[members] = constraints
        for members, constraints in groups.items():
            for word, (axis, sign) in _SUPERLATIVES.items():
                for target in members:
                    if _is_extreme(objects, visible, members, target, axis, sign, margins[axis]):
                        out.append(Expression(f"the {word} {_phrase(constraints)}", "spatial",
                                              (target,)))
    for anchor, anchor_desc in anchors.items():
        for relation, (axis, sign) in _REL_AXIS.items():
            for target in objects:
                if target.object_id == anchor:
                    continue
                for keys in _DESCRIPTORS:
                    constraints = _describe(target, keys)
                    if _relation_holds(objects, visible, target.object_id, anchor, constraints,
                                       axis, sign, margins[axis]):
                        text = f"the {_phrase(constraints)} {relation} the {_phrase(anchor_desc)}"
                        out.append(Expression(text, "spatial", (target.object_id,)))
                        break
    return out


def _is_extreme(objects: Sequence[SceneObject], visible: np.ndarray, members: tuple[int, ...],
                target: int, axis: int, sign: float, margin: float) -> bool:
    """Target is visible whenever any member is, and beats every visible member by the margin."""
    for t in range(visible.shape[0]):
        shown = [m for m in members if visible[t, m]]
        if not shown:
            continue
        if target not in shown:
            return False
        position = objects[target].centers[t, axis]
        for other in shown:
            if other != target and sign * (objects[other].centers[t, axis] - position) < margin:
                return False
    return True


def _relation_holds(objects: Sequence[SceneObject], visible: np.ndarray, target: int,
                    anchor: int, constraints: dict[str, str], axis: int, sign: float,
                    margin: float) -> bool:
    """The relation test described in ``_spatial_expressions``."""
    anchor_pos = objects[anchor].centers[:, axis]
    shown = visible[:, target]
    if not shown.any() or not visible[shown, anchor].all():
        return False
    offset = sign * (anchor_pos - objects[target].centers[:, axis])
    if np.any(offset[shown] < margin):
        return False
    for other in _select(objects, constraints):
        if other in (target, anchor):
            continue
        both = visible[:, other] & visible[:, anchor]
        other_offset = sign * (anchor_pos - objects[other].centers[:, axis])
        if np.any(other_offset[both] > 0.0):
            return False
    return True


# --------------------------------------------------------------------------- export


def write_scene(scene: Scene, out_dir: Path) -> None:
    """Write frames/NNNN.png, masks/object_II/NNNN.png (0/255) and scene.json under out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    for t in range(scene.num_frames):
        cv2.imwrite(str(out_dir / "frames" / f"{t:04d}.png"),
                    cv2.cvtColor(scene.frames[t], cv2.COLOR_RGB2BGR))
    for obj in scene.objects:
        folder = out_dir / "masks" / f"object_{obj.object_id:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(scene.num_frames):
            cv2.imwrite(str(folder / f"{t:04d}.png"),
                        scene.masks[t, obj.object_id].astype(np.uint8) * 255)
    (out_dir / "scene.json").write_text(json.dumps(scene.to_json(), indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: generate one scene and write it to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--frames", type=int, default=SceneConfig.num_frames)
    parser.add_argument("--width", type=int, default=SceneConfig.width)
    parser.add_argument("--height", type=int, default=SceneConfig.height)
    parser.add_argument("--fps", type=float, default=SceneConfig.fps)
    args = parser.parse_args(argv)
    scene = make_scene(SceneConfig(width=args.width, height=args.height,
                                   num_frames=args.frames, fps=args.fps, seed=args.seed))
    write_scene(scene, args.out)
    print(f"wrote {scene.num_frames} frames, {scene.num_objects} objects, "
          f"{len(scene.expressions)} expressions to {args.out}")
    for expression in scene.expressions:
        print(f"  [{expression.kind}] {expression.text} -> {list(expression.object_ids)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
