"""Stage 0: pre-train the small model's vision side on dense synthetic targets (our stand-in
for CLIP).

VideoMolmo starts from Molmo, whose ViT is a pre-trained CLIP: its patch features already say
what is where before the LLM ever learns to point. Trained from scratch end to end, our small
model had to discover that from a few digits of point text and never did (issue 4, sessions 1
and 2: coordinates stayed at chance for 3,000 steps). No CLIP of our size exists to download,
so this stage gives the vision side (ViT, 2x2 pooling, projector; not the temporal module) what
CLIP would: features of every patch and of every image token the LLM receives from which a
*linear* read-out recovers, for the object most covering it, its colour, shape, size and
texture, and the image position of its point (the point the pointing answer names), plus the
unit's own position. The pointing stage (``train``) then starts from it (``init_vision_from``).

Targets are computed by passing the ground-truth masks through the same resize / pad / crop
geometry as the pixels (``preprocessing.resize_and_pad``), so a patch's label is about exactly
the pixels it sees, in every crop of the layout.

CLI: ``python -m videomolmo_ros.train.vision_pretrain --out DIR --steps N`` writes
``vision.safetensors`` (the vision side, named as in ``VideoMolmoModel``), ``vision_pretrain.json``
(recipe and held-out scores) and ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videomolmo_ros.data.synthetic import COLORS, MOTIONS, SHAPES, SIZES, TEXTURES, Scene, \
    SceneConfig, make_scene
from videomolmo_ros.model.config import VideoMolmoConfig
from videomolmo_ros.model.preprocessing import (CropLayout, crop_frame, make_crop_layout,
                                                patchify, resize_and_pad)
from videomolmo_ros.model.vision import CONV_STEM_PLACES
from videomolmo_ros.train.flags import json_object
from videomolmo_ros.train.presets import preset

WEIGHTS_NAME = "vision.safetensors"
RECIPE_NAME = "vision_pretrain.json"
VISION_PREFIX = "vision_backbone."
# A patch belongs to the object covering most of it, if that is at least this fraction of it;
# a 2x2 token likewise at a lower bar, so that a small object (radius 4 px in a 112 px view,
# about 6% of a token) still owns the token it is in.
MIN_PATCH_COVERAGE = 0.1
MIN_TOKEN_COVERAGE = 0.03
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "texture": TEXTURES}
# The owner's motion: not in stage 0 (one frame cannot show it); the pointing stages may read it
# from the image tokens after the temporal module (``DenseHeads(motion=...)``).
MOTION_CLASSES: tuple[str, ...] = MOTIONS
HELD_OUT_SEED_OFFSET = 500_000  # held-out scenes: below the pointing stage's 1,000,000


def view_coverage(masks: np.ndarray, layout: CropLayout, config: VideoMolmoConfig) -> np.ndarray:
    """masks (N, H, W) bool -> (num_crops, P, N): the fraction of each patch of each crop
    (global view first, as ``crop_frame``) that each mask covers, through the same geometry."""
    patch = config.vision_backbone.image_patch_size
    size, window = layout.crop_size, layout.window
    channels = [np.zeros(masks.shape[1:], np.uint8)] * ((-len(masks)) % 3)
    stacked = np.stack(list(masks.astype(np.uint8) * 255) + channels, axis=-1)  # (H, W, 3k)
    views = []
    for start in range(0, stacked.shape[-1], 3):
        image = np.ascontiguousarray(stacked[..., start:start + 3])
        canvas, _ = resize_and_pad(image, layout.canvas_size)
        global_view, _ = resize_and_pad(image, (size, size))
        crops = [global_view] + [canvas[i * window:i * window + size, j * window:j * window + size]
                                 for i in range(layout.tiling[0]) for j in range(layout.tiling[1])]
        views.append(np.stack(crops))  # (num_crops, size, size, 3)
    coverage = np.concatenate(views, axis=-1)[..., :len(masks)]  # (num_crops, size, size, N)
    return patchify(coverage, patch).reshape(coverage.shape[0], -1, patch * patch,
                                             len(masks)).mean(axis=2)


def view_positions(layout: CropLayout, config: VideoMolmoConfig) -> np.ndarray:
    """(num_crops, P, 2): the frame position (x / width, y / height) of each patch centre."""
    patch = config.vision_backbone.image_patch_size
    height, width = layout.image_size
    grid = layout.crop_size // patch
    centre = (np.arange(grid, dtype=np.float64) + 0.5) * patch
    cy, cx = np.meshgrid(centre, centre, indexing="ij")

    def to_frame(px: np.ndarray, py: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
        scale = min(np.float32(out_h) / np.float32(height), np.float32(out_w) / np.float32(width))
        scaled_h, scaled_w = max(1, int(height * scale)), max(1, int(width * scale))
        top, left = (out_h - scaled_h) // 2, (out_w - scaled_w) // 2
        return np.stack([(px - left) / scaled_w, (py - top) / scaled_h], axis=-1).reshape(-1, 2)

    views = [to_frame(cx, cy, layout.crop_size, layout.crop_size)]
    for i in range(layout.tiling[0]):
        for j in range(layout.tiling[1]):
            views.append(to_frame(cx + j * layout.window, cy + i * layout.window,
                                  *layout.canvas_size))
    return np.stack(views).astype(np.float32)


@dataclass
class DenseTargets:
    """Targets of one frame at one level (T crops, N units: patches, or pooled image tokens):
    class indices (0 = background), ``point`` (T, N, 2) the owner's point as a fraction of
    the frame (valid where ``owned``), ``position`` (T, N, 2) the unit's centre, likewise."""

    classes: dict[str, torch.Tensor]
    point: torch.Tensor
    owned: torch.Tensor
    position: torch.Tensor


