"""Is an object's shape in the pixels the small model sees, and in its ViT features?

    python benchmarks/shape_readability.py [VISION_DIR_OR_MODEL_DIR ...]

Two read-outs of the shape (circle, square, triangle, star; chance 0.25) of every mostly
visible object of synthetic 3-6 object scenes, trained on some scenes and scored on others,
per size class:

* ``pixels``: a one-hidden-layer MLP on the 24x24 pixels around the object's centre in the
  frame resized the way the model sees it (320x240 -> 112x84): the upper reference, what the
  resolution allows.
* for each directory given (a stage-0 ``train.vision_pretrain`` output or a trained model in
  the release layout): a linear read-out of the ViT feature of the global view's patch at the
  object's centre (``patch``) and of the image token there (``token``), the LLM's input.

The gap between the two says whether shape is lost to resolution or to the vision side.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videomolmo_ros.data.synthetic import SHAPES, SceneConfig, make_scene
from videomolmo_ros.model.preprocessing import crop_frame, make_crop_layout, resize_and_pad

TRAIN_SEEDS, TEST_SEEDS = 700_000, 600_000  # below the training ranges of every stage
KEYFRAMES = (5, 25, 45)
WINDOW = 24  # pixels around the centre in the model's view (small objects: radius 4-5 px)


def objects(seeds: range):
    """(scene, t, object, (x, y) of its visible centre in frame pixels) of mostly visible
    objects."""
    for seed in seeds:
        scene = make_scene(SceneConfig(seed=seed))
        for t in KEYFRAMES:
            for obj in scene.objects:
                mask = scene.masks[t, obj.object_id]
                if mask.sum() < 0.5 * np.pi * obj.radius ** 2:
                    continue
                cy, cx = np.argwhere(mask).mean(0)
                yield scene, t, obj, (float(cx), float(cy))


def pixel_dataset(seeds: range, view: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Centred windows of the frame as the model's global view shows it."""
    xs, shapes, large = [], [], []
    cache: dict[tuple[int, int], np.ndarray] = {}
    for scene, t, obj, (cx, cy) in objects(seeds):
        key = (scene.config.seed, t)
        if key not in cache:
            image, _ = resize_and_pad(scene.frames[t], (view, view))
            cache = {key: np.pad(image, ((WINDOW, WINDOW), (WINDOW, WINDOW), (0, 0)))}
        scale = min(view / scene.height, view / scene.width)
        top = (view - int(scene.height * scale)) // 2
        y, x = int(round(cy * scale)) + top + WINDOW, int(round(cx * scale)) + WINDOW
        half = WINDOW // 2
        xs.append(cache[key][y - half:y + half, x - half:x + half].ravel())
        shapes.append(SHAPES.index(obj.shape))
        large.append(obj.size == "large")
    return torch.tensor(np.array(xs), dtype=torch.float32), np.array(shapes), np.array(large)


def load_vision(directory: str):
    """(config, encode): ``encode(crops (1, T, P, D)) -> (patch features, image tokens)`` of
    a stage-0 output (``vision.safetensors``) or of a trained model."""
    from videomolmo_ros.model import loading
    from videomolmo_ros.train.vision_pretrain import (RECIPE_NAME, VISION_PREFIX, WEIGHTS_NAME,
                                                      VisionPretrainer)

    path = Path(directory)
    if (path / WEIGHTS_NAME).is_file():
        from safetensors.torch import load_file

        from videomolmo_ros.train.presets import preset
        from videomolmo_ros.train.tokenizer import DEFAULT_BASE_VOCAB

        # The run's own model config (a run started from a trained model records it), else
        # its preset and overrides (e.g. another patch size), as pretrain built it.
        recipe = json.loads((path / RECIPE_NAME).read_text())
        if "model_config" in recipe:
            from videomolmo_ros.model.config import VideoMolmoConfig

            config = VideoMolmoConfig.from_dict(recipe["model_config"])
        else:
            config = preset(recipe["config"]["preset"], DEFAULT_BASE_VOCAB,
                            **recipe["config"]["model_overrides"])
        model = VisionPretrainer(config)
        state = {k[len(VISION_PREFIX):]: v for k, v in load_file(str(path / WEIGHTS_NAME)).items()}
        model.backbone.load_state_dict(state)
        return config, model.eval()
    model = loading.load_videomolmo(directory).eval()
    backbone = model.vision_backbone

    def encode(crops: torch.Tensor):
        features = backbone.encode(crops)
        return features, backbone.image_embeddings(features, None)

    return model.config, encode


