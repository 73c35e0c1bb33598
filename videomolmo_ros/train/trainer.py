"""The training loop: the paper's recipe (Sec. 5, App. A) at the scale of a CPU.

* Loss: cross-entropy on the answer tokens only (point text and its ``<eos>``; prompt and image
  tokens masked), averaged over all answer tokens of an optimizer step, so gradient
  accumulation gives the same update as one big batch. Optionally (``query_recall`` > 0, not
  in the paper) plus a training-only loss that makes those positions name the query's words
  (``query_recall_loss``, which says why); optionally (``referent_map`` > 0, not in the
  paper either) a loss that makes one attention head of the LLM look at the referents' image
  tokens while it writes the answer (``referent_map_loss``).
* Forward: the keyframe is encoded with gradients; its l history frames under ``no_grad`` (as
  the release encodes them); temporal module, pooling, projector; all queries of a keyframe in
  one packed sequence (``dataset``), so each query sees the image exactly as at inference.
* AdamW (0.9, 0.95), eps 1e-6, weight decay 0.1 on matrices only; parameter groups for the
  LLM (decoder + LM head) and the vision side (ViT, temporal module, pooling, projector). The
  paper's 1e-5 / 5e-6 fine-tune a pretrained 7B model, its lower vision rate protecting a
  pretrained CLIP. The small model starts from scratch on both sides; both default to 2e-4.
  Not higher: at 2e-3 the loss falls smoothly (the answer format) but the LLM learns to look
  things up in the image far more slowly (the full model still ignored it after 2,500 steps).
  ``benchmarks/retrieval_lr.py`` shows it on the bare small LLM finding the one marked token
  among 32 (chance 0.03): held-out accuracy after 300 / 600 steps is 0.96 / 0.97 at 2e-4,
  0.46 / 0.62 at 5e-4, 0.54 / 0.79 at 1e-3 and 0.18 / 0.52 at 2e-3.
  Linear warmup (100 steps) then cosine down to ``min_lr_ratio`` of the peak.
* Gradient clipping at 1.0, fp32, gradient accumulation.
* Initialisation from scratch: the model's own init, plus Xavier-normal pooling and projector
  (``init_connector``: the std-0.02 default lets almost no image signal reach the LLM at step
  0), optionally the vision side of a stage-0 pre-training (``init_vision_from``, see
  ``train.vision_pretrain``). ``init_from`` starts from a trained model instead (curriculum
  stages).
* Seeded and reproducible: the initial weights follow ``seed``; samples are a pure function of
  (data config, sample index), and the sample index of a step is ``step * frames_per_step``.
  A checkpoint (release-layout model + tokenizer + ``trainer_state.pt`` with optimizer,
  scheduler, step and torch RNG) resumes bit-exactly.
* Output: ``output_dir`` holds the final model in the release layout (``config.json``,
  safetensors + index), the tokenizer and ``training.json`` (the recipe), loadable with
  ``VideoMolmoPointer.from_pretrained(output_dir)``; ``checkpoints/step-NNNNNN/`` the
  resumable checkpoints; ``log.jsonl`` one line per step.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from videomolmo_ros.model import loading
from videomolmo_ros.model.config import VideoMolmoConfig
from videomolmo_ros.model.growth import deepen_llm
from videomolmo_ros.model.temporal import TemporalModule
from videomolmo_ros.model.videomolmo import VideoMolmoModel
from videomolmo_ros.model.vision import add_conv_stem, scale_conv_stem_output
from videomolmo_ros.train.dataset import (IGNORE_INDEX, Batch, DataConfig, PointingDataset,
                                          collate)
from videomolmo_ros.train.presets import preset, with_overrides
from videomolmo_ros.train.tokenizer import build_tokenizer, check_layout

STATE_NAME = "trainer_state.pt"
RECIPE_NAME = "training.json"
ANCESTRY_NAME = "stages.json"  # the recipes of the runs this one started from (at its start)
LOG_NAME = "log.jsonl"
CHECKPOINTS = "checkpoints"
READOUT_LR = 1e-3  # the read-out heads start fresh: stage 0's rate for them
HEAD_WARMUP_LR = 1e-3  # the heads' constant rate while they train alone (warm_up_heads)
# Where the frames of that warm-up start: a sample index no run's steps reach.
HEAD_WARMUP_FIRST_FRAME = 2 ** 48
HEAD_WARMUP_LOG = "head_warmup.jsonl"
CLIP_BY = ("side", "all")


@dataclass
class TrainConfig:
    """Everything a run depends on (saved as ``training.json`` and in every checkpoint)."""

    output_dir: str
    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    temporal: bool = True  # False = the single-frame ablation (no module, no history)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 1000
    batch_frames: int = 2  # keyframes per micro-batch
    grad_accum: int = 2  # micro-batches per optimizer step
    lr_llm: float = 2e-4
    lr_vision: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 100
    keep_checkpoints: int = 2
    tokenizer: str | None = None  # a saved tokenizer directory; None = build one
    threads: int | None = None
    init_connector: bool = True  # Xavier pooling + projector (see ``init_connector``)
    init_positions: bool = True  # sin-cos ViT positions (see ``init_positions``)
    # Start from this model (release layout + tokenizer; e.g. an earlier curriculum stage)
    # with a fresh optimizer and schedule; its config.json replaces the preset, and
    # model_overrides then apply to it (only fields that keep every weight's shape).
    init_from: str | None = None
    # A stage-0 vision side (``train.vision_pretrain``: ViT, pooling, projector) for a run from
    # scratch: our stand-in for the pre-trained CLIP (and connector) that Molmo starts from.
    # With ``init_from``: a stage 0 started from that model (``vision_pretrain --init-from``),
    # whose vision side replaces the model's (with ``add_conv_stem`` if it has the branch).
    init_vision_from: str | None = None
    # Every this many steps, held-out grounding signals go into the log (``train.monitor``);
    # 0 = never.
    monitor_every: int = 0
    # Weight of the query-recall loss (``query_recall_loss``); 0 = the paper's loss alone.
    query_recall: float = 0.0
    # Weight of stage 0's dense read-out losses kept on the keyframe's image embeddings during
    # pointing (fresh ``vision_pretrain.DenseHeads`` with object attributes, trained along,
    # not exported); 0 = off. Why: without it the image tokens lose what the query names
    # (colour read at 0.97 after stage 0 fell to 0.44 through the pointing stages) while the
    # LLM has not yet learnt to use it. Not in the paper (its CLIP is frozen knowledge).
    keep_readouts: float = 0.0
    # Weight, inside those read-outs, of one more: the motion (static / left / right / up /
    # down) of the object each image token shows; 0 = off. It needs ``keep_readouts`` > 0 and
    # the temporal module, the only part that sees earlier frames: a direct signal for M to
    # carry motion into the tokens, which the answer loss alone did not give it (a shipped
    # model answered motion queries alike with its history or with the keyframe repeated).
    motion_readout: float = 0.0
    # Weight of the referent-map loss (``referent_map_loss``): one attention head of the LLM
    # must look at the referents' image tokens while the answer is written; 0 = off. Not in
    # the paper.
    referent_map: float = 0.0
    # The LLM layer (Python index) whose head ``REFERENT_HEAD`` that loss supervises.
    referent_layer: int = -1
    # How ``max_grad_norm`` clips (``clip_gradients``): "side" clips the LLM, the vision side
    # and each training-only head on its own; "all" clips every trained parameter together
    # (runs recorded before this option existed, the shipped model's included).
    clip_by: str = "side"
    # Give the ViT a conv branch beside its linear patch embedding (``vision.add_conv_stem``:
    # output layer at zero, so a started model computes exactly what it did). Why: the small
    # ViT from scratch does not learn shape with the linear embedding alone; the conv one
    # does (``benchmarks/shape_learning.py``), and a trained linear model keeps its training.
    add_conv_stem: bool = False
    # Where that branch adds: "embedding" (before the ViT's blocks) or "features" (after them;
    # ``vision.CONV_STEM_PLACES``).
    conv_stem_at: str = "embedding"
    # Peak learning rate of that branch (a fresh module beside a trained one); None = lr_vision.
    lr_stem: float | None = None
    # With ``init_vision_from`` and ``add_conv_stem``: the loaded branch's output layer is
    # multiplied by this. 0 keeps the stage 0's conv layers and learns their output afresh
    # from zero, so the started model computes exactly what ``init_from`` did. Why: a branch
    # loaded at full strength cost point F1 0.10 at step 0 (``L``, twenty-sixth session)
    # that 800 steps did not win back; started at 0, the branch went into the model shipped
    # in the twenty-seventh session (``MZ27``). 1 = as loaded.
    stem_output_scale: float = 1.0
    # Per-attribute weights inside the kept read-outs (``DenseHeads``), e.g. {"shape": 5.0}.
    readout_weights: dict[str, float] = field(default_factory=dict)
    # Steps that the fresh training-only heads (query recall, kept read-outs) train alone, the
    # model frozen, before step 1, on frames the run's steps never use (``Trainer.
    # warm_up_heads``); 0 = none. Why: a random recall head's gradient on the LLM is about six
    # times the answer's (norm 6.6 against 1.2), so a stage started from a trained model first
    # unlearnt it: ``HI22`` fell from point F1 0.664 to 0.559 in 100 steps at half rates with
    # that head (read-outs off), only to 0.653 without it, and scored 0.665 with both heads
    # warmed up (issue 4, twenty-second session). Not in the paper.
    head_warmup: int = 0
    # With ``init_from``: give the started model's LLM this many more blocks
    # (``growth.deepen_llm``: copies of the block before each, output projections at zero, so
    # the grown model computes exactly what it did). Why: the 4-block LLM stops near point F1
    # 0.65 whatever the recipe (issue 4, sessions 17-22); 4 more blocks did not move it
    # (``N4``, 0.661, twenty-third session). 0 = none. Not in the paper.
    grow_llm: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**{**self.data, "kinds": tuple(self.data.get(
                "kinds", DataConfig().kinds))})
        self.betas = tuple(float(b) for b in self.betas)
        if not self.temporal and self.data.history_frames:
            self.data = dataclasses.replace(self.data, history_frames=0)
        for name in ("steps", "batch_frames", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if min(self.query_recall, self.keep_readouts, self.referent_map,
               self.motion_readout) < 0:
            raise ValueError("query_recall, keep_readouts, referent_map and motion_readout "
                             "must be >= 0")
        if self.motion_readout > 0 and not (self.keep_readouts > 0 and self.temporal
                                            and self.data.history_frames > 0):
            raise ValueError("motion_readout needs keep_readouts > 0 and the temporal module "
                             "with history frames (one frame cannot show motion)")
        if self.clip_by not in CLIP_BY:
            raise ValueError(f"clip_by must be one of {CLIP_BY}, got {self.clip_by!r}")
        if self.lr_stem is not None and self.lr_stem <= 0:
            raise ValueError(f"lr_stem must be > 0, got {self.lr_stem}")
        if self.stem_output_scale < 0:
            raise ValueError(f"stem_output_scale must be >= 0, got {self.stem_output_scale}")
        if self.stem_output_scale != 1.0 and not (self.init_vision_from and self.add_conv_stem):
            raise ValueError("stem_output_scale scales the conv branch loaded from a stage 0: "
                             "it needs init_vision_from and add_conv_stem")
        if self.readout_weights and not self.keep_readouts > 0:
            raise ValueError("readout_weights weigh the kept read-outs: they need "
                             "keep_readouts > 0")
        if any(w < 0 for w in self.readout_weights.values()):
            raise ValueError(f"readout_weights must be >= 0, got {self.readout_weights}")
        if self.head_warmup < 0:
            raise ValueError(f"head_warmup must be >= 0, got {self.head_warmup}")
        if self.head_warmup and not (self.query_recall > 0 or self.keep_readouts > 0):
            raise ValueError("head_warmup warms the training-only heads: it needs "
                             "query_recall > 0 or keep_readouts > 0")
        if self.grow_llm < 0:
            raise ValueError(f"grow_llm must be >= 0, got {self.grow_llm}")
        if self.grow_llm and not self.init_from:
            raise ValueError("grow_llm deepens a trained model's LLM: it needs init_from (a "
                             "fresh model takes model_overrides num_hidden_layers)")

    @property
    def frames_per_step(self) -> int:
        return self.batch_frames * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"]["kinds"] = list(self.data.kinds)
        out["betas"] = list(self.betas)
        return out

    def model_config(self, base_vocab_size: int) -> VideoMolmoConfig:
        config = preset(self.preset, base_vocab_size, **self.model_overrides)
        config.temporal.enabled = self.temporal
        config.temporal.history_frames = self.data.history_frames
        config.temporal.history_stride = self.data.history_stride
        config.validate()
        return config


# ------------------------------------------------------------------------------------- model
STEM_PREFIX = "vision_backbone.image_vit.conv_stem."


def parameter_groups(model: VideoMolmoModel, lr_llm: float, lr_vision: float,
                     weight_decay: float = 0.0, lr_stem: float | None = None
                     ) -> list[dict[str, Any]]:
    """AdamW groups: LLM (``llm.*``, ``lm_head``) and vision (``vision_backbone.*``: ViT,
    temporal module, pooling, projector), each split into matrices (decayed) and the 1-D
    norm gains, biases and embedding-like tables kept from decay (``*_nodecay``, the usual
    GPT practice). With ``lr_stem``, the ViT's conv branch (``STEM_PREFIX``) has groups of
    its own (``vision_stem*``; ``clip_by="side"`` clips it on its own, a fresh module
    beside a trained one). Every parameter is in exactly
    one group; empty groups are left out; the LLM's and the vision side's come first."""
    groups: dict[str, list[torch.nn.Parameter]] = {
        "llm": [], "vision": [], "llm_nodecay": [], "vision_nodecay": [],
        "vision_stem": [], "vision_stem_nodecay": []}
    for name, param in model.named_parameters():
        side = "vision" if name.startswith("vision_backbone.") else "llm"
        if lr_stem is not None and name.startswith(STEM_PREFIX):
            side = "vision_stem"
        decayed = param.dim() >= 2 and "embedding" not in name.rsplit(".", 1)[-1]
        groups[side if decayed else side + "_nodecay"].append(param)
    lrs = {"llm": lr_llm, "vision": lr_vision, "vision_stem": lr_stem}
    return [{"params": params, "lr": lrs[name.removesuffix("_nodecay")], "name": name,
             "weight_decay": 0.0 if name.endswith("_nodecay") else weight_decay}
            for name, params in groups.items() if params]


def packed_forward(model: VideoMolmoModel, batch: Batch, attention_of_layer: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Final hidden states (B, L, d) of the packed sequences (apply ``model.lm_head`` for
    logits), the keyframes' image embeddings (B, T, K, d) the LLM received and, when
    ``attention_of_layer`` is given, that LLM layer's attention probabilities (B, H, L, L;
    computed by the eager implementation, whose outputs are the same).

    Keyframe features with gradients, history features without (the release's choice); the
    packed queries use the batch's segment mask and per-query positions.
    """
    features = model.encode_frame(batch.crops)  # (B, T, P, C)
    history = None
    if model.vision_backbone.adapter is not None and batch.history.shape[1] > 0:
        b, l = batch.history.shape[:2]
        with torch.no_grad():
            encoded = model.encode_frame(batch.history.flatten(0, 1))  # (B*l, T, P, C)
        encoded = encoded.unflatten(0, (b, l))
        history = [encoded[:, i] for i in range(l)]
    image = model.image_embeddings(features, history)  # (B, T, K, d)
    embeds = model.embed_inputs(batch.input_ids, image, batch.image_input_idx)
    if attention_of_layer is None:
        hidden = model.llm(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids).last_hidden_state
        return hidden, image, None
    config = model.llm.config
    implementation = config._attn_implementation
    # Only the eager implementation returns the probabilities; it adds a 4-D mask as is, so
    # the boolean mask becomes an additive one.
    additive = torch.zeros(batch.attention_mask.shape, dtype=embeds.dtype).masked_fill(
        ~batch.attention_mask, torch.finfo(embeds.dtype).min)
    config._attn_implementation = "eager"
    try:
        out = model.llm(inputs_embeds=embeds, attention_mask=additive,
                        position_ids=batch.position_ids, output_attentions=True)
    finally:
        config._attn_implementation = implementation
    return out.last_hidden_state, image, out.attentions[attention_of_layer]