@dataclass
class FrameTargets:
    """Per-patch targets (read from the ViT features) and per-token targets (read from the
    image embeddings the LLM receives, one per 2x2 pooling window)."""

    patches: DenseTargets
    tokens: DenseTargets


def _targets(coverage: np.ndarray, positions: np.ndarray, scene: Scene, points: np.ndarray,
             min_coverage: float) -> DenseTargets:
    owner = coverage.argmax(-1)
    owned = coverage.max(-1) >= min_coverage
    classes = {}
    for name, values in (ATTRIBUTES | {"motion": MOTION_CLASSES}).items():
        per_object = np.asarray([values.index(getattr(o, name)) + 1 for o in scene.objects])
        classes[name] = torch.from_numpy(np.where(owned, per_object[owner], 0).astype(np.int64))
    return DenseTargets(classes, torch.from_numpy(points[owner].astype(np.float32)),
                        torch.from_numpy(owned), torch.from_numpy(positions.astype(np.float32)))


def dense_targets(scene: Scene, t: int, layout: CropLayout,
                  config: VideoMolmoConfig) -> FrameTargets:
    """What the vision side should make readable, per patch and per image token, in frame t."""
    coverage = view_coverage(scene.masks[t], layout, config)  # (T, P, N)
    positions = view_positions(layout, config)  # (T, P, 2)
    points = np.zeros((scene.num_objects, 2), np.float32)
    for obj in scene.objects:
        found = scene.points_for([obj.object_id], t)
        if found:
            points[obj.object_id] = (found[0].x / scene.width, found[0].y / scene.height)
    return FrameTargets(_targets(coverage, positions, scene, points, MIN_PATCH_COVERAGE),
                        _targets(pool_to_tokens(coverage, config),
                                 pool_to_tokens(positions, config), scene, points,
                                 MIN_TOKEN_COVERAGE))


def pool_to_tokens(values: np.ndarray, config: VideoMolmoConfig) -> np.ndarray:
    """Per-patch values (T, P, C) -> per-image-token values (T, K, C): the mean over each
    token's 2x2 pooling window, in the order the LLM receives the tokens."""
    from videomolmo_ros.model.temporal import to_windows

    grid = config.vision_backbone.image_num_patch
    pool = (config.image_pooling_h, config.image_pooling_w)
    windows = to_windows(torch.from_numpy(np.ascontiguousarray(values))[None], grid, pool)
    return windows.mean(1).reshape(values.shape[0], -1, values.shape[-1]).numpy()


