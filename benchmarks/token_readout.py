"""What a trained model's LLM could read from its image tokens: fresh linear read-outs, fitted
on frozen image tokens, scored on held-out frames.

    python benchmarks/token_readout.py MODEL_DIR [MODEL_DIR ...] --frames 1024

For each model (release layout, e.g. a ``python -m videomolmo_ros.train`` output or one of its
checkpoints), the vision side (ViT, pooling, projector; no temporal module) encodes synthetic
frames of 3-6 objects; the stage-0 read-outs (``train.vision_pretrain.DenseHeads``: colour,
shape, size, texture of the object owning each token, that object's point, the token's own
position) are trained from scratch on those tokens and scored on frames of other scenes. The
same numbers as stage 0's ``token_*`` scores, but for any later stage: they tell whether the
pointing stages kept the attributes that attribute queries need readable (chance among object
tokens: colour 1/7, shape 1/4, texture 1/3, size 1/2).
"""
from __future__ import annotations

import argparse

import torch

from videomolmo_ros.model import loading
from videomolmo_ros.train.vision_pretrain import DenseHeads, DenseTargets, FrameStream

SCENE = {"num_objects": [3, 6]}
TRAIN_SEEDS, TEST_SEEDS = 700_000, 600_000  # both below the pointing stage's training range


def token_dataset(model: torch.nn.Module, seeds: int, frames: int) -> tuple[torch.Tensor,
                                                                          DenseTargets]:
    """Image tokens (N, T, K, d) of ``frames`` frames and their per-token targets."""
    stream = FrameStream(SCENE, 4, seeds, model.config)
    tokens, targets = [], []
    for first in range(0, frames, 32):
        crops, target = stream.frames(first, min(32, frames - first))
        with torch.no_grad():
            features = model.vision_backbone.encode(crops)
            tokens.append(model.vision_backbone.image_embeddings(features, None))
        targets.append(target.tokens)
    return torch.cat(tokens), DenseTargets(
        {k: torch.cat([t.classes[k] for t in targets]) for k in targets[0].classes},
        torch.cat([t.point for t in targets]), torch.cat([t.owned for t in targets]),
        torch.cat([t.position for t in targets]))


def subset(targets: DenseTargets, index: torch.Tensor) -> DenseTargets:
    return DenseTargets({k: v[index] for k, v in targets.classes.items()}, targets.point[index],
                        targets.owned[index], targets.position[index])


def readout_scores(model_dir: str, frames: int, steps: int, seed: int) -> dict[str, float]:
    model = loading.load_videomolmo(model_dir).eval()
    train_x, train_y = token_dataset(model, TRAIN_SEEDS, frames)
    test_x, test_y = token_dataset(model, TEST_SEEDS, max(64, frames // 4))
    torch.manual_seed(seed)
    heads = DenseHeads(model.config.hidden_size)
    optimizer = torch.optim.Adam(heads.parameters(), lr=3e-3)
    for _ in range(steps):
        index = torch.randint(0, len(train_x), (64,))
        loss, _ = heads.losses(train_x[index], subset(train_y, index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return heads.scores(test_x, test_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="trained model directories")
    parser.add_argument("--frames", type=int, default=1024, help="training frames per model")
    parser.add_argument("--steps", type=int, default=600, help="read-out training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.frames < 32:
        parser.error("--frames must be at least 32")
    torch.set_num_threads(args.threads)
    print("held-out linear read-outs of the image tokens (object tokens; point error as a "
          "fraction of the frame)")
    for model_dir in args.models:
        try:
            scores = readout_scores(model_dir, args.frames, args.steps, args.seed)
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot load {model_dir!r}: {error}")
        print(model_dir + ": " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