def packed_hidden(model: VideoMolmoModel, batch: Batch) -> torch.Tensor:
    """The hidden states of ``packed_forward``."""
    return packed_forward(model, batch)[0]


def answer_loss(model: VideoMolmoModel, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over the answer tokens of ``batch`` (divide by the token count);
    the LM head runs only where a label follows."""
    return step_losses(model, batch)["answer"]


def step_losses(model: VideoMolmoModel, batch: Batch,
                recall_head: torch.nn.Module | None = None,
                readout_heads: torch.nn.Module | None = None,
                referent_layer: int | None = None) -> dict[str, torch.Tensor]:
    """The losses of one micro-batch from one forward pass: ``answer`` (summed answer-token
    cross-entropy), with ``recall_head`` ``recall`` (summed ``query_recall_loss`` of the same
    positions), with ``readout_heads`` (``vision_pretrain.DenseHeads``) ``readout`` (their mean
    loss on the image embeddings against ``batch.token_targets``; see
    ``TrainConfig.keep_readouts``), with ``referent_layer`` ``referent`` (``referent_map_loss``
    of head ``REFERENT_HEAD`` of that LLM layer at the same positions)."""
    hidden, image, attention = packed_forward(model, batch, referent_layer)
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    readout = hidden[:, :-1][keep]  # the positions that predict an answer token
    losses = {"answer": F.cross_entropy(model.lm_head(readout).float(), targets[keep],
                                        reduction="sum")}
    if recall_head is not None:
        rows, _ = keep.nonzero(as_tuple=True)
        segments = batch.segments[:, :-1][keep]
        losses["recall"] = query_recall_loss(recall_head(readout).float(),
                                             batch.query_tokens[rows, segments])
    if readout_heads is not None:
        if batch.token_targets is None:
            raise ValueError("the batch has no token targets (PointingDataset(dense_targets="
                             "True))")
        losses["readout"], terms = readout_heads.losses(image.float(), batch.token_targets)
        if "motion_objects" in terms:  # logged, unweighted: does M make motion readable?
            losses["readout_motion"] = torch.tensor(
                terms["motion_objects"] / readout_heads.attribute_weights["motion"])
    if referent_layer is not None:
        if batch.referent_maps is None:
            raise ValueError("the batch has no referent maps (PointingDataset(referent_maps="
                             "True))")
        rows, positions = keep.nonzero(as_tuple=True)
        segments = batch.segments[rows, positions]
        index = batch.image_input_idx.flatten(1)[rows]  # (N, T*K) sequence positions, -1 none
        head = attention[:, REFERENT_HEAD].float()  # (B, L, L)
        on_image = head[rows[:, None], positions[:, None], index.clamp(min=0)]  # (N, T*K)
        coverage = batch.referent_maps[rows, segments].flatten(1)
        losses["referent"] = referent_map_loss(on_image, coverage, index >= 0)
    return losses


def query_recall_loss(logits: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``logits`` (N, V) against the uniform distribution over the
    distinct ids of ``query_tokens`` (N, Q; -1 = none; rows without ids are skipped).

    Why: at every position that predicts point text, a training-only linear head must name the
    words of the query. The paper has no such loss; its LLM is pre-trained and already carries
    the query to where it answers. A small LLM trained from scratch on point text alone learns
    where objects are but not which one the words name (``benchmarks/retrieval_lr.py
    --objects K`` stays at chance 1/K among K named objects), because the words must first be
    copied forward to the answering position and neither half of that two-step circuit is
    rewarded before the other exists. This loss rewards the copy directly (the same probe then
    reaches 0.99). Not shipped: the head is dropped on export.
    """
    valid = query_tokens >= 0
    rows = valid.any(1)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    logits, query_tokens, valid = logits[rows], query_tokens[rows], valid[rows]
    target = torch.zeros_like(logits)
    target.scatter_add_(1, query_tokens.clamp(min=0), valid.to(logits.dtype))
    target = (target > 0).to(logits.dtype)  # each distinct id once
    target = target / target.sum(1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=-1)).sum()


