"""Can the small ViT learn shape from scratch, as fast as a small CNN on the same pixels?

    python benchmarks/shape_learning.py [--steps 600] [--lr 5e-4] [--preset small]

One object per synthetic frame (any colour, size, texture, place); the label is its shape
(circle, square, triangle, star; chance 0.25). Both learners see the model's global view of
the frame (320x240 -> 112x84, padded to 112x112) and train side by side on the same batches
from random weights, with AdamW and a linear warm-up:

* ``vit``: the preset's vision side as the model builds it (ViT with its sin-cos positions,
  features of its configured layers), then a linear layer on the feature of the patch at the
  object's centre (what stage 0 and the pointing stages read: one unit per object);
* ``vit-max``: the same, max-pooled over the patches instead (a whole-image read-out like the
  CNN's);
* ``vit-conv``: ``vit`` with its linear patch embedding replaced by two 3x3 convolutions over
  the whole view (32 and 64 channels, a 2x2 max-pool between), max-pooled inside each patch,
  then a linear layer (``vision.ConvPatchEmbedding``, the model's ``image_patch_embedding:
  "conv"``): it crosses patch borders and does not care where in its patch an object falls;
* ``cnn``: three 3x3 convolutions (32, 64, 64 channels, two 2x2 max-pools), global max-pool,
  a linear layer.

Held-out accuracy (other seeds) is printed every ``--every`` steps for both, with the wall time
each took. It isolates the vision side's ability to learn shape from the rest of stage 0 (many
objects, many losses): stage 0's ViT never made shape readable (benchmarks/shape_readability.py).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videomolmo_ros.data.synthetic import SHAPES, SceneConfig, make_scene
from videomolmo_ros.model.preprocessing import crop_frame, make_crop_layout, patches_to_image
from videomolmo_ros.train.presets import preset

TRAIN_SEEDS, TEST_SEEDS = 2_000_000, 900_000
BATCH = 32


def centre_patch(scene, t: int, config) -> int:
    """Index of the global view's patch under the visible centre of the scene's one object
    (the frame is resized keeping its aspect ratio and padded centred, as the model sees it)."""
    view = config.vision_backbone.image_default_input_size[0]
    patch = config.vision_backbone.image_patch_size
    cy, cx = np.argwhere(scene.masks[t, 0]).mean(axis=0)
    scale = min(view / scene.height, view / scene.width)
    top = (view - int(scene.height * scale)) // 2
    left = (view - int(scene.width * scale)) // 2
    row = min(int((cy * scale + top) // patch), view // patch - 1)
    col = min(int((cx * scale + left) // patch), view // patch - 1)
    return row * (view // patch) + col


def single_object_batch(first: int, count: int, seed_offset: int, config
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, crops, patches, pixels) pre-cut views, the shape index of their one object and
    the index of the patch at its centre."""
    crops, labels, centres = [], [], []
    for index in range(first, first + count):
        scene = make_scene(SceneConfig(num_objects=(1, 1), num_frames=2, seed=seed_offset + index))
        layout = make_crop_layout(scene.height, scene.width, config)
        crops.append(crop_frame(scene.frames[1], layout, config).crops)
        labels.append(SHAPES.index(scene.objects[0].shape))
        centres.append(centre_patch(scene, 1, config))
    return torch.stack(crops), torch.tensor(labels), torch.tensor(centres)


class ViTClassifier(nn.Module):
    """The preset's vision side (as ``VisionPretrainer`` builds it) + a linear layer on the
    centre patch's feature, or on the features max-pooled over the patches."""

    def __init__(self, config, pool: str = "centre") -> None:
        super().__init__()
        from videomolmo_ros.train.vision_pretrain import VisionPretrainer

        self.pool = pool
        self.backbone = VisionPretrainer(config, seed=0).backbone
        self.head = nn.Linear(config.image_feature_dim, len(SHAPES))

    def forward(self, crops: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        features = self.backbone.encode(crops[:, :1])[:, 0]  # the global view: (B, P, C)
        if self.pool == "max":
            return self.head(features.max(dim=1).values)
        return self.head(features[torch.arange(len(features)), centres])


class CNNClassifier(nn.Module):
    """A small CNN on the same global view, re-assembled from its patches."""

    def __init__(self, config) -> None:
        super().__init__()
        self.patch = config.vision_backbone.image_patch_size
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            nn.Linear(64, len(SHAPES)))

    def forward(self, crops: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        return self.net(patches_to_image(crops[:, 0], self.patch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100, help="evaluate every N steps")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=256, help="held-out frames")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model-overrides", default="{}",
                        help="JSON VideoMolmoConfig overrides (e.g. another patch size)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.steps < 1 or args.every < 1 or args.held_out < 1:
        parser.error("--steps, --every and --held-out must be positive")
    torch.set_num_threads(args.threads)
    try:
        overrides = json.loads(args.model_overrides)
        config = preset(args.preset, **overrides)
        conv = preset(args.preset, **{**overrides, "vision_backbone": {
            **overrides.get("vision_backbone", {}), "image_patch_embedding": "conv"}})
    except (ValueError, TypeError) as error:
        raise SystemExit(f"bad model configuration: {error}") from error
    torch.manual_seed(0)
    learners = {"vit": ViTClassifier(config), "vit-max": ViTClassifier(config, pool="max"),
                "vit-conv": ViTClassifier(conv), "cnn": CNNClassifier(config)}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                          eps=1e-6, weight_decay=0.05)
                  for name, m in learners.items()}
    seconds = dict.fromkeys(learners, 0.0)
    held_crops, held_labels, held_centres = single_object_batch(0, args.held_out, TEST_SEEDS,
                                                                config)
    print(f"shape of one object from scratch ({args.preset}, lr {args.lr}, batch {BATCH}, "
          f"chance 0.25); held-out accuracy:")
    for step in range(1, args.steps + 1):
        crops, labels, centres = single_object_batch((step - 1) * BATCH, BATCH, TRAIN_SEEDS,
                                                     config)
        scale = min(1.0, step / max(args.warmup_steps, 1))
        for name, model in learners.items():
            started = time.perf_counter()
            for group in optimizers[name].param_groups:
                group["lr"] = args.lr * scale
            loss = F.cross_entropy(model(crops, centres), labels)
            optimizers[name].zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            seconds[name] += time.perf_counter() - started
        if step % args.every == 0 or step == args.steps:
            scores = []
            for name, model in learners.items():
                model.eval()
                with torch.no_grad():
                    predicted = model(held_crops, held_centres).argmax(-1)
                    accuracy = (predicted == held_labels).float().mean()
                model.train()
                scores.append(f"{name} {accuracy.item():.3f} ({seconds[name]:.0f} s)")
            print(f"step {step:5d}: " + ", ".join(scores), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
