"""Model sizes for training here: the VideoMolmo architecture, scaled down.

``small`` is the model trained on a CPU for the project's default checkpoint: it must learn
the synthetic pointing task in about an hour on two cores and ship in well under 20 MB (it has
3.95 M parameters: 15.8 MB in fp32, shipped in fp16). Measured CPU time of one optimizer step
(2 keyframes x 8 queries, 320x240 frames, 1 thread, data included), with the temporal module
(keyframe + 4 history frames encoded) / without it:

=====================  ==================  =====================
crops                  with temporal       single frame
=====================  ==================  =====================
112 px, 1 (small)      0.52 s *            0.43 s *
112 px, <= 4           0.38 s              0.26 s
168 px, 1              0.71 s              -
168 px, <= 4           0.75 s              0.38 s
=====================  ==================  =====================

(* two runs side by side on the two cores, the way the shipped model and its single-frame
ablation were trained.) The parameter count barely depends on the crop size, so the 20 MB bound
fixes the widths and the time budget the resolution. Choices:

* 112 px crops of 8x8 patches (patch 14), overlap margins of 2 patches, ONE high-resolution
  crop: a 320x240 frame becomes a 112x84 image (padded to 112x112) seen as the global view and
  as one crop, 2 x 16 = 32 image tokens for the LLM (vs. 1,000+ for the release at 336 px).
  With several crops, the same object appears in tokens whose ViT positions are crop-local;
  Molmo learns to sort that out from pretraining, a 4 M model trained for an hour did not.
* ViT: 6 blocks of width 128 (4 heads x 32, MLP 512), patch features = concat(block -1,
  block -4), so no block is dead weight (Molmo reads -2 and -9 of 23 and never runs the last).
* ``image_projector_norm``: a LayerNorm before the projector (not in the release; see
  ``VideoMolmoConfig``). Without it the image embeddings grew to ~1e8 within 500 steps and
  the LLM stopped telling image tokens apart.
* Temporal module: 4 heads x 32 (half the 256-wide features, as the release's 16 x 64 of 2048).
* LLM (Qwen2 blocks): 4 layers of width 256, 4 heads (2 KV heads), SwiGLU width 384 (the
  projector's hidden width too, as in Molmo).
* Vocabulary: the 512-token BPE of ``train.tokenizer`` + 8 extra rows (5 image markers).

``tiny`` is ``VideoMolmoConfig.tiny()`` re-vocabularied for the trained tokenizer (tests).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from videomolmo_ros.model.config import (CropConfig, TemporalConfig, VideoMolmoConfig,
                                         VisionBackboneConfig)
from videomolmo_ros.train.tokenizer import DEFAULT_BASE_VOCAB

EXTRA_ROWS = 8  # image markers (5) + spare rows, Molmo's additional_vocab_size is 128


def small(base_vocab_size: int = DEFAULT_BASE_VOCAB, **overrides: Any) -> VideoMolmoConfig:
    """The CPU-trainable default model (about 4.0 M parameters, about 16 MB in fp32)."""
    values: dict[str, Any] = dict(
        vocab_size=base_vocab_size,
        embedding_size=base_vocab_size,
        additional_vocab_size=EXTRA_ROWS,
        hidden_size=256,
        intermediate_size=2 * 384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        layer_norm_eps=1e-6,
        rope_theta=10_000.0,
        vision_backbone=VisionBackboneConfig(
            image_default_input_size=(112, 112),
            image_patch_size=14,
            image_pos_patch_size=14,
            image_emb_dim=128,
            image_num_heads=4,
            image_num_key_value_heads=4,
            image_num_layers=6,
            image_head_dim=32,
            image_mlp_dim=512,
            image_num_pos=8 * 8 + 1,
        ),
        vit_layers=(-1, -4),
        crops=CropConfig(max_crops=1, overlap_margins=(2, 2)),
        image_projector_norm=True,
        temporal=TemporalConfig(num_heads=4, head_dim=32, history_frames=4),
    )
    values.update(overrides)
    return VideoMolmoConfig(**values)


def tiny(base_vocab_size: int = DEFAULT_BASE_VOCAB, **overrides: Any) -> VideoMolmoConfig:
    """A minutes-not-hours model for tests: ``VideoMolmoConfig.tiny()`` with this vocabulary."""
    values: dict[str, Any] = dict(vocab_size=base_vocab_size, embedding_size=base_vocab_size,
                                  additional_vocab_size=EXTRA_ROWS)
    values.update(overrides)
    return VideoMolmoConfig.tiny(**values)


PRESETS: dict[str, Callable[..., VideoMolmoConfig]] = {"small": small, "tiny": tiny}


def preset(name: str, base_vocab_size: int = DEFAULT_BASE_VOCAB,
           **overrides: Any) -> VideoMolmoConfig:
    """A preset by name; ``overrides`` are ``VideoMolmoConfig`` fields. A dict given for a
    section (``vision_backbone``, ``crops``, ``temporal``) changes only the keys it names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return with_overrides(PRESETS[name](base_vocab_size), overrides)


def with_overrides(config: VideoMolmoConfig, overrides: Mapping[str, Any]) -> VideoMolmoConfig:
    """A copy of ``config`` with ``overrides`` (``VideoMolmoConfig`` fields) applied; a dict
    given for a section (``vision_backbone``, ``crops``, ``temporal``) changes only its keys."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for key, value in overrides.items():
        if key not in values:
            raise ValueError(f"unknown VideoMolmoConfig field {key!r}")
        current = values[key]
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = dataclasses.replace(current, **value)
        values[key] = value
    return VideoMolmoConfig(**values)


def parameter_count(config: VideoMolmoConfig) -> int:
    """Parameters of the model built from ``config`` (on the meta device, no memory used)."""
    import torch

    from videomolmo_ros.model.videomolmo import VideoMolmoModel

    with torch.device("meta"):
        model = VideoMolmoModel(config)
    return sum(p.numel() for p in model.parameters())