# The attention head that the referent-map loss supervises (in ``TrainConfig.referent_layer``,
# by default the last layer, whose output the LM head reads the coordinates from).
REFERENT_HEAD = 0


def referent_map_loss(attention: torch.Tensor, coverage: torch.Tensor,
                      valid: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one head's attention ``attention`` (N, M: the probabilities an
    answer-predicting position gives each image token of its keyframe) against each row's
    ``coverage`` (N, M: the fraction of each image token its referents cover) made a
    distribution; ``valid`` (N, M) masks tokens not in the sequence; rows that cover nothing
    (answers of none) are skipped. Attention the head spends off the referents (on other image
    tokens or on text) is what the loss removes.

    Why: the shipped model's points land on objects (about 8 px from the nearest) but on the
    wrong one about as often as a random point would (the nearest object to its point is the
    referent for 0.29 of attribute queries; a random point 0.27). Point text rewards looking at
    the right object only through a few digit tokens; this rewards it directly, at every answer
    token, in one head (``TrainConfig.referent_layer``; by default in the last layer, whose
    output the LM head reads). Not in the paper (its LLM comes
    pre-trained on pointing data); a training-time loss, the model is unchanged.
    """
    coverage = coverage * valid
    rows = coverage.sum(1) > 0
    if not bool(rows.any()):
        return attention.sum() * 0.0
    target = coverage[rows] / coverage[rows].sum(1, keepdim=True)
    return -(target * attention[rows].clamp(min=1e-6).log()).sum(1).mean()


def clip_gradients(param_groups: Sequence[dict[str, Any]], max_norm: float,
                   clip_by: str = "side") -> dict[str, float]:
    """Clip the gradients of the optimizer's ``param_groups`` to ``max_norm`` and return the
    norm before clipping per clip unit: with ``clip_by="side"`` the LLM (``llm*`` groups), the
    vision side (``vision*``) and each training-only head (any other group) separately; with
    ``"all"`` everything together (unit ``all``).

    Why per side: one norm over everything lets the largest loss set everybody's step. Stage 0's
    read-out losses kept during pointing (``keep_readouts``) have gradient norms of 15-190
    where the answer's is about 1-5 (measured, issue 4's ninth session), so clipping them
    together scaled the LLM's update down 15-150 fold: ``--keep-readouts`` silently trained
    the LLM at a fraction of its learning rate. The read-outs never reach the LLM, so each side
    now gets its own budget of ``max_norm``.
    """
    units: dict[str, list[torch.nn.Parameter]] = {}
    for group in param_groups:
        name = group.get("name", "all")
        unit = "all" if clip_by == "all" else name.split("_nodecay")[0]
        units.setdefault(unit, []).extend(group["params"])
    return {unit: float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            for unit, params in units.items()}


@torch.no_grad()
def init_connector(model: VideoMolmoModel) -> None:
    """Xavier-normal initialisation of the 2x2 attention pooling and the projector.

    ``VideoMolmoModel.reset_parameters`` draws every Linear with std 0.02, a stand-in for
    weights that are always loaded. Trained from scratch, that makes the image features reach
    the LLM about 600 times weaker than the token embeddings they are added to (the pooling
    and the SwiGLU projector multiply small numbers), so the LLM starts blind and grounding
    starts late. Xavier normal (as the paper uses for the temporal module) brings them to the
    order of the embeddings from step 0.
    """
    backbone = model.vision_backbone
    for module in (backbone.image_pooling_2d, backbone.image_projector):
        for linear in module.modules():
            if isinstance(linear, torch.nn.Linear):
                torch.nn.init.xavier_normal_(linear.weight)


@torch.no_grad()
def init_positions(model: VideoMolmoModel) -> None:
    """The ViT's positional table (patch rows; the CLS row is kept) set to a 2D sin-cos code:
    half of the channels encode the column, half the row, each as sines and cosines of
    geometrically spaced frequencies (MAE's fixed embedding, used here only as a start; the
    table stays trainable). Written by hand: transformers has no 2D variant to import.

    From scratch, the patch position is the only place the image's coordinates enter the
    model (the LLM's RoPE positions never reach an attention value), so a smooth code from step
    0 lets pointing start early instead of waiting for a random table to organise itself.
    """
    table = model.vision_backbone.image_vit.positional_embedding
    side = int(round((table.shape[0] - 1) ** 0.5))
    dim = table.shape[1]
    if side * side != table.shape[0] - 1 or dim % 4:
        raise ValueError(f"positional table {tuple(table.shape)} is not 1 + side^2 rows with a "
                         f"width divisible by 4")
    quarter = dim // 4
    omega = 1.0 / 10_000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float32),
                                torch.arange(side, dtype=torch.float32), indexing="ij")

    def code(coordinate: torch.Tensor) -> torch.Tensor:  # (side*side,) -> (side*side, dim/2)
        angles = coordinate.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table[1:] = torch.cat([code(cols), code(rows)], dim=1).to(table.dtype)


# ---------------------------------------------------------------------------------- trainer
def start_as_identity(adapter: TemporalModule) -> None:
    """Zero the temporal module's output projection, so f^ = f at the start.

    Our choice, not the paper's (its module is Xavier throughout): on a trained vision side the
    run starts as exactly that single-frame model instead of perturbing the features the LLM
    must learn to read; gradients still reach wo through its input, so the module can grow.
    """
    torch.nn.init.zeros_(adapter.wo.weight)


class Trainer:
    """Builds (or resumes) a run and trains it; see the module docstring."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.output = Path(config.output_dir)
        self.output.mkdir(parents=True, exist_ok=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        checkpoint = latest_checkpoint(self.output) if resume else None
        self.stages = self._record_ancestry(resume)
        if checkpoint is not None or config.init_from:
            source = checkpoint if checkpoint is not None else config.init_from
            self.tokenizer = loading.load_tokenizer(source)
            start_config = None
            if checkpoint is None and config.model_overrides:
                # Fields that keep every weight's shape (the input size, say) may change from
                # one stage to the next; any other override fails the checkpoint's shape check.
                start_config = with_overrides(
                    VideoMolmoConfig.from_pretrained(loading.resolve_checkpoint(source)),
                    config.model_overrides)
                start_config.validate()
            self.model = loading.load_videomolmo(source, config=start_config).train()
            has_temporal = self.model.vision_backbone.adapter is not None
            if checkpoint is None and has_temporal and not config.temporal:
                # A single-frame run started from a stage with a temporal module (the ablation
                # sharing an earlier stage): the module goes, the rest is kept.
                self.model.vision_backbone.adapter = None
                self.model.config.temporal.enabled = has_temporal = False
            if checkpoint is None and config.temporal and not has_temporal:
                # A temporal run started from a single-frame stage (the temporal twin of a
                # shared curriculum): the module is added as the identity (see start_as_identity).
                self.model.config.temporal.enabled = has_temporal = True
                self.model.vision_backbone.adapter = TemporalModule(self.model.config)
                start_as_identity(self.model.vision_backbone.adapter)
            if has_temporal != config.temporal:
                raise ValueError(f"{source} has temporal={not config.temporal}, the run wants "
                                 f"temporal={config.temporal}")
            # The history length and spacing are the run's (an earlier stage may differ).
            self.model.config.temporal.history_frames = config.data.history_frames
            self.model.config.temporal.history_stride = config.data.history_stride
            if checkpoint is None and config.init_vision_from:
                # A stage 0 trained from this model (``vision_pretrain --init-from``, e.g. its
                # new conv branch): its vision side replaces the model's, the LLM is kept.
                from videomolmo_ros.train.vision_pretrain import load_pretrained_vision

                if config.add_conv_stem:
                    add_conv_stem(self.model.vision_backbone.image_vit, config.conv_stem_at)
                load_pretrained_vision(self.model, config.init_vision_from)
                if config.add_conv_stem:
                    scale_conv_stem_output(self.model.vision_backbone.image_vit,
                                           config.stem_output_scale)
            if checkpoint is None and config.grow_llm:
                self.model = deepen_llm(self.model, config.grow_llm)
        else:
            self.tokenizer = (loading.load_tokenizer(config.tokenizer) if config.tokenizer
                              else build_tokenizer())
            model_config = config.model_config(_base_vocab(self.tokenizer))
            torch.manual_seed(config.seed)
            self.model = VideoMolmoModel(model_config).train()
            if config.init_connector:
                init_connector(self.model)
            if config.init_positions:
                init_positions(self.model)
            if config.init_vision_from:
                from videomolmo_ros.train.vision_pretrain import load_pretrained_vision

                load_pretrained_vision(self.model, config.init_vision_from)
                if self.model.vision_backbone.adapter is not None:
                    start_as_identity(self.model.vision_backbone.adapter)
        check_layout(self.tokenizer, self.model.config.embedding_size)
        layers = self.model.config.num_hidden_layers
        if not -layers <= config.referent_layer < layers:
            raise ValueError(f"referent_layer {config.referent_layer} is not a layer of the "
                             f"{layers}-layer LLM")
        self.dataset = PointingDataset(config.data, self.model.config, self.tokenizer,
                                       dense_targets=config.keep_readouts > 0,
                                       referent_maps=config.referent_map > 0)
        if config.add_conv_stem:  # a no-op on a model that has the branch (a later stage)
            # Zero output layer: a started model computes what it did (vision.add_conv_stem).
            add_conv_stem(self.model.vision_backbone.image_vit, config.conv_stem_at)
        groups = parameter_groups(self.model, config.lr_llm, config.lr_vision,
                                  config.weight_decay, lr_stem=config.lr_stem)
        self.recall_head: torch.nn.Linear | None = None
        if config.query_recall > 0:  # training only (see query_recall_loss); not exported
            self.recall_head = torch.nn.Linear(self.model.config.hidden_size,
                                               self.model.config.embedding_size, bias=False)
            torch.nn.init.normal_(self.recall_head.weight, std=0.02)
            groups.append({"params": list(self.recall_head.parameters()), "lr": config.lr_llm,
                           "name": "recall_head", "weight_decay": config.weight_decay})
        self.readout_heads: torch.nn.Module | None = None
        if config.keep_readouts > 0:  # training only (see TrainConfig.keep_readouts)
            from videomolmo_ros.train.vision_pretrain import DenseHeads

            self.readout_heads = DenseHeads(self.model.config.hidden_size, object_attributes=True,
                                            attribute_weights=config.readout_weights,
                                            motion=config.motion_readout)
            groups.append({"params": list(self.readout_heads.parameters()), "lr": READOUT_LR,
                           "name": "readout_heads", "weight_decay": config.weight_decay})
        self.optimizer = torch.optim.AdamW(groups, betas=config.betas,
                                           eps=config.eps, weight_decay=config.weight_decay)
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, config.warmup_steps, config.steps, min_lr_rate=config.min_lr_ratio)
        self.step = 0
        self.losses: list[float] = []
        # What each resume changed (a shorter schedule, say): see _load_state.
        self.resumes: list[dict[str, Any]] = []
        # Whether warm_up_heads has run (a resumed run's heads come from its checkpoint).
        self.heads_warmed = checkpoint is not None
        self.monitor = None
        if config.monitor_every:
            from videomolmo_ros.train.monitor import GroundingMonitor

            self.monitor = GroundingMonitor(config.data, self.model.config, self.tokenizer)
        if checkpoint is not None:
            self._load_state(checkpoint)

    # ---------------------------------------------------------------------------- one step
    def batches(self, step: int) -> list[Batch]:
        """The micro-batches of optimizer step ``step`` (a pure function of the step)."""
        return self._batches_from(step * self.config.frames_per_step)

    def _batches_from(self, first: int) -> list[Batch]:
        cfg = self.config
        pad = int(self.tokenizer.pad_token_id)
        return [collate([self.dataset[first + m * cfg.batch_frames + i]
                         for i in range(cfg.batch_frames)], pad)
                for m in range(cfg.grad_accum)]

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns its loss (mean per answer token) and statistics."""
        started = time.perf_counter()
        batches = self.batches(self.step)
        data_time = time.perf_counter() - started
        tokens = sum(b.num_answer_tokens for b in batches)
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"answer": 0.0, "recall": 0.0, "readout": 0.0, "referent": 0.0,
                "readout_motion": 0.0}
        for batch in batches:
            losses = step_losses(self.model, batch, self.recall_head, self.readout_heads,
                                 self.config.referent_layer if self.config.referent_map > 0
                                 else None)
            self._weighted_loss(losses, tokens, len(batches)).backward()
            for name, value in losses.items():
                sums[name] += float(value.detach())
        total = sums["answer"]
        grad_norms = clip_gradients(self.optimizer.param_groups, self.config.max_grad_norm,
                                    self.config.clip_by)
        grad_norm = math.sqrt(sum(v * v for v in grad_norms.values()))
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        elapsed = time.perf_counter() - started
        frames = self.config.frames_per_step
        record = {"step": self.step, "loss": total / tokens, "grad_norm": float(grad_norm),
                  "lr_llm": lrs[0], "lr_vision": lrs[1], "tokens": tokens,
                  "queries": sum(b.num_queries for b in batches), "frames": frames,
                  "seconds": elapsed, "data_seconds": data_time,
                  **{f"grad_norm_{k}": v for k, v in grad_norms.items()}}
        if self.recall_head is not None:
            record["query_recall_loss"] = sums["recall"] / tokens
        if self.readout_heads is not None:
            record["readout_loss"] = sums["readout"] / len(batches)
        if self.config.motion_readout > 0:  # on the object tokens (chance about 1.5)
            record["readout_motion_loss"] = sums["readout_motion"] / len(batches)
        if self.config.referent_map > 0:
            record["referent_map_loss"] = sums["referent"] / len(batches)
        self.losses.append(record["loss"])
        return record

    def _weighted_loss(self, losses: dict[str, torch.Tensor], tokens: int,
                       num_batches: int) -> torch.Tensor:
        """One micro-batch's share of the step's loss: the summed token losses over the step's
        answer tokens, the per-micro-batch means over its micro-batches."""
        loss = losses["answer"] + self.config.query_recall * losses.get("recall", 0.0)
        loss = loss / tokens
        if "readout" in losses:
            loss = loss + self.config.keep_readouts * losses["readout"] / num_batches
        if "referent" in losses:
            loss = loss + self.config.referent_map * losses["referent"] / num_batches
        return loss

    def warm_up_heads(self) -> list[dict[str, float]]:
        """``TrainConfig.head_warmup`` steps of the training-only heads alone (model frozen,
        constant rate ``HEAD_WARMUP_LR``, their own AdamW, each head clipped on its own) on
        frames from ``HEAD_WARMUP_FIRST_FRAME`` on; one record per step, also written to
        ``head_warmup.jsonl``. The model's weights, optimizer and schedule are untouched."""
        cfg = self.config
        heads = {"recall_head": self.recall_head, "readout_heads": self.readout_heads}
        groups = [{"params": list(head.parameters()), "name": name}
                  for name, head in heads.items() if head is not None]
        optimizer = torch.optim.AdamW(groups, lr=HEAD_WARMUP_LR, betas=cfg.betas, eps=cfg.eps,
                                      weight_decay=cfg.weight_decay)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        for p in trained:  # frozen: nothing flows back into the model, and it costs less
            p.requires_grad_(False)
        records = []
        try:
            with open(self.output / HEAD_WARMUP_LOG, "w", encoding="utf-8") as log:
                for i in range(cfg.head_warmup):
                    batches = self._batches_from(HEAD_WARMUP_FIRST_FRAME
                                                 + i * cfg.frames_per_step)
                    tokens = sum(b.num_answer_tokens for b in batches)
                    optimizer.zero_grad(set_to_none=True)
                    sums = {"recall": 0.0, "readout": 0.0}
                    for batch in batches:
                        losses = step_losses(self.model, batch, self.recall_head,
                                             self.readout_heads)
                        # the answer term is a constant here (frozen model): no gradient
                        self._weighted_loss(losses, tokens, len(batches)).backward()
                        for name in sums:
                            sums[name] += float(losses[name].detach()) if name in losses else 0.0
                    clip_gradients(optimizer.param_groups, cfg.max_grad_norm, "side")
                    optimizer.step()
                    record = {"head_warmup_step": i + 1}
                    if self.recall_head is not None:
                        record["query_recall_loss"] = sums["recall"] / tokens
                    if self.readout_heads is not None:
                        record["readout_loss"] = sums["readout"] / len(batches)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    records.append(record)
        finally:
            for p in trained:
                p.requires_grad_(True)
        return records

    def train(self, steps: int | None = None, progress: bool = True,
              callback: Callable[[dict[str, float]], None] | None = None) -> list[float]:
        """Train until ``steps`` (default: the configured total); checkpoint every
        ``save_every`` steps and at the end; export the final model when the run is complete.
        Returns the losses of the steps run by this call."""
        from tqdm.auto import tqdm

        end = min(self.config.steps, steps if steps is not None else self.config.steps)
        start = self.step
        if start == 0 and self.config.head_warmup and not self.heads_warmed:
            self.warm_up_heads()
            self.heads_warmed = True
        log = open(self.output / LOG_NAME, "a", encoding="utf-8")
        bar = tqdm(total=end, initial=start, disable=not progress, unit="step",
                   dynamic_ncols=True)
        try:
            while self.step < end:
                record = self.train_step()
                if self.monitor is not None and self.step % self.config.monitor_every == 0:
                    record.update({f"held_out_{k}": v for k, v in self.monitor(self.model).items()})
                    bar.write(f"step {self.step}: held-out first digit "
                              f"{record['held_out_first_digit']:.3f}, 'There are none.' recall "
                              f"{record['held_out_none_recall']:.3f}")
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}",
                                fr_s=f"{record['frames'] / record['seconds']:.2f}",
                                q_s=f"{record['queries'] / record['seconds']:.1f}",
                                lr=f"{record['lr_llm']:.1e}")
                if callback is not None:
                    callback(record)
                if self.step % self.config.save_every == 0 or self.step == end:
                    self.save_checkpoint()
        finally:
            bar.close()
            log.close()
        if self.step >= self.config.steps:
            self.export(self.output)
        return self.losses[-(self.step - start):] if self.step > start else []

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint_path(self) -> Path:
        """Where the checkpoint of the current step is (or goes)."""
        return self.output / CHECKPOINTS / f"step-{self.step:06d}"

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-NNNNNN``: release-layout model, tokenizer, trainer state; written
        to a temporary name and renamed, older ones pruned to ``keep_checkpoints``."""
        final = self.checkpoint_path()
        root = final.parent
        partial = root / f".partial-{self.step:06d}"
        shutil.rmtree(partial, ignore_errors=True)
        self.export(partial)
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "losses": list(self.losses),
                    "config": self.config.to_dict(), "resumes": self.resumes,
                    "recall_head": (self.recall_head.state_dict()
                                    if self.recall_head is not None else None),
                    "readout_heads": (self.readout_heads.state_dict()
                                      if self.readout_heads is not None else None)},
                   partial / STATE_NAME)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        kept = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in kept[:-max(1, self.config.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _load_state(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True)
        saved = {"query_recall": 0.0, "keep_readouts": 0.0, "referent_map": 0.0,
                 "motion_readout": 0.0,
                 "referent_layer": -1, "clip_by": "all", "add_conv_stem": False,
                 "conv_stem_at": "embedding", "lr_stem": None, "stem_output_scale": 1.0,
                 "readout_weights": {},
                 "head_warmup": 0, "grow_llm": 0,
                 **state["config"]}  # older checkpoints lack these
        # ... and data fields added since (history_stride, kind_weights): their defaults are
        # what those runs did
        saved["data"] = {**dataclasses.asdict(DataConfig()), **saved["data"]}
        mine = self.config.to_dict()
        fixed = ("data", "batch_frames", "grad_accum", "preset", "temporal", "model_overrides",
                 "seed", "init_from", "init_vision_from", "query_recall", "keep_readouts",
                 "referent_map", "motion_readout", "referent_layer", "clip_by",
                 "add_conv_stem", "conv_stem_at", "lr_stem", "stem_output_scale",
                 "readout_weights", "head_warmup", "grow_llm")
        changed = [k for k in fixed if saved.get(k) != mine.get(k)]
        if changed:
            raise ValueError(f"cannot resume {checkpoint}: the run changed {changed}")
        # The rest may change (the schedule's length or rates, checkpointing): each resume that
        # does is recorded, [before, after] per setting, so that train.reproduce re-runs the
        # run as it happened rather than as its last command says.
        self.resumes = list(state.get("resumes", []))
        changes = {k: [v, mine[k]] for k, v in state["config"].items()
                   if k not in fixed and k != "output_dir" and k in mine and mine[k] != v}
        if changes:
            self.resumes.append({"step": int(state["step"]), "changed": changes})
        if self.recall_head is not None:  # same query_recall (checked above): it was saved
            self.recall_head.load_state_dict(state["recall_head"])
        if self.readout_heads is not None:
            self.readout_heads.load_state_dict(state["readout_heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]
        log = self.output / LOG_NAME
        if log.is_file():  # drop the lines of steps after the checkpoint (an interrupted run)
            lines = [line for line in log.read_text().splitlines()
                     if line.strip() and json.loads(line)["step"] <= self.step]
            log.write_text("".join(line + "\n" for line in lines))

    def _record_ancestry(self, resume: bool) -> list[dict[str, Any]]:
        """The recipes of the runs this one starts from (``ship.ancestry``), read when it
        starts and kept in the run folder: a resumed run reuses them, so a parent changed or
        re-shipped since cannot rewrite this run's history."""
        from videomolmo_ros.train.ship import ancestry

        path = self.output / ANCESTRY_NAME
        if resume and path.is_file():
            return json.loads(path.read_text())
        stages = ancestry(self.config.to_dict())
        path.write_text(json.dumps(stages, indent=2) + "\n")
        return stages

    def export(self, directory: Path) -> Path:
        """The model in the release layout + tokenizer + ``training.json``: what
        ``VideoMolmoPointer.from_pretrained`` loads."""
        directory = Path(directory)
        loading.save_release_layout(self.model, directory)
        self.tokenizer.save_pretrained(str(directory))
        recipe = {"config": self.config.to_dict(), "step": self.step,
                  "final_loss": self.losses[-1] if self.losses else None, "stages": self.stages}
        if self.resumes:  # only then: the recipes of runs never resumed stay as they were
            recipe["resumed"] = self.resumes
        (directory / RECIPE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
        return directory


def _base_vocab(tokenizer: Any) -> int:
    """The base vocabulary of a tokenizer laid out like Molmo's: the id of ``<im_start>``."""
    from videomolmo_ros.model.preprocessing import IM_START_TOKEN

    return int(tokenizer.convert_tokens_to_ids(IM_START_TOKEN))


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints``, if any."""
    root = Path(output_dir) / CHECKPOINTS
    found = sorted(p for p in root.glob("step-*") if (p / STATE_NAME).is_file())
    return found[-1] if found else None
