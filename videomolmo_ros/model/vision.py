"""Vision side of VideoMolmo: CLIP ViT, 2x2 attention pooling and the projector into the LLM.

The ViT blocks are transformers' ``CLIPEncoderLayer`` (their q/k/v/out projections, MLP and two
LayerNorms map one-to-one onto the release's ``resblocks``). The embedding stem is ours: the
release feeds pre-cut patch vectors to a bias-free Linear (not a Conv2d), adds a 577-entry
positional table (bicubic-resized if a crop has another patch grid) and applies ``pre_ln`` in
float32; there is no post-LayerNorm. Patch features are the concatenation of the hidden states of
the blocks named by ``vit_layers`` (counted from the end, -2 and -9 for Molmo), CLS dropped.

``AttentionPool2d`` is Molmo's ``attention-meanq`` pooling: the 4 features of a 2x2 window are
keys/values, their mean is the query. ``ImageProjector`` is Molmo's SwiGLU MLP (w1 gate, w3 up,
w2 down).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from videomolmo_ros.model.config import VideoMolmoConfig
from videomolmo_ros.model.preprocessing import patches_to_image


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (the release's ``pre_ln``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                           self.bias.float(), self.eps)
        return out.to(x.dtype)


def clip_block_config(config: VideoMolmoConfig) -> CLIPVisionConfig:
    """A ``CLIPVisionConfig`` describing one ViT block (what ``CLIPEncoderLayer`` reads)."""
    vision = config.vision_backbone
    block = CLIPVisionConfig(
        hidden_size=vision.image_emb_dim,
        intermediate_size=vision.image_mlp_dim,
        num_attention_heads=vision.image_num_heads,
        hidden_act=vision.image_mlp_activations,
        layer_norm_eps=vision.image_norm_eps,
        attention_dropout=vision.attention_dropout,
    )
    block._attn_implementation = "sdpa"
    return block


class ConvPatchEmbedding(nn.Module):
    """Pre-cut patches (N, P, patch*patch*3) of a square crop -> (N, P, D): two 3x3
    convolutions over the re-assembled crop (32 and 64 channels, a 2x2 max-pool between),
    max-pooled inside each patch, then a linear layer. Not in the release (see
    ``VisionBackboneConfig.image_patch_embedding``); written by hand, as no library has it."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
        self.linear = nn.Linear(64, dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(patches.shape[1])
        maps = self.stem(patches_to_image(patches, self.patch_size))  # (N, 64, side*p/2, ...)
        pooled = F.adaptive_max_pool2d(maps, side)  # (N, 64, side, side): one cell per patch
        return self.linear(pooled.flatten(2).transpose(1, 2))


# Where ``add_conv_stem`` puts the branch -> the ``image_patch_embedding`` that says so.
CONV_STEM_PLACES = {"embedding": "linear+conv", "features": "linear+conv-features"}


def conv_stem_width(config: VideoMolmoConfig, embedding: str) -> int:
    """The output width of the conv branch of ``embedding`` (a ``CONV_STEM_PLACES`` value):
    the ViT's width at the embedding, the features' (the concatenated layers) after it."""
    if embedding == CONV_STEM_PLACES["features"]:
        return config.image_feature_dim
    return config.vision_backbone.image_emb_dim


def add_conv_stem(vit: "VisionTransformer", at: str = "embedding") -> bool:
    """Give a ViT with the linear patch embedding a conv branch (``ConvPatchEmbedding``)
    whose output layer is zero: the model computes exactly what it did, and the branch
    grows from there. ``at``: "embedding" adds it to the patch embedding (before the blocks),
    "features" to the output features (after them). Sets the config's embedding; returns
    False (and changes nothing) when the ViT already has that branch; ValueError for any
    other embedding."""
    if at not in CONV_STEM_PLACES:
        raise ValueError(f"the conv branch goes at one of {', '.join(CONV_STEM_PLACES)}, "
                         f"not {at!r}")
    vision = vit.config.vision_backbone
    wanted = CONV_STEM_PLACES[at]
    if vision.image_patch_embedding == wanted:
        return False
    if vision.image_patch_embedding != "linear":
        raise ValueError(f"a conv branch at the {at} is added to the linear patch embedding, "
                         f"not to {vision.image_patch_embedding!r}")
    reference = vit.patch_embedding.weight
    stem = ConvPatchEmbedding(vision.image_patch_size, conv_stem_width(vit.config, wanted))
    nn.init.zeros_(stem.linear.weight)
    nn.init.zeros_(stem.linear.bias)
    vit.conv_stem = stem.to(device=reference.device, dtype=reference.dtype)
    vision.image_patch_embedding = wanted
    return True


def scale_conv_stem_output(vit: "VisionTransformer", scale: float) -> None:
    """Multiply the output layer of the ViT's conv branch by ``scale`` (0: the branch adds
    nothing until it learns to, as ``add_conv_stem`` starts it); its conv layers are kept."""
    with torch.no_grad():
        vit.conv_stem.linear.weight.mul_(scale)
        vit.conv_stem.linear.bias.mul_(scale)


class VisionTransformer(nn.Module):
    """CLIP ViT over pre-cut patches; returns the hidden states the model needs."""

    def __init__(self, config: VideoMolmoConfig) -> None:
        super().__init__()
        vision = config.vision_backbone
        self.config = config
        dim = vision.image_emb_dim
        self.class_embedding = nn.Parameter(torch.zeros(dim))
        self.positional_embedding = nn.Parameter(torch.zeros(vision.image_num_pos, dim))
        if vision.image_patch_embedding == "conv":
            self.patch_embedding = ConvPatchEmbedding(vision.image_patch_size, dim)
        else:
            self.patch_embedding = nn.Linear(vision.image_patch_size ** 2 * 3, dim, bias=False)
        # A conv branch added to the linear embedding ("linear+conv") or to the output
        # features ("linear+conv-features"; see add_conv_stem).
        embedding = vision.image_patch_embedding
        self.conv_stem = (ConvPatchEmbedding(vision.image_patch_size,
                                             conv_stem_width(config, embedding))
                          if embedding in CONV_STEM_PLACES.values() else None)
        self.pre_ln = LayerNormFp32(dim, eps=vision.image_norm_eps)
        block_config = clip_block_config(config)
        self.blocks = nn.ModuleList(CLIPEncoderLayer(block_config)
                                    for _ in range(vision.image_num_layers))
        # Blocks after the deepest one read are kept (the checkpoint has them) but never run.
        self.layer_indices = [layer % vision.image_num_layers for layer in config.vit_layers]
        self.num_blocks_to_run = max(self.layer_indices) + 1

    @property
    def conv_stem_at_features(self) -> bool:
        """Whether the conv branch adds to the output features (not to the embedding)."""
        return self.config.vision_backbone.image_patch_embedding == CONV_STEM_PLACES["features"]

    def add_positional_embedding(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: (B, 1 + rows*cols, D). The table is resized bicubically if the grid differs."""
        cls_pos = self.positional_embedding[:1]  # (1, D)
        patch_pos = self.positional_embedding[1:]  # (S*S, D)
        side = int(math.isqrt(patch_pos.shape[0]))
        patch_pos = patch_pos.reshape(side, side, -1)
        if (side, side) != tuple(grid):
            patch_pos = F.interpolate(patch_pos.permute(2, 0, 1)[None], size=grid, mode="bicubic",
                                      align_corners=False, antialias=True)[0].permute(1, 2, 0)
        patch_pos = patch_pos.reshape(-1, patch_pos.shape[-1])
        return x + torch.cat([cls_pos, patch_pos], dim=0)[None].to(x.dtype)

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """patches: (N, P, patch*patch*3) -> the hidden states after each block run, each
        (N, 1 + P, D) (CLS first)."""
        grid = self.config.vision_backbone.image_num_patch
        x = self.patch_embedding(patches)  # (N, P, D)
        if self.conv_stem is not None and not self.conv_stem_at_features:
            x = x + self.conv_stem(patches)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + P, D)
        x = self.add_positional_embedding(x, grid)
        x = self.pre_ln(x)
        hidden_states = []
        for block in self.blocks[: self.num_blocks_to_run]:
            x = block(x, None)
            hidden_states.append(x)
        return hidden_states

    def patch_features(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, P, pixels) -> (N, P, len(vit_layers) * D): the configured layers, CLS dropped."""
        hidden_states = self(patches)
        features = torch.cat([hidden_states[i] for i in self.layer_indices], dim=-1)[:, 1:]
        if self.conv_stem is not None and self.conv_stem_at_features:
            features = features + self.conv_stem(patches)
        return features


class AttentionPool2d(nn.Module):
    """Molmo's ``attention-meanq`` 2x2 pooling: (W, 4, C) windows -> (W, 1, image_emb_dim).

    Multi-head attention with the window mean as the single query; biases on all projections;
    logits and softmax in float32.
    """

    def __init__(self, config: VideoMolmoConfig) -> None:
        super().__init__()
        vision = config.vision_backbone
        in_dim = config.image_feature_dim
        self.num_heads = vision.image_num_heads
        self.head_dim = vision.image_head_dim
        inner = self.num_heads * self.head_dim
        self.wq = nn.Linear(in_dim, inner)
        self.wk = nn.Linear(in_dim, inner)
        self.wv = nn.Linear(in_dim, inner)
        self.wo = nn.Linear(inner, vision.image_emb_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        n = windows.shape[0]
        query = windows.mean(dim=-2, keepdim=True)  # (W, 1, C)
        q = self.wq(query).view(n, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.wk(windows).view(n, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.wv(windows).view(n, -1, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())  # (W, H, 1, hd)
        out = out.to(windows.dtype).transpose(1, 2).reshape(n, 1, -1)
        return self.wo(out)


class ImageProjector(nn.Module):
    """Molmo's SwiGLU projector: ``w2(silu(w1 x) * w3 x)`` into the LLM width, no biases."""

    def __init__(self, config: VideoMolmoConfig) -> None:
        super().__init__()
        in_dim = config.vision_backbone.image_emb_dim
        self.w1 = nn.Linear(in_dim, config.mlp_hidden_size, bias=False)
        self.w2 = nn.Linear(config.mlp_hidden_size, config.hidden_size, bias=False)
        self.w3 = nn.Linear(in_dim, config.mlp_hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
