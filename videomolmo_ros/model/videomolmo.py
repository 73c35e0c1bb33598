"""VideoMolmo assembled: vision backbone (+ temporal module) feeding a Qwen2 decoder.

Data flow for one keyframe (shapes for the released 7B model; T = crops incl. the global view,
P = 576 patches per crop, C = 2048, K = 144 image tokens per crop, d = 3584):

    crops (T, P, 588) --encode_frame--> features (T, P, C)      # once per frame, cached
    history: the features of the previous l frames              # from the engine's ring buffer
    features, mean(history) --temporal M--> f^ (T, P, C)        # prefill only
    f^ --2x2 attention-meanq pooling--> (T, K, 1024) --projector--> (T, K, d)
    token embeddings of [bos, image tokens, text]; image features *added* at <im_patch> tokens
    --> Qwen2 decoder --> final RMSNorm --> untied LM head ``ff_out`` (d -> 152064 logits)

``encode_frame`` is separate from ``forward`` so that a frame's features are computed once and
reused as the context of the next l keyframes. With no history (or the temporal module disabled
in the config) the model is Molmo.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from videomolmo_ros.model.config import VideoMolmoConfig
from videomolmo_ros.model.temporal import TemporalModule, context_mean, to_windows
from videomolmo_ros.model.vision import AttentionPool2d, ImageProjector, VisionTransformer


def qwen2_config(config: VideoMolmoConfig) -> Qwen2Config:
    """The ``Qwen2Config`` of the decoder (embedding rows include Molmo's extra tokens)."""
    qwen = Qwen2Config(
        vocab_size=config.total_vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.mlp_hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.layer_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        tie_word_embeddings=False,
        use_sliding_window=False,
        attention_dropout=0.0,
    )
    qwen._attn_implementation = "sdpa"
    return qwen


@dataclass
class VideoMolmoOutput:
    """logits: (B, L', embedding_size), L' = L or ``logits_to_keep`` (None when not computed).
    cache: the KV cache (a transformers ``DynamicCache``) when ``use_cache``."""

    logits: torch.Tensor | None
    cache: Any = None


class VideoMolmoVisionBackbone(nn.Module):
    """ViT + temporal module + pooling + projector (the release's ``model.vision_backbone``)."""

    def __init__(self, config: VideoMolmoConfig) -> None:
        super().__init__()
        self.config = config
        self.image_vit = VisionTransformer(config)
        self.image_pooling_2d = AttentionPool2d(config)
        self.adapter = TemporalModule(config) if config.temporal.enabled else None
        self.image_projector = ImageProjector(config)
        if config.image_padding_embed == "pad_and_partial_pad":
            self.pad_embed = nn.Parameter(torch.zeros(2, config.image_feature_dim))
        else:
            self.pad_embed = None

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        """crops (B, T, P, pixels) -> unpooled patch features (B, T, P, C).

        A crop whose pixels are all -1 (batch padding in Molmo) gets zero features.
        """
        b, t, p, d = crops.shape
        features = self.image_vit.patch_features(crops.reshape(b * t, p, d))  # (B*T, P, C)
        valid = ~torch.all(crops.reshape(b * t, p * d) == -1, dim=-1)
        features = features * valid[:, None, None].to(features.dtype)
        return features.reshape(b, t, p, -1)

    def _add_padding_embeddings(self, features: torch.Tensor,
                                image_masks: torch.Tensor | None) -> torch.Tensor:
        """Molmo-7B-D only: learned embeddings for fully / partially padded patches."""
        if self.pad_embed is None:
            return features
        if image_masks is None:
            raise ValueError("this checkpoint uses padding embeddings: pass image_masks")
        all_pad = (image_masks == 0).to(features.dtype)[..., None]  # (B, T, P, 1)
        partial = ((image_masks < 1) & (image_masks != 0)).to(features.dtype)[..., None]
        return features + self.pad_embed[0] * all_pad + self.pad_embed[1] * partial

    def image_embeddings(self, features: torch.Tensor, context: torch.Tensor | None = None,
                         image_masks: torch.Tensor | None = None) -> torch.Tensor:
        """features, context: (B, T, P, C) -> image token embeddings (B, T, K, d).

        The temporal module runs when ``context`` is given and the config enables it.
        """
        b, t = features.shape[:2]
        grid = self.config.vision_backbone.image_num_patch
        pool = (self.config.image_pooling_h, self.config.image_pooling_w)
        features = self._add_padding_embeddings(features, image_masks)
        windows = to_windows(features, grid, pool)  # (B*T*K, 4, C)
        if context is not None and self.adapter is not None:
            context = self._add_padding_embeddings(context, image_masks)
            windows = self.adapter.fuse(windows, to_windows(context, grid, pool))
        pooled = self.image_pooling_2d(windows)  # (B*T*K, 1, image_emb_dim)
        pooled = pooled.reshape(b, t, -1, pooled.shape[-1])  # (B, T, K, image_emb_dim)
        if not self.config.image_projector_norm:  # the release
            return self.image_projector(pooled)  # (B, T, K, d)
        # Our addition for models trained from scratch (see VideoMolmoConfig): unit scale into
        # and out of the projector, no parameters.
        pooled = F.layer_norm(pooled, pooled.shape[-1:])
        return F.rms_norm(self.image_projector(pooled), (self.config.hidden_size,))


class VideoMolmoModel(nn.Module):
    """VideoMolmo for pointing: image + history + text -> next-token logits."""

    def __init__(self, config: VideoMolmoConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_backbone = VideoMolmoVisionBackbone(config)
        self.llm = Qwen2Model(qwen2_config(config))
        self.lm_head = nn.Linear(config.hidden_size, config.embedding_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation in the spirit of the release (normal, std 0.02; ViT embeddings
        std dim^-0.5; Xavier-normal temporal module). Real use loads a checkpoint instead."""
        std = 0.02
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        vit = self.vision_backbone.image_vit
        scale = self.config.vision_backbone.image_emb_dim ** -0.5
        nn.init.normal_(vit.class_embedding, std=scale)
        nn.init.normal_(vit.positional_embedding, std=scale)
        if self.vision_backbone.adapter is not None:
            self.vision_backbone.adapter.reset_parameters()

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    # ------------------------------------------------------------------------------- vision
    def encode_frame(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops of one frame (T, P, pixels) or a batch (B, T, P, pixels) -> patch features of
        the same leading shape, (..., P, C). Compute once per frame; reuse as history."""
        squeeze = crops.dim() == 3
        features = self.vision_backbone.encode(crops[None] if squeeze else crops)
        return features[0] if squeeze else features

    def image_embeddings(self, image_features: torch.Tensor,
                         history_features: Sequence[torch.Tensor] | None = None,
                         image_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Keyframe features (B, T, P, C) + history (each (B, T, P, C), any order the caller
        wants averaged) -> image token embeddings (B, T, K, d)."""
        context = context_mean(list(history_features)) if history_features else None
        return self.vision_backbone.image_embeddings(image_features, context, image_masks)

    # ---------------------------------------------------------------------------------- text
    def embed_inputs(self, input_ids: torch.Tensor, image_embeddings: torch.Tensor | None = None,
                     image_input_idx: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, L) -> (B, L, d); image embeddings (B, T, K, d) are added at the
        positions ``image_input_idx`` (B, T, K) gives (negative = not inserted)."""
        x = self.llm.embed_tokens(input_ids)
        if image_embeddings is None:
            return x
        if image_input_idx is None:
            raise ValueError("image embeddings need image_input_idx")
        b = x.shape[0]
        features = image_embeddings.reshape(b, -1, x.shape[-1]).to(x.dtype)  # (B, T*K, d)
        index = image_input_idx.reshape(b, -1).to(x.device)  # (B, T*K)
        if index.shape[1] != features.shape[1]:
            raise ValueError(f"image_input_idx has {index.shape[1]} entries per sample, "
                             f"the image has {features.shape[1]} features")
        valid = index >= 0
        rows = torch.arange(b, device=x.device)[:, None].expand_as(index)
        return x.index_put((rows[valid], index[valid]), features[valid], accumulate=True)

    def decode(self, inputs_embeds: torch.Tensor, cache: Any = None,
               position_ids: torch.Tensor | None = None, use_cache: bool = False,
               logits_to_keep: int = 0, compute_logits: bool = True) -> VideoMolmoOutput:
        """Run the decoder on embeddings (B, L, d); positions continue after the cache.

        logits_to_keep: only the last n positions get logits (0 = all); compute_logits=False
        skips the LM head (prefilling a prefix whose logits nobody reads).
        """
        out = self.llm(inputs_embeds=inputs_embeds, position_ids=position_ids, cache=cache,
                       use_cache=use_cache)
        logits = None
        if compute_logits:
            hidden = out.last_hidden_state
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
            logits = self.lm_head(hidden)
        return VideoMolmoOutput(logits, out.cache if use_cache else None)

    def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None,
                image_input_idx: torch.Tensor | None = None,
                history_features: Sequence[torch.Tensor] | None = None,
                image_masks: torch.Tensor | None = None, cache: Any = None,
                position_ids: torch.Tensor | None = None, use_cache: bool = False,
                logits_to_keep: int = 0) -> VideoMolmoOutput:
        """Logits for ``input_ids`` (B, L).

        image_features: the keyframe's ``encode_frame`` output, (B, T, P, C) (or (T, P, C) for
        B = 1); history_features: the previous frames' (same shape), averaged into the temporal
        context; image_input_idx: (B, T, K) or (T, K). Without image features only text is run
        (the decode steps of generation, with ``cache``).
        """
        embeddings = None
        if image_features is not None:
            if image_features.dim() == 3:
                image_features = image_features[None]
                history_features = [h[None] if h.dim() == 3 else h
                                    for h in (history_features or [])]
                if image_masks is not None and image_masks.dim() == 2:
                    image_masks = image_masks[None]
            if image_input_idx is not None and image_input_idx.dim() == 2:
                image_input_idx = image_input_idx[None]
            embeddings = self.image_embeddings(image_features, history_features, image_masks)
        inputs_embeds = self.embed_inputs(input_ids, embeddings, image_input_idx)
        return self.decode(inputs_embeds, cache=cache, position_ids=position_ids,
                           use_cache=use_cache, logits_to_keep=logits_to_keep)
