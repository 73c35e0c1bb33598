"""Where a trained model's LLM looks while it answers: per attention head of one layer (by
default the last), how much attention lands on the queried objects' image tokens, on held-out
frames.

    python benchmarks/referent_attention.py MODEL_DIR [MODEL_DIR ...] --samples 96 [--layer -1]

For every query of held-out 3-6 object frames whose referent is visible, at the position that
predicts the answer's first token (teacher-forced, as in training):

* ``loss``: ``train.trainer.referent_map_loss`` of the head, the cross-entropy of its attention
  against the referents' share of each image token (what ``--referent-map`` trains head 0 on);
* ``top-1``: how often the image token the head attends most is one a referent covers.

Two references on the same queries: ``objects``, attention spread over every object's tokens
in proportion to coverage (a head that finds objects but ignores the words), and ``ideal``,
the referents' own coverage (the lowest loss there is). A head reads the query when it beats
``objects``.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from videomolmo_ros.model import loading
from videomolmo_ros.train.dataset import IGNORE_INDEX, DataConfig, PointingDataset, collate
from videomolmo_ros.train.monitor import HELD_OUT_DATA_SEED
from videomolmo_ros.train.trainer import packed_forward, referent_map_loss
from videomolmo_ros.train.vision_pretrain import pool_to_tokens, view_coverage

SCENE = {"num_objects": [3, 6]}
BATCH = 8


def held_out(model, tokenizer, samples: int) -> list:
    """Samples of held-out scenes drawn like the training ones, with referent maps."""
    history = (model.config.temporal.history_frames
               if model.vision_backbone.adapter is not None else 0)
    data = DataConfig(seed=HELD_OUT_DATA_SEED, scene=SCENE, history_frames=history,
                      queries_per_frame=2, frames_per_scene=4, interleave=16)
    dataset = PointingDataset(data, model.config, tokenizer, referent_maps=True)
    out = []
    for i in range(samples):
        sample = dataset[7 * i]
        scene = dataset.scene_for(7 * i)
        layout = dataset.preprocessor.frame(scene.frames[sample.frame_index]).layout
        objects = pool_to_tokens(view_coverage(scene.masks[sample.frame_index], layout,
                                               model.config), model.config).sum(-1)
        out.append((sample, torch.from_numpy(objects.astype(np.float32)).flatten()))
    return out


@torch.no_grad()
def head_scores(model_dir: str, samples: int, layer: int = -1) -> dict[str, list[float]]:
    """Per head (and the two references): the mean loss and top-1 rate over the queries."""
    model = loading.load_videomolmo(model_dir).eval()
    tokenizer = loading.load_tokenizer(model_dir)
    layers = model.config.num_hidden_layers
    if not -layers <= layer < layers:
        raise ValueError(f"--layer {layer} is not a layer of its {layers}-layer LLM")
    items = held_out(model, tokenizer, samples)
    heads = model.config.num_attention_heads
    losses: dict[str, list[float]] = {f"head {h}": [] for h in range(heads)}
    losses.update(objects=[], ideal=[])
    top1: dict[str, list[float]] = {name: [] for name in losses}
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        batch = collate([sample for sample, _ in chunk], tokenizer.pad_token_id)
        _, _, attention = packed_forward(model, batch, attention_of_layer=layer)
        first = (batch.labels[:, 1:] != IGNORE_INDEX) & (batch.labels[:, :-1] == IGNORE_INDEX)
        rows, positions = first.nonzero(as_tuple=True)
        coverage = batch.referent_maps[rows, batch.segments[rows, positions]].flatten(1)
        index = batch.image_input_idx.flatten(1)[rows]
        valid = (index >= 0) & (coverage.sum(1, keepdim=True) > 0)
        seen = valid.any(1)
        if not bool(seen.any()):
            continue
        objects = torch.stack([chunk[int(r)][1] for r in rows])
        candidates = {f"head {h}": attention[:, h][rows[:, None], positions[:, None],
                                                   index.clamp(min=0)] for h in range(heads)}
        candidates["objects"] = objects / objects.sum(1, keepdim=True).clamp(min=1e-9)
        candidates["ideal"] = coverage / coverage.sum(1, keepdim=True).clamp(min=1e-9)
        for name, weights in candidates.items():
            weights = weights.float()[seen]
            losses[name] += [float(referent_map_loss(w[None], c[None], v[None])) for w, c, v in
                             zip(weights, coverage[seen], valid[seen])]
            if name == "objects":  # a token drawn in proportion to coverage: its chance
                hit = (weights * (coverage[seen] > 0)).sum(1)
            else:
                hit = (coverage[seen].gather(1, weights.argmax(1, keepdim=True))[:, 0] > 0)
            top1[name] += hit.float().tolist()
    return {name: [float(np.mean(losses[name])), float(np.mean(top1[name])),
                   len(losses[name])] for name in losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="trained model directories")
    parser.add_argument("--samples", type=int, default=96, help="held-out keyframes")
    parser.add_argument("--layer", type=int, default=-1, help="LLM layer (Python index)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    torch.set_num_threads(args.threads)
    print(f"attention of LLM layer {args.layer} at each answer's first position, held-out "
          f"{SCENE['num_objects'][0]}-{SCENE['num_objects'][1]} object frames "
          "(loss: lower is more on the referents)")
    for model_dir in args.models:
        try:
            scores = head_scores(model_dir, args.samples, args.layer)
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot load {model_dir!r}: {error}")
        queries = scores["ideal"][2]
        print(f"{model_dir} ({queries} queries):")
        for name, (loss, top, _) in scores.items():
            print(f"  {name:8s} loss {loss:6.3f}  top-1 on a referent {top:.3f}")


if __name__ == "__main__":
    main()
