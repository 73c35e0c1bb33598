"""``python -m videomolmo_ros.train --out DIR``: train the small VideoMolmo on synthetic videos.

Writes the final model (release layout + tokenizer + training.json) into DIR, resumable
checkpoints into DIR/checkpoints, one JSON line per step into DIR/log.jsonl. ``--resume``
continues from the newest checkpoint in DIR with the same recipe, bit-exactly; the schedule
(``--steps``, rates) and checkpointing may change on a resume, and ``training.json`` records
each change (``resumed``) for ``train.reproduce``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from videomolmo_ros.data.synthetic import KINDS
from videomolmo_ros.model.vision import CONV_STEM_PLACES
from videomolmo_ros.train.dataset import DataConfig
from videomolmo_ros.train.flags import json_object
from videomolmo_ros.train.presets import PRESETS
from videomolmo_ros.train.trainer import CLIP_BY, TrainConfig, Trainer


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    d, t = DataConfig(), TrainConfig(output_dir="")
    p = argparse.ArgumentParser(prog="python -m videomolmo_ros.train", description=__doc__)
    p.add_argument("--out", required=True, help="output directory (model, checkpoints, log)")
    p.add_argument("--preset", default=t.preset, choices=sorted(PRESETS))
    p.add_argument("--model-overrides", default="{}",
                   help="JSON object of VideoMolmoConfig fields replacing the preset's (with "
                        "--init-from, the started model's; only fields that keep every weight's "
                        "shape, e.g. the input size)")
    p.add_argument("--no-temporal", action="store_true",
                   help="single-frame ablation: no temporal module and no history frames")
    p.add_argument("--steps", type=int, default=t.steps, help="optimizer steps")
    p.add_argument("--batch-frames", type=int, default=t.batch_frames,
                   help="keyframes per micro-batch")
    p.add_argument("--grad-accum", type=int, default=t.grad_accum,
                   help="micro-batches per optimizer step")
    p.add_argument("--lr-llm", type=float, default=t.lr_llm)
    p.add_argument("--lr-vision", type=float, default=t.lr_vision,
                   help="ViT, temporal module, pooling and projector")
    p.add_argument("--weight-decay", type=float, default=t.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    p.add_argument("--min-lr-ratio", type=float, default=t.min_lr_ratio,
                   help="the cosine ends at this fraction of the peak learning rate")
    p.add_argument("--max-grad-norm", type=float, default=t.max_grad_norm)
    p.add_argument("--seed", type=int, default=t.seed, help="initial weights")
    p.add_argument("--data-seed", type=int, default=d.seed, help="scenes, keyframes, queries")
    p.add_argument("--queries-per-frame", type=int, default=d.queries_per_frame)
    p.add_argument("--frames-per-scene", type=int, default=d.frames_per_scene)
    p.add_argument("--interleave", type=int, default=d.interleave)
    p.add_argument("--pool-size", type=int, default=None,
                   help="a fixed pool of scenes (default: new scenes, never repeated)")
    p.add_argument("--history-frames", type=int, default=d.history_frames, help="l")
    p.add_argument("--history-stride", type=int, default=d.history_stride,
                   help="s: history frames t-s, t-2s, ..., t-l*s (1 = the release's t-1..t-l)")
    p.add_argument("--captions", type=int, default=d.captions, choices=(0, 1),
                   help="a dense-caption segment per keyframe (Molmo's caption pre-training)")
    p.add_argument("--kinds", default=",".join(KINDS), help="expression kinds to train on")
    p.add_argument("--kind-weights", default="{}",
                   help='JSON object of relative odds of the kinds (others weigh 1), e.g. '
                        '{"spatial": 2}')
    p.add_argument("--scene", default="{}", help="JSON object of SceneConfig overrides")
    p.add_argument("--save-every", type=int, default=t.save_every)
    p.add_argument("--keep-checkpoints", type=int, default=t.keep_checkpoints)
    p.add_argument("--tokenizer", default=None, help="a saved tokenizer (default: build one)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-init-connector", action="store_true",
                   help="keep the std-0.02 init of pooling and projector (see init_connector)")
    p.add_argument("--no-init-positions", action="store_true",
                   help="keep the random ViT positional table (see init_positions)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints")
    p.add_argument("--init-from", default=None,
                   help="start from this trained model (fresh optimizer and schedule), e.g. the "
                        "output of an earlier curriculum stage")
    p.add_argument("--init-vision-from", default=None,
                   help="start ViT, pooling and projector from a stage-0 pre-training "
                        "(train.vision_pretrain --out)")
    p.add_argument("--monitor-every", type=int, default=t.monitor_every,
                   help="log held-out grounding signals every N steps (train.monitor); 0 = off")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop at this step (the schedule stays that of --steps); the model is "
                        "then DIR/checkpoints/step-NNNNNN, a start for --init-from")
    p.add_argument("--query-recall", type=float, default=t.query_recall,
                   help="weight of the training-only query-recall loss (trainer."
                        "query_recall_loss); 0 = the paper's loss alone")
    p.add_argument("--keep-readouts", type=float, default=t.keep_readouts,
                   help="weight of stage 0's dense read-out losses kept on the image tokens "
                        "(TrainConfig.keep_readouts); 0 = off")
    p.add_argument("--motion-readout", type=float, default=t.motion_readout,
                   help="weight of a motion read-out among --keep-readouts (TrainConfig."
                        "motion_readout; needs the temporal module); 0 = off")
    p.add_argument("--referent-map", type=float, default=t.referent_map,
                   help="weight of the training-only referent-map loss (trainer."
                        "referent_map_loss); 0 = off")
    p.add_argument("--referent-layer", type=int, default=t.referent_layer,
                   help="the LLM layer (Python index) whose head 0 --referent-map supervises")
    p.add_argument("--clip-by", default=t.clip_by, choices=CLIP_BY,
                   help="side: clip the LLM, the vision side and each training-only head to "
                        "--max-grad-norm on its own; all: everything together (runs recorded "
                        "before this option)")
    p.add_argument("--add-conv-stem", action="store_true",
                   help="give the ViT a conv branch beside its linear patch embedding, output "
                        "layer at zero (TrainConfig.add_conv_stem)")
    p.add_argument("--conv-stem-at", choices=CONV_STEM_PLACES, default=t.conv_stem_at,
                   help="where that branch adds: to the patch embedding, or to the ViT's "
                        "output features")
    p.add_argument("--lr-stem", type=float, default=None,
                   help="peak learning rate of that branch (default: --lr-vision)")
    p.add_argument("--stem-output-scale", type=float, default=t.stem_output_scale,
                   help="with --init-vision-from and --add-conv-stem: multiply the loaded "
                        "branch's output layer by this (0: the started model computes what "
                        "--init-from did, the branch's output is learnt afresh)")
    p.add_argument("--readout-weights", default="{}",
                   help='JSON object of per-attribute weights inside --keep-readouts, e.g. '
                        '{"shape": 5}')
    p.add_argument("--head-warmup", type=int, default=t.head_warmup,
                   help="steps that the fresh training-only heads (--query-recall, "
                        "--keep-readouts) train alone, the model frozen, before step 1 "
                        "(TrainConfig.head_warmup); 0 = none")
    p.add_argument("--grow-llm", type=int, default=t.grow_llm,
                   help="with --init-from: that many more LLM blocks, each a copy of the one "
                        "before it with its output projections at zero (TrainConfig.grow_llm)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.stop_after is not None and not 0 < a.stop_after <= a.steps:
        p.error(f"--stop-after must be in 1..--steps ({a.steps}), not {a.stop_after}")
    try:
        kind_weights = json_object(a.kind_weights, "--kind-weights")
        data = DataConfig(
            seed=a.data_seed, scene=json.loads(a.scene), pool_size=a.pool_size,
            frames_per_scene=a.frames_per_scene, interleave=a.interleave,
            queries_per_frame=a.queries_per_frame, history_frames=a.history_frames,
            history_stride=a.history_stride, kinds=tuple(k for k in a.kinds.split(",") if k),
            kind_weights=kind_weights, captions=a.captions)
        config = train_config(a, data)
    except (ValueError, TypeError) as error:
        p.error(str(error))
    return config, a


def train_config(a: argparse.Namespace, data: DataConfig) -> TrainConfig:
    """The TrainConfig the parsed flags describe (ValueError: they contradict each other)."""
    return TrainConfig(
        output_dir=a.out, preset=a.preset, model_overrides=json.loads(a.model_overrides),
        temporal=not a.no_temporal, data=data, steps=a.steps, batch_frames=a.batch_frames,
        grad_accum=a.grad_accum, lr_llm=a.lr_llm, lr_vision=a.lr_vision,
        weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, min_lr_ratio=a.min_lr_ratio,
        max_grad_norm=a.max_grad_norm, seed=a.seed, save_every=a.save_every,
        keep_checkpoints=a.keep_checkpoints, tokenizer=a.tokenizer, threads=a.threads,
        init_connector=not a.no_init_connector, init_positions=not a.no_init_positions,
        init_from=a.init_from, init_vision_from=a.init_vision_from,
        monitor_every=a.monitor_every, query_recall=a.query_recall,
        keep_readouts=a.keep_readouts, motion_readout=a.motion_readout,
        referent_map=a.referent_map,
        referent_layer=a.referent_layer, clip_by=a.clip_by, add_conv_stem=a.add_conv_stem,
        conv_stem_at=a.conv_stem_at,
        lr_stem=a.lr_stem, stem_output_scale=a.stem_output_scale,
        readout_weights=json_object(a.readout_weights, "--readout-weights"),
        head_warmup=a.head_warmup, grow_llm=a.grow_llm)


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse_args(argv)
    try:
        trainer = Trainer(config, resume=args.resume)
    except ValueError as error:  # a recipe that cannot run (or resume): say why, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    if trainer.step:
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    losses = trainer.train(steps=args.stop_after, progress=not args.no_progress)
    if losses:
        where = config.output_dir if trainer.step >= config.steps else trainer.checkpoint_path()
        print(f"steps {trainer.step}: loss {losses[0]:.4f} -> {losses[-1]:.4f}; model in {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