class DenseHeads(nn.Module):
    """Linear read-outs from per-unit features (ViT patches, or the image tokens the LLM
    receives): one classifier per attribute (+ background), the owner's point (2) and the
    unit's position (2). Thrown away after pre-training."""

    def __init__(self, feature_dim: int, object_attributes: bool = False,
                 attribute_weights: dict[str, float] | None = None, motion: float = 0.0,
                 geometry_weight: float = 1.0) -> None:
        super().__init__()
        # Most units are background, which the averaged attribute losses then mostly score;
        # object_attributes adds each attribute's loss over the object units alone.
        self.object_attributes = object_attributes
        unknown = set(attribute_weights or {}) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"attribute_weights names no attribute: {sorted(unknown)} "
                             f"(attributes: {', '.join(ATTRIBUTES)})")
        # Each attribute's loss terms are multiplied by its weight (default 1).
        self.attribute_weights = {name: 1.0 for name in ATTRIBUTES} | dict(attribute_weights or {})
        self.classifiers = nn.ModuleDict({name: nn.Linear(feature_dim, len(values) + 1)
                                          for name, values in ATTRIBUTES.items()})
        # motion > 0: also read the owner's motion (``MOTION_CLASSES``), with that weight; only
        # learnable from features that saw earlier frames (the temporal module's output).
        if motion < 0:
            raise ValueError(f"motion must be >= 0, got {motion}")
        if motion > 0:
            self.classifiers["motion"] = nn.Linear(feature_dim, len(MOTION_CLASSES) + 1)
            self.attribute_weights["motion"] = float(motion)
        self.point = nn.Linear(feature_dim, 2)
        self.position = nn.Linear(feature_dim, 2)
        # Multiplies the point and position terms (0: attributes alone, to see whether these
        # regressions, on every unit, crowd a harder attribute such as shape out).
        if geometry_weight < 0:
            raise ValueError(f"geometry_weight must be >= 0, got {geometry_weight}")
        self.geometry_weight = float(geometry_weight)

    def losses(self, features: torch.Tensor, targets: DenseTargets
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """features (B, T, P, C), batched targets -> (total loss, per-term values)."""
        terms: dict[str, torch.Tensor] = {}
        for name, head in self.classifiers.items():
            logits = head(features)
            weight = self.attribute_weights[name]
            terms[name] = weight * F.cross_entropy(logits.flatten(0, 2),
                                                   targets.classes[name].flatten())
            if self.object_attributes and targets.owned.any():
                terms[f"{name}_objects"] = weight * F.cross_entropy(
                    logits[targets.owned], targets.classes[name][targets.owned])
        owned = targets.owned
        # Points and positions as fractions of the frame, errors scaled to ~tenths of it; the
        # point twice as finely: the pointing answer needs it to a few percent.
        terms["point"] = self.geometry_weight * (
            F.smooth_l1_loss(self.point(features)[owned] * 20, targets.point[owned] * 20)
            if owned.any() else features.sum() * 0.0)
        terms["position"] = self.geometry_weight * F.smooth_l1_loss(
            self.position(features) * 10, targets.position * 10)
        return sum(terms.values()), {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def scores(self, features: torch.Tensor, targets: DenseTargets) -> dict[str, float]:
        """Held-out read-out quality: accuracy per attribute on object patches, background
        accuracy, mean point error (fraction of the frame) on object patches."""
        owned = targets.owned
        out = {}
        for name, head in self.classifiers.items():
            predicted = head(features).argmax(-1)
            out[f"{name}_acc"] = float((predicted == targets.classes[name])[owned].float().mean())
            if name == "color":
                out["background_acc"] = float((predicted == 0)[~owned].float().mean())
        error = (self.point(features)[owned] - targets.point[owned]).abs().mean(-1)
        out["point_error"] = float(error.mean())
        return out


SCHEDULES = ("cosine", "constant")
TRAINABLE = ("all", "stem")


@dataclass
class PretrainConfig:
    """Everything a stage-0 run depends on (saved in ``vision_pretrain.json``)."""

    output_dir: str
    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    scene: dict[str, Any] = field(default_factory=dict)
    steps: int = 1500
    frames_per_step: int = 32
    frames_per_scene: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    threads: int | None = None
    held_out_scenes: int = 8
    object_attributes: bool = False  # see DenseHeads
    # Per-attribute loss weights (see DenseHeads), e.g. {"shape": 5.0}; others weigh 1.
    attribute_weights: dict[str, float] = field(default_factory=dict)
    # A curriculum: the first ``curriculum_steps`` steps draw their frames from scenes made
    # with these overrides instead of ``scene`` (e.g. {"num_objects": [1, 1]}: one object per
    # frame, where benchmarks/shape_learning.py's conv embedding learns shape); held-out
    # scores always use ``scene``.
    curriculum_scene: dict[str, Any] = field(default_factory=dict)
    curriculum_steps: int = 0
    geometry_weight: float = 1.0  # see DenseHeads
    # "cosine" decays the rate to 0 over ``steps``; "constant" keeps it flat after warm-up:
    # shape's loss leaves its plateau only after ~250 steps at a constant rate (README,
    # nineteenth session), when a short cosine run has little rate left.
    schedule: str = "cosine"
    # A trained model (release layout) whose vision side starts the run instead of a fresh
    # one of ``preset``; its own config is used (``preset`` and ``model_overrides`` must be
    # left at their defaults). ``add_conv_stem`` gives its ViT the conv branch
    # (``vision.add_conv_stem``, output layer at zero), ``trainable="stem"`` trains that
    # branch alone. Why: the pointing stages give a trained model's new branch too weak a
    # signal to learn shape (README, sixteenth session); here the dense shape read-out
    # trains it while the rest, which the model's LLM reads, stays as it was.
    init_from: str | None = None
    add_conv_stem: bool = False
    # Where that branch adds ("embedding" or "features", ``vision.CONV_STEM_PLACES``).
    conv_stem_at: str = "embedding"
    trainable: str = "all"
    # With ``init_from``: the weight of the image tokens' drift from the starting model's
    # (``VisionPretrainer.token_drift``). Why: a branch trained for shape alone moved the tokens
    # the LLM had learnt to place points from, and the pointing stage after it placed them
    # worse (``HI22``, README, twenty-first session); this keeps the tokens where they were
    # while shape is added to them.
    keep_tokens: float = 0.0


class FrameStream:
    """Training frames: scene ``i`` (seed ``seed_offset + i``) gives ``frames_per_scene``
    random frames; the stream is a pure function of (config, step)."""

    def __init__(self, scene: dict[str, Any], frames_per_scene: int, seed_offset: int,
                 model_config: VideoMolmoConfig) -> None:
        self.scene, self.frames_per_scene = scene, frames_per_scene
        self.seed_offset, self.config = seed_offset, model_config
        # Consecutive frames share a scene: keep the last one generated.
        self._scene = functools.lru_cache(maxsize=1)(self._make_scene)

    def frames(self, first: int, count: int) -> tuple[torch.Tensor, FrameTargets]:
        crops, targets = [], []
        for index in range(first, first + count):
            scene = self._scene(index // self.frames_per_scene)
            t = int(np.random.default_rng([self.seed_offset, index]).integers(scene.num_frames))
            layout = make_crop_layout(scene.height, scene.width, self.config)
            crops.append(crop_frame(scene.frames[t], layout, self.config).crops)
            targets.append(dense_targets(scene, t, layout, self.config))
        return torch.stack(crops), stack_targets(targets)

    def _make_scene(self, scene_index: int) -> Scene:
        seed = self.seed_offset + scene_index
        return make_scene(SceneConfig(**{**self.scene, "seed": seed}))


def stack_dense_targets(level: Sequence[DenseTargets]) -> DenseTargets:
    """Frames' targets at one level stacked into a batch (a leading frame axis)."""
    return DenseTargets({k: torch.stack([t.classes[k] for t in level]) for k in level[0].classes},
                        torch.stack([t.point for t in level]),
                        torch.stack([t.owned for t in level]),
                        torch.stack([t.position for t in level]))


def stack_targets(items: Sequence[FrameTargets]) -> FrameTargets:
    return FrameTargets(stack_dense_targets([t.patches for t in items]),
                        stack_dense_targets([t.tokens for t in items]))


class VisionPretrainer(nn.Module):
    """The vision side of a ``VideoMolmoModel`` without its temporal module (ViT, pooling,
    projector) plus the stage-0 read-outs: ``patch_heads`` on the ViT features,
    ``token_heads`` on the image embeddings the LLM will receive."""

    def __init__(self, model_config: VideoMolmoConfig, seed: int = 0,
                 object_attributes: bool = False,
                 attribute_weights: dict[str, float] | None = None,
                 geometry_weight: float = 1.0, backbone: nn.Module | None = None,
                 keep_tokens: float = 0.0) -> None:
        """backbone: a trained model's ``vision_backbone`` to start from (default: a fresh
        one of ``model_config``); keep_tokens > 0 (with a backbone): the weight of the
        tokens' drift from what that backbone gives now (a frozen copy is kept)."""
        super().__init__()
        from videomolmo_ros.model.videomolmo import VideoMolmoModel
        from videomolmo_ros.train.trainer import init_connector, init_positions

        torch.manual_seed(seed)
        if backbone is None:
            model = VideoMolmoModel(model_config)
            init_connector(model)
            init_positions(model)
            backbone = model.vision_backbone
        self.backbone = backbone
        self.backbone.adapter = None  # trained in the pointing stage, from history frames
        self.patch_heads = DenseHeads(model_config.image_feature_dim, object_attributes,
                                      attribute_weights, geometry_weight=geometry_weight)
        self.token_heads = DenseHeads(model_config.hidden_size, object_attributes,
                                      attribute_weights, geometry_weight=geometry_weight)
        if keep_tokens < 0:
            raise ValueError(f"keep_tokens must be >= 0, got {keep_tokens}")
        self.keep_tokens = float(keep_tokens)
        self.reference = frozen_reference(self.backbone) if keep_tokens > 0 else None

    def train(self, mode: bool = True) -> "VisionPretrainer":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # a fixed target, whatever mode the rest is in
        return self

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """crops (B, T, P, D) -> patch features (B, T, P, C), image embeddings (B, T, K, d)."""
        features = self.backbone.encode(crops)
        return features, self.backbone.image_embeddings(features, None)

    def losses(self, crops: torch.Tensor, targets: FrameTargets
               ) -> tuple[torch.Tensor, dict[str, float]]:
        features, tokens = self(crops)
        patch_loss, patch_terms = self.patch_heads.losses(features, targets.patches)
        token_loss, token_terms = self.token_heads.losses(tokens, targets.tokens)
        terms = {**{f"patch_{k}": v for k, v in patch_terms.items()},
                 **{f"token_{k}": v for k, v in token_terms.items()}}
        loss = patch_loss + token_loss
        if self.reference is not None:
            drift = self.token_drift(crops, tokens)
            terms["token_drift"] = float(drift.detach())
            loss = loss + self.keep_tokens * drift
        return loss, terms

    def token_drift(self, crops: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens' mean squared distance from the reference's, relative to the reference
        tokens' mean square (0: unchanged; 1: as far as the tokens are from zero)."""
        with torch.no_grad():
            reference = self.reference.image_embeddings(self.reference.encode(crops), None)
        return (tokens - reference).pow(2).mean() / reference.pow(2).mean().clamp_min(1e-12)

    @torch.no_grad()
    def scores(self, crops: torch.Tensor, targets: FrameTargets) -> dict[str, float]:
        features, tokens = self(crops)
        scores = {**{f"patch_{k}": v for k, v in self.patch_heads.scores(
                      features, targets.patches).items()},
                  **{f"token_{k}": v for k, v in self.token_heads.scores(
                      tokens, targets.tokens).items()}}
        if self.reference is not None:
            scores["token_drift"] = float(self.token_drift(crops, tokens))
        return scores

    def vision_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained vision side, named as in ``VideoMolmoModel`` (``vision_backbone.*``)."""
        return {VISION_PREFIX + k: v.detach().contiguous()
                for k, v in self.backbone.state_dict().items()}


def frozen_reference(backbone: nn.Module) -> nn.Module:
    """A frozen copy of ``backbone`` that gives the tokens it gives now. A conv branch whose
    output layer is still zero adds nothing, so the copy leaves it out (it is the costliest
    part: its convolutions run at full resolution)."""
    reference = copy.deepcopy(backbone).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    stem = reference.image_vit.conv_stem
    if stem is not None and not any(p.any() for p in stem.linear.parameters()):
        reference.image_vit.conv_stem = None
    return reference


def pretrain(config: PretrainConfig, progress: bool = True) -> dict[str, float]:
    """Train the vision side of the preset with the dense read-outs; save it; return the
    held-out scores."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    check_start(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    model_config, backbone = starting_vision(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = VisionPretrainer(model_config, config.seed, config.object_attributes,
                             config.attribute_weights, config.geometry_weight,
                             backbone=backbone, keep_tokens=config.keep_tokens).train()
    if config.trainable == "stem":
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
        for parameter in model.backbone.image_vit.conv_stem.parameters():
            parameter.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), eps=1e-6,
                                  weight_decay=config.weight_decay)
    if config.schedule == "constant":
        schedule = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    else:
        schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    train = FrameStream(config.scene, config.frames_per_scene, 2_000_000 + config.seed * 10 ** 7,
                        model_config)
    # Its own seed range, so that the main stream's scenes are the same with or without it.
    first = FrameStream(config.curriculum_scene, config.frames_per_scene,
                        3_000_000 + config.seed * 10 ** 7, model_config)
    held = FrameStream(config.scene, 4, HELD_OUT_SEED_OFFSET, model_config)
    held_crops, held_targets = held.frames(0, 4 * config.held_out_scenes)

    def evaluate() -> dict[str, float]:
        model.eval()
        scores = model.scores(held_crops, held_targets)
        model.train()
        return scores

    log = open(out / "log.jsonl", "w", encoding="utf-8")
    bar = tqdm(range(config.steps), disable=not progress, unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    for step in bar:
        stream = first if step < config.curriculum_steps else train
        crops, targets = stream.frames(step * config.frames_per_step, config.frames_per_step)
        loss, terms = model.losses(crops, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        rate = optimizer.param_groups[0]["lr"]  # the rate this step used
        optimizer.step()
        schedule.step()
        record = {"step": step + 1, "loss": float(loss.detach()), "lr": rate, **terms,
                  "minutes": (time.perf_counter() - started) / 60}
        if (step + 1) % 250 == 0 or step + 1 == config.steps:
            record.update({f"held_out_{k}": v for k, v in evaluate().items()})
            bar.write(json.dumps({k: round(v, 3) for k, v in record.items()
                                  if k == "step" or k.startswith("held_out")}))
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{record['loss']:.3f}")
    log.close()
    scores = evaluate()
    save_file(model.vision_state_dict(), str(out / WEIGHTS_NAME))
    # The model's full config too: a run started from a trained model is not its preset.
    (out / RECIPE_NAME).write_text(json.dumps(
        {"config": dataclasses.asdict(config), "model_config": model_config.to_dict(),
         "held_out": scores}, indent=2) + "\n")
    return scores


def check_start(config: PretrainConfig) -> None:
    """ValueError naming what is inconsistent in how the run starts and what it trains."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                         f"not {config.schedule!r}")
    if config.trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}, "
                         f"not {config.trainable!r}")
    if config.init_from and (config.model_overrides or config.preset != PretrainConfig.preset):
        raise ValueError("a run started from a trained model (init_from) uses that model's "
                         "config: leave preset and model_overrides at their defaults")
    if config.add_conv_stem and not config.init_from:
        raise ValueError("add_conv_stem adds the branch to a trained model (init_from); a "
                         "fresh one takes model_overrides "
                         '{"vision_backbone": {"image_patch_embedding": "linear+conv"}}')
    if config.conv_stem_at not in CONV_STEM_PLACES:
        raise ValueError(f"conv_stem_at must be one of {', '.join(CONV_STEM_PLACES)}, "
                         f"not {config.conv_stem_at!r}")
    if config.trainable == "stem" and not config.add_conv_stem:
        raise ValueError('trainable="stem" trains the conv branch that add_conv_stem adds')
    if config.keep_tokens < 0:
        raise ValueError(f"keep_tokens must be >= 0, not {config.keep_tokens}")
    if config.keep_tokens and not config.init_from:
        raise ValueError("keep_tokens keeps a trained model's tokens (init_from); a fresh "
                         "model has none worth keeping")


class StartError(ValueError):
    """The trained model a run should start from cannot be loaded or given the branch."""


def starting_vision(config: PretrainConfig) -> tuple[VideoMolmoConfig, nn.Module | None]:
    """(model config, trained vision backbone or None for a fresh one of the preset);
    StartError when ``init_from`` is no usable model."""
    from videomolmo_ros.train.tokenizer import DEFAULT_BASE_VOCAB

    if not config.init_from:
        return preset(config.preset, DEFAULT_BASE_VOCAB, **config.model_overrides), None
    from videomolmo_ros.model import loading
    from videomolmo_ros.model.vision import add_conv_stem

    try:
        model = loading.load_videomolmo(config.init_from)  # float32, whatever it was saved in
        if config.add_conv_stem:
            torch.manual_seed(config.seed)  # the branch's convolutions start at random
            add_conv_stem(model.vision_backbone.image_vit, config.conv_stem_at)  # sets the
            # config's embedding
    except (OSError, RuntimeError, ValueError) as error:
        raise StartError(f"cannot start from {config.init_from}: {error}") from error
    return model.config, model.vision_backbone


def load_pretrained_vision(model: torch.nn.Module, directory: str | Path) -> None:
    """Copy a stage-0 vision side (ViT, pooling, projector) into ``model``, a
    ``VideoMolmoModel`` of the same preset; its temporal module, if any, is left as it is.
    Raises RuntimeError when the shapes differ."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(directory) / WEIGHTS_NAME))
    backbone = model.vision_backbone
    state = {k[len(VISION_PREFIX):]: v for k, v in weights.items()}
    mine = {k for k in backbone.state_dict() if not k.startswith("adapter.")}
    if set(state) != mine:
        raise RuntimeError(f"vision weights do not match the model: missing "
                           f"{sorted(mine - set(state))}, unexpected {sorted(set(state) - mine)}")
    backbone.load_state_dict(state, strict=False)


def parse_args(argv: Sequence[str] | None = None) -> tuple[PretrainConfig, argparse.Namespace]:
    defaults = PretrainConfig(output_dir="")
    p = argparse.ArgumentParser(prog="python -m videomolmo_ros.train.vision_pretrain",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default=defaults.preset)
    p.add_argument("--model-overrides", default="{}", help="JSON VideoMolmoConfig overrides")
    p.add_argument("--scene", default="{}", help="JSON SceneConfig overrides")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--frames-per-step", type=int, default=defaults.frames_per_step)
    p.add_argument("--frames-per-scene", type=int, default=defaults.frames_per_scene)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule,
                   help="learning-rate schedule after warm-up: cosine decay to 0, or constant")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--object-attributes", action="store_true",
                   help="also score the attribute read-outs on object units alone")
    p.add_argument("--attribute-weights", default="{}",
                   help='JSON object of per-attribute loss weights, e.g. {"shape": 5}')
    p.add_argument("--curriculum-scene", default="{}",
                   help="JSON SceneConfig overrides of the first --curriculum-steps steps' "
                        'scenes, e.g. {"num_objects": [1, 1]}')
    p.add_argument("--curriculum-steps", type=int, default=defaults.curriculum_steps)
    p.add_argument("--geometry-weight", type=float, default=defaults.geometry_weight,
                   help="weight of the point and position read-out losses (0: off)")
    p.add_argument("--init-from", default=None,
                   help="a trained model (release layout) whose vision side starts the run")
    p.add_argument("--add-conv-stem", action="store_true",
                   help="give that model's ViT the conv branch, its output layer at zero")
    p.add_argument("--conv-stem-at", choices=CONV_STEM_PLACES, default=defaults.conv_stem_at,
                   help="where that branch adds: to the patch embedding, or to the ViT's "
                        "output features")
    p.add_argument("--trainable", choices=TRAINABLE, default=defaults.trainable,
                   help="train everything, or the conv branch alone")
    p.add_argument("--keep-tokens", type=float, default=defaults.keep_tokens,
                   help="weight of the image tokens' drift from the starting model's "
                        "(with --init-from)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        weights = json.loads(a.attribute_weights)
    except json.JSONDecodeError as error:
        p.error(f"--attribute-weights is not JSON: {error}")
    if not isinstance(weights, dict) or set(weights) - set(ATTRIBUTES) or not all(
            isinstance(v, (int, float)) and v >= 0 for v in weights.values()):
        p.error(f"--attribute-weights must map some of {', '.join(ATTRIBUTES)} to weights >= 0, "
                f"not {a.attribute_weights}")
    try:
        model_overrides = json_object(a.model_overrides, "--model-overrides")
    except ValueError as error:
        p.error(str(error))
    config = PretrainConfig(output_dir=a.out, preset=a.preset,
                            model_overrides=model_overrides,
                            scene=_scene_overrides(p, "--scene", a.scene), steps=a.steps,
                            frames_per_step=a.frames_per_step,
                            frames_per_scene=a.frames_per_scene, lr=a.lr,
                            warmup_steps=a.warmup_steps, seed=a.seed, threads=a.threads,
                            object_attributes=a.object_attributes,
                            attribute_weights={k: float(v) for k, v in weights.items()},
                            curriculum_scene=_scene_overrides(p, "--curriculum-scene",
                                                              a.curriculum_scene),
                            curriculum_steps=a.curriculum_steps,
                            geometry_weight=a.geometry_weight, schedule=a.schedule,
                            init_from=a.init_from, add_conv_stem=a.add_conv_stem,
                            conv_stem_at=a.conv_stem_at,
                            trainable=a.trainable, keep_tokens=a.keep_tokens)
    try:
        check_start(config)
    except ValueError as error:
        p.error(str(error))
    if config.geometry_weight < 0:
        p.error(f"--geometry-weight must be >= 0, not {config.geometry_weight}")
    if not 0 <= config.curriculum_steps <= config.steps:
        p.error(f"--curriculum-steps must be between 0 and --steps ({config.steps}), "
                f"not {config.curriculum_steps}")
    return config, a


def _scene_overrides(parser: argparse.ArgumentParser, flag: str, text: str) -> dict[str, Any]:
    """A JSON object of ``SceneConfig`` fields, or a parser error that names what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"{flag} is not JSON: {error}")
    fields = {f.name for f in dataclasses.fields(SceneConfig)} - {"seed"}
    if not isinstance(value, dict) or set(value) - fields:
        parser.error(f"{flag} must be a JSON object of some of {', '.join(sorted(fields))}, "
                     f"not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    config, a = parse_args(argv)
    try:
        scores = pretrain(config, progress=not a.no_progress)
    except StartError as error:
        print(f"vision_pretrain: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: round(v, 4) for k, v in scores.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
