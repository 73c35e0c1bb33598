"""VideoMolmo configuration: language model, vision backbone, multi-crop and temporal module.

The language-model fields carry the names of the released ``config.json`` (Molmo's
``MolmoConfig``: ``hidden_size``, ``intermediate_size``, ...). The release hard-codes its ViT
(CLIP ViT-L/14-336, 23 blocks, features from blocks -2 and -9) in Python; here the ViT is described
under ``vision_backbone`` with the release's ``VisionBackboneConfig`` field names, plus
``vit_layers``, and absent keys mean exactly the release's hard-coded values. Two more sections
are ours: ``crops`` (Molmo's multi-crop pre-processing) and ``temporal`` (the temporal module M).

``VideoMolmoConfig.from_dict`` reads a release ``config.json`` as is; ``to_dict`` writes one that
the release's own ``MolmoConfig`` can read too (extra keys are ignored there).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

# Keys of a Hugging Face config.json that carry no architecture information for us.
_HF_BOILERPLATE = frozenset({
    "architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "initializer_range", "tie_word_embeddings", "quantization_config",
    "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id", "output_hidden_states",
    "output_attentions", "return_dict", "use_return_dict",
})
# Release keys the release itself ignores when it builds the network (``MolmoForCausalLM``
# passes fixed values instead): weight tying is always off, clip_qkv is never forwarded, and
# position ids are always used.
_IGNORED_BY_RELEASE = frozenset({"weight_tying", "clip_qkv", "use_position_ids"})


# How pixels become patch vectors (``VisionBackboneConfig.image_patch_embedding``).
PATCH_EMBEDDINGS = ("linear", "conv", "linear+conv", "linear+conv-features")


@dataclass
class VisionBackboneConfig:
    """The CLIP ViT, with the field names of the release's ``VisionBackboneConfig``.

    Defaults are the values the release (and Molmo-7B-D) hard-code: CLIP ViT-L/14 at 336 px,
    23 of its 24 blocks (the last one is never read), quick-GELU MLPs.
    """

    image_default_input_size: tuple[int, int] = (336, 336)
    image_patch_size: int = 14
    image_pos_patch_size: int = 14
    image_emb_dim: int = 1024
    image_num_heads: int = 16
    image_num_key_value_heads: int = 16
    image_num_layers: int = 23
    image_head_dim: int = 64
    image_mlp_dim: int = 4096
    image_mlp_activations: str = "quick_gelu"
    image_dropout_rate: float = 0.0
    image_num_pos: int = 577
    image_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0
    initializer_range: float = 0.02
    # How pixels become patch vectors. "linear": the release's bias-free Linear over the pre-cut
    # patch. "conv" (not in the release; ``vision.ConvPatchEmbedding``): 3x3 convolutions over
    # the whole view, max-pooled inside each patch. Why: trained from scratch, the small ViT
    # with the linear embedding stayed at chance on the shape of one object for 600 steps
    # where the conv embedding learnt it as fast as a CNN (benchmarks/shape_learning.py);
    # Molmo's linear embedding comes from CLIP's pre-training, which has no equivalent here.
    # "linear+conv" (not in the release): the linear embedding plus that conv embedding as a
    # second branch, added (``VisionTransformer.conv_stem``). Why: a model trained with the
    # linear one gains the branch with its output layer at zero (``add_conv_stem``), so it
    # starts exactly where it was and can still learn shape, without a retrain from scratch.
    # "linear+conv-features" (not in the release): the same branch added to the ViT's output
    # features (the concatenated layers) instead of its input. Why: added at the input, the
    # branch changes what every block computes, and the LLM placed its points less precisely
    # (README, twenty-fifth session); added after the blocks, the ViT is left as it was. It
    # placed them no better (README, twenty-sixth session): the tokens moving is what costs.
    image_patch_embedding: str = "linear"

    def __post_init__(self) -> None:
        self.image_default_input_size = tuple(int(v) for v in self.image_default_input_size)
        if self.image_patch_embedding not in PATCH_EMBEDDINGS:
            raise ValueError(f"image_patch_embedding must be one of {PATCH_EMBEDDINGS}, not "
                             f"{self.image_patch_embedding!r}")

    @property
    def image_num_patch(self) -> tuple[int, int]:
        """Patches per crop side, (rows, cols): (24, 24) for 336 px and patch 14."""
        h, w = self.image_default_input_size
        return h // self.image_patch_size, w // self.image_patch_size


@dataclass
class CropConfig:
    """Molmo's multi-crop pre-processing (``overlap-and-resize-c2``).

    ``max_crops`` high-resolution crops overlapping by ``overlap_margins`` patches (left/top,
    right/bottom; the margins are dropped from the token grid) plus one global view.
    """

    max_crops: int = 12
    overlap_margins: tuple[int, int] = (4, 4)
    use_col_tokens: bool = True
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        self.overlap_margins = tuple(int(v) for v in self.overlap_margins)


@dataclass
class TemporalConfig:
    """The temporal module M (paper Sec. 3.2; ``MemoryAttention`` in the release).

    ``num_heads`` x ``head_dim`` is the width of its cross-attention; None means the ViT's
    (16 x 64 for ViT-L, as in the release). ``history_frames`` is l, the number of previous frames
    whose mean feature is the context (4, the paper's best and the release's value).
    ``history_stride`` s spaces them: frames f-s, f-2s, ..., f-l*s. The release reads f-1..f-4
    (s = 1); a larger s is ours, for motion too slow to show within l consecutive frames. It is a
    property of the trained weights, so the model carries it and the engine follows it.
    """

    enabled: bool = True
    num_heads: int | None = None
    head_dim: int | None = None
    history_frames: int = 4
    history_stride: int = 1


@dataclass
class VideoMolmoConfig:
    """Everything needed to build the network; see the module docstring for the key names."""

    # Language model (Qwen2-7B in the release), names of the release's config.json.
    vocab_size: int = 152064
    embedding_size: int = 152064
    additional_vocab_size: int = 128
    hidden_size: int = 3584
    intermediate_size: int = 37888  # fused [x | gate] width of ff_proj; the SwiGLU width is half
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    max_position_embeddings: int = 4096
    layer_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    qkv_bias: bool = True
    layer_norm_type: str = "rms"
    norm_after: bool = False
    attention_layer_norm: bool = False
    # Vision side.
    vision_backbone: VisionBackboneConfig = field(default_factory=VisionBackboneConfig)
    vit_layers: tuple[int, ...] = (-2, -9)
    image_pooling_h: int = 2
    image_pooling_w: int = 2
    # None in VideoMolmo; Molmo-7B-D-0924 uses "pad_and_partial_pad" (learned padding embeddings).
    image_padding_embed: str | None = None
    # Not in the release (False there): parameter-free normalisation into (LayerNorm) and out
    # of (RMSNorm, unit scale) the projector. Models trained here from scratch need it: without
    # the scale a pretrained CLIP brings, the image embeddings grew to RMS ~100 (vs ~0.03 for
    # text) within a few thousand steps, so the LLM's layers could no longer change the image
    # tokens and the gradient reaching the vision side fell 3,000-fold below the text's.
    image_projector_norm: bool = False
    crops: CropConfig = field(default_factory=CropConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.vision_backbone, Mapping):
            self.vision_backbone = VisionBackboneConfig(**self.vision_backbone)
        if isinstance(self.crops, Mapping):
            self.crops = CropConfig(**self.crops)
        if isinstance(self.temporal, Mapping):
            self.temporal = TemporalConfig(**self.temporal)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.vit_layers = tuple(int(v) for v in self.vit_layers)
        self.validate()

    # ----------------------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mlp_hidden_size(self) -> int:
        """Width of the SwiGLU (Qwen2's ``intermediate_size``): half of the fused ff_proj."""
        return self.intermediate_size // 2

    @property
    def total_vocab_size(self) -> int:
        """Rows of the input embedding: the base vocabulary plus Molmo's extra (image) tokens."""
        return self.embedding_size + self.additional_vocab_size

    @property
    def image_feature_dim(self) -> int:
        """Width of a patch feature: the concatenated ViT layers (2048 for ViT-L)."""
        return len(self.vit_layers) * self.vision_backbone.image_emb_dim

    @property
    def temporal_heads(self) -> int:
        return self.temporal.num_heads or self.vision_backbone.image_num_heads

    @property
    def temporal_head_dim(self) -> int:
        return self.temporal.head_dim or self.vision_backbone.image_head_dim

    @property
    def llm_patches_per_crop(self) -> tuple[int, int]:
        """Image tokens per crop side after 2x2 pooling, (rows, cols): (12, 12) for ViT-L/336."""
        h, w = self.vision_backbone.image_num_patch
        return -(-h // self.image_pooling_h), -(-w // self.image_pooling_w)

    # ---------------------------------------------------------------------------------- checking
    def validate(self) -> None:
        """Raise ValueError for combinations this implementation (or the release) cannot build."""
        problems: list[str] = []
        v = self.vision_backbone
        if self.layer_norm_type != "rms":
            problems.append(f"layer_norm_type={self.layer_norm_type!r} (only 'rms', Qwen2)")
        if self.norm_after:
            problems.append("norm_after=True (OLMo-style post-norm blocks are not supported)")
        if self.attention_layer_norm:
            problems.append("attention_layer_norm=True (q/k norms are not supported)")
        if not self.qkv_bias:
            problems.append("qkv_bias=False (Qwen2 attention always has q/k/v biases)")
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if self.intermediate_size % 2:
            problems.append("intermediate_size (fused [x | gate]) must be even")
        if self.embedding_size < self.vocab_size:
            problems.append("embedding_size must be at least vocab_size")
        if v.image_num_heads * v.image_head_dim != v.image_emb_dim:
            problems.append("image_num_heads * image_head_dim must equal image_emb_dim")
        if v.image_num_key_value_heads != v.image_num_heads:
            problems.append("the ViT must use as many key/value heads as heads (CLIP blocks)")
        h, w = v.image_num_patch
        if v.image_default_input_size != (h * v.image_patch_size, w * v.image_patch_size):
            problems.append("image_default_input_size must be a multiple of image_patch_size")
        if h != w:
            problems.append("crops must be square (Molmo tiles with one crop size)")
        if not self.vit_layers:
            problems.append("vit_layers must name at least one ViT layer")
        for layer in self.vit_layers:
            if not -v.image_num_layers <= layer < v.image_num_layers:
                problems.append(f"vit_layers entry {layer} is outside a "
                                f"{v.image_num_layers}-block ViT")
        left, right = self.crops.overlap_margins
        for margin in (left, right):
            if margin % self.image_pooling_h or margin % self.image_pooling_w:
                problems.append("overlap margins must be multiples of the pooling size")
        if h - left - right <= 0 or w - left - right <= 0:
            problems.append("overlap margins leave no patches in a crop window")
        if self.crops.max_crops < 1:
            problems.append("max_crops must be at least 1")
        if self.image_padding_embed not in (None, "pad_and_partial_pad"):
            problems.append(f"image_padding_embed={self.image_padding_embed!r} "
                            "(None or 'pad_and_partial_pad')")
        if self.temporal.history_frames < 0:
            problems.append("temporal.history_frames must be >= 0")
        if self.temporal.history_stride < 1:
            problems.append("temporal.history_stride must be >= 1")
        if problems:
            raise ValueError("unsupported VideoMolmo configuration: " + "; ".join(problems))

    # ---------------------------------------------------------------------------- serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VideoMolmoConfig":
        """Build from a release ``config.json`` dict (or one written by ``to_dict``).

        Hugging Face boilerplate keys and keys the release ignores are skipped; other unknown keys
        trigger a warning (never silently change the architecture).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in data.items():
            if key in names:
                kwargs[key] = value
            elif key not in _HF_BOILERPLATE and key not in _IGNORED_BY_RELEASE:
                unknown.append(key)
        if unknown:
            warnings.warn(f"config keys not used by VideoMolmoConfig: {sorted(unknown)}",
                          stacklevel=2)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the release's layout (plus our vision/crops/temporal sections)."""
        out = dataclasses.asdict(self)
        out["vit_layers"] = list(self.vit_layers)
        out["vision_backbone"]["image_default_input_size"] = list(
            self.vision_backbone.image_default_input_size)
        out["crops"]["overlap_margins"] = list(self.crops.overlap_margins)
        # What the release's MolmoConfig reads; no auto_map, so nothing invites remote code.
        out["model_type"] = "molmo"
        out["weight_tying"] = False
        out["tie_word_embeddings"] = False
        out["use_position_ids"] = True
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``config.json`` into ``directory``; returns its path."""
        path = os.path.join(os.fspath(directory), "config.json")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "VideoMolmoConfig":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "VideoMolmoConfig":
        return cls.from_json_file(os.path.join(os.fspath(directory), "config.json"))

    # ------------------------------------------------------------------------------ small model
    @classmethod
    def tiny(cls, **overrides: Any) -> "VideoMolmoConfig":
        """A few-layer, narrow model for tests and CPU benchmarks (random weights only).

        112 px crops of 8x8 patches (4x4 image tokens per crop), overlap margins of 2 patches,
        up to 4 crops; a 4-block ViT of width 32; a 2-layer Qwen2 of width 64 with GQA; 264 base
        tokens (bytes, end of text, spares) + 8 extra rows for the image markers, laid out like
        Molmo's vocabulary (see ``videomolmo_ros.model.testing.tiny_tokenizer``).
        """
        values: dict[str, Any] = dict(
            vocab_size=264,
            embedding_size=264,
            additional_vocab_size=8,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            layer_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            vision_backbone=VisionBackboneConfig(
                image_default_input_size=(112, 112),
                image_patch_size=14,
                image_pos_patch_size=14,
                image_emb_dim=32,
                image_num_heads=4,
                image_num_key_value_heads=4,
                image_num_layers=4,
                image_head_dim=8,
                image_mlp_dim=64,
                image_num_pos=8 * 8 + 1,
            ),
            vit_layers=(-2, -4),
            crops=CropConfig(max_crops=4, overlap_margins=(2, 2)),
            temporal=TemporalConfig(num_heads=4, head_dim=8, history_frames=4),
        )
        values.update(overrides)
        return cls(**values)