@torch.no_grad()
def feature_dataset(seeds: range, config, encode) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """Per object: the global view's patch feature and image token at its centre."""
    patch = config.vision_backbone.image_patch_size
    grid = config.vision_backbone.image_num_patch
    pool_w = config.image_pooling_w
    tokens_per_row = (grid[1] + pool_w - 1) // pool_w
    patches, tokens, shapes, large = [], [], [], []
    cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for scene, t, obj, (cx, cy) in objects(seeds):
        key = (scene.config.seed, t)
        layout = make_crop_layout(scene.height, scene.width, config)
        if key not in cache:
            crops = crop_frame(scene.frames[t], layout, config).crops
            cache = {key: encode(crops[None])}
        features, image = cache[key]
        size = layout.crop_size
        scale = min(size / scene.height, size / scene.width)
        top = (size - int(scene.height * scale)) // 2
        left = (size - int(scene.width * scale)) // 2
        row = min(int((cy * scale + top) // patch), grid[0] - 1)
        col = min(int((cx * scale + left) // patch), grid[1] - 1)
        patches.append(features[0, 0, row * grid[1] + col].numpy())
        tokens.append(image[0, 0, (row // config.image_pooling_h) * tokens_per_row
                            + col // pool_w].numpy())
        shapes.append(SHAPES.index(obj.shape))
        large.append(obj.size == "large")
    return np.array(patches), np.array(tokens), np.array(shapes), np.array(large)


def fit_and_score(train_x: np.ndarray | torch.Tensor, train_y: np.ndarray,
                  test_x: np.ndarray | torch.Tensor, test_y: np.ndarray, test_large: np.ndarray,
                  hidden: int, steps: int, seed: int) -> dict[str, float]:
    """Train a classifier (linear if ``hidden`` is 0) and score it, overall and per size."""
    torch.manual_seed(seed)
    train_x, test_x = torch.as_tensor(train_x), torch.as_tensor(test_x)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    dim = train_x.shape[1]
    net = (torch.nn.Linear(dim, len(SHAPES)) if hidden == 0 else
           torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, len(SHAPES))))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    labels = torch.as_tensor(train_y)
    for _ in range(steps):
        index = torch.randint(0, len(train_x), (128,))
        loss = F.cross_entropy(net(train_x[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        right = net(test_x).argmax(1).numpy() == test_y
    return {"all": float(right.mean()), "large": float(right[test_large].mean()),
            "small": float(right[~test_large].mean()), "n": len(test_y)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="*",
                        help="stage-0 outputs or trained models whose ViT to probe")
    parser.add_argument("--scenes", type=int, default=400, help="training scenes")
    parser.add_argument("--steps", type=int, default=3000, help="classifier training steps")
    parser.add_argument("--view", type=int, default=112, help="the model's view size (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.scenes < 2:
        parser.error("--scenes must be at least 2")
    torch.set_num_threads(args.threads)
    train = range(TRAIN_SEEDS, TRAIN_SEEDS + args.scenes)
    test = range(TEST_SEEDS, TEST_SEEDS + max(2, args.scenes // 5))

    def report(name: str, scores: dict[str, float]) -> None:
        print(f"{name}: shape accuracy {scores['all']:.3f} (large {scores['large']:.3f}, "
              f"small {scores['small']:.3f}; {scores['n']} held-out objects, chance 0.25)")

    print(f"shape of each object, held out ({args.view} px view)")
    x, y, _ = pixel_dataset(train, args.view)
    tx, ty, tl = pixel_dataset(test, args.view)
    report(f"pixels ({WINDOW}x{WINDOW} around the centre, MLP)",
           fit_and_score(x, y, tx, ty, tl, 256, args.steps, args.seed))
    for directory in args.directories:
        try:
            config, encode = load_vision(directory)
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            raise SystemExit(f"cannot load {directory!r}: {error}")
        patches, tokens, y, _ = feature_dataset(train, config, encode)
        test_patches, test_tokens, ty, tl = feature_dataset(test, config, encode)
        for name, train_x, test_x in (("patch", patches, test_patches),
                                      ("token", tokens, test_tokens)):
            report(f"{directory} {name} at the centre (linear)",
                   fit_and_score(train_x, y, test_x, ty, tl, 0, args.steps, args.seed))


if __name__ == "__main__":
    main()
