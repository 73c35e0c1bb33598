"""``VideoMolmoPointer``: the streaming engine's pointer backed by the VideoMolmo network.

Per keyframe and its queries:

1. ``encode(frame)`` (called by the engine once per frame, cached in its ring buffer): multi-crop
   pre-processing and the ViT -> ``FrameFeatures`` (unpooled patch features + crop layout).
2. ``point(frame, features, history, queries)``: the temporal context is the mean of the
   features of the l previous frames (``history``, most recent first), padded with black-frame
   features at the start of a stream as the release does (computed once per crop layout and
   cached); temporal module, pooling and projector run once for the keyframe; the prompt prefix
   ``[bos] + image tokens`` is prefilled once and its KV cache shared by all queries; each query
   then prefills only its own text and decodes greedily (KV cache, stop at ``<|endoftext|>``,
   at most ``max_new_tokens``). The answers are parsed with ``core.points.parse_points``.

Prompt: Molmo's message format ``" User: {instruction} Assistant:"`` (what Molmo's processor
builds and what the release's ``infer.py`` gets from Molmo's chat template); a query that is
already an instruction or a question ("Point to the left hand", "Where is ...?") is used
verbatim, as the release does, anything else becomes ``"Point to {query}"``.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.points import Point, parse_points
from videomolmo_ros.core.stats import RunningStats
from videomolmo_ros.model.preprocessing import (CropLayout, ImageTokenIds, MultiCropPreprocessor,
                                                black_frame)
from videomolmo_ros.model.videomolmo import VideoMolmoModel
from videomolmo_ros.pointers.base import Pointer

DEFAULT_PROMPT_TEMPLATE = "Point to {query}"
# Queries that already read as an instruction or a question are passed through unchanged.
_VERBATIM = re.compile(
    r"^(point|find|locate|show|count|mark|where|which|what|who|how many|is there|are there)\b",
    re.IGNORECASE)


def pointing_instruction(query: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The instruction for a plain-language query (see the module docstring)."""
    query = " ".join(query.split())
    if _VERBATIM.match(query) or query.endswith("?"):
        return query
    return template.format(query=query)


def user_message(instruction: str) -> str:
    """Molmo's single-turn prompt text (tokenised without special tokens)."""
    return f" User: {instruction} Assistant:"


@dataclass(frozen=True)
class FrameFeatures:
    """What ``encode`` returns and the engine caches for one frame.

    features: (T, P, C) unpooled ViT patch features on the model's device and dtype.
    masks: (T, P) Molmo patch masks (read only by checkpoints with padding embeddings).
    layout: the crop layout the frame was cut with.
    """

    features: torch.Tensor
    masks: torch.Tensor
    layout: CropLayout


class VideoMolmoPointer(Pointer):
    """Frame + history + queries -> points, with the VideoMolmo network."""

    name = "videomolmo"

    def __init__(self, model: VideoMolmoModel, tokenizer: Any, *, history_frames: int | None = None,
                 max_new_tokens: int = 300, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                 share_image_prefix: bool = True) -> None:
        """model: a loaded ``VideoMolmoModel``; tokenizer: Molmo's (any object with ``encode``,
        ``decode``, ``convert_tokens_to_ids`` and ``eos_token_id``). history_frames: l (None =
        the config's). share_image_prefix: prefill the image once for all queries."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.preprocessor = MultiCropPreprocessor(model.config,
                                                  ImageTokenIds.from_tokenizer(tokenizer))
        self.history_frames = (model.config.temporal.history_frames if history_frames is None
                               else int(history_frames))
        # the spacing the weights were trained with (1 = consecutive frames, the release's)
        self.history_stride = int(model.config.temporal.history_stride)
        self.max_new_tokens = int(max_new_tokens)
        self.prompt_template = prompt_template
        self.share_image_prefix = share_image_prefix
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs an end-of-text token")
        self.eos_id = int(tokenizer.eos_token_id)
        bos = getattr(tokenizer, "bos_token_id", None)
        # Qwen2 has no BOS token; Molmo starts every sequence with EOS instead.
        self.bos_id = int(bos) if bos is not None else self.eos_id
        self._padding_features: dict[CropLayout, FrameFeatures] = {}
        self.last_texts: list[str] = []
        # Seconds per stage: vision (pre-processing + ViT, per encoded frame), image
        # (temporal module + pooling + projector, per keyframe), prefill and decode (per query).
        self.timings = {stage: RunningStats() for stage in ("vision", "image", "prefill",
                                                            "decode")}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, tokenizer: Any = None, *,
                        dtype: torch.dtype | str = torch.float32, device: str = "cpu",
                        quantization: str | None = None, **kwargs: Any) -> "VideoMolmoPointer":
        """Load the checkpoint (directory or local HF cache id) and its tokenizer: the
        checkpoint's own if it has one, else Molmo-7B-D's from the local cache."""
        from videomolmo_ros.model import loading

        model = loading.load_videomolmo(name_or_path, dtype=dtype, device=device,
                                        quantization=quantization)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            directory = loading.resolve_checkpoint(name_or_path)
            source = tokenizer if tokenizer is not None else (
                directory if loading.has_tokenizer(directory) else None)
            tokenizer = loading.load_tokenizer(source)
        return cls(model, tokenizer, **kwargs)

    # ---------------------------------------------------------------------------- features
    @torch.inference_mode()
    def encode_image(self, image: Any, layout: CropLayout | None = None) -> FrameFeatures:
        """An RGB uint8 image -> its features (in ``layout`` if given, else its own)."""
        started = time.perf_counter()
        frame = self.preprocessor.frame(image, layout)
        crops = frame.crops.to(device=self.model.device, dtype=self.model.dtype)
        features = self.model.encode_frame(crops)  # (T, P, C)
        self.timings["vision"].add(time.perf_counter() - started)
        return FrameFeatures(features, frame.masks.to(self.model.device), frame.layout)

    def encode(self, frame: Frame) -> FrameFeatures:
        """Per-frame features, computed once per frame and cached by the engine."""
        return self.encode_image(frame.image)

    def padding_features(self, layout: CropLayout) -> FrameFeatures:
        """Features of the black frame that stands in for frames before the stream start."""
        if layout not in self._padding_features:
            if len(self._padding_features) >= 8:  # layouts change only with the resolution
                self._padding_features.clear()
            self._padding_features[layout] = self.encode_image(black_frame(layout), layout)
        return self._padding_features[layout]

    def temporal_context(self, keyframe: FrameFeatures,
                         history: Sequence[Any]) -> list[torch.Tensor]:
        """The l feature tensors averaged into f*, in the release's order: black padding first,
        then the previous frames, most recent first. A history entry cut with another layout (a
        resolution change) counts as missing. Empty when l = 0 or the module is disabled."""
        if self.history_frames == 0 or self.model.vision_backbone.adapter is None:
            return []
        usable = [h for h in list(history)[: self.history_frames]
                  if isinstance(h, FrameFeatures) and h.layout == keyframe.layout]
        missing = self.history_frames - len(usable)
        padding = [self.padding_features(keyframe.layout)] * missing if missing else []
        return [f.features for f in padding + usable]

    # --------------------------------------------------------------------------- generation
    def _decode_greedy(self, logits: torch.Tensor, cache: Any) -> list[int]:
        """Greedy continuation from the last logits; stops at EOS or ``max_new_tokens``."""
        generated: list[int] = []
        for step in range(self.max_new_tokens):
            token = int(logits[0, -1].argmax())
            if token == self.eos_id:
                break
            generated.append(token)
            if step == self.max_new_tokens - 1:
                break
            embeds = self.model.embed_inputs(torch.tensor([[token]], device=self.model.device))
            logits = self.model.decode(embeds, cache=cache, use_cache=True, logits_to_keep=1).logits
        return generated

    def generate_text(self, frame: Frame, features: Any, history: Sequence[Any],
                      queries: Sequence[str]) -> list[str]:
        """Raw answer text per query (what ``point`` parses)."""
        texts = [self.tokenizer.decode(tokens, skip_special_tokens=True)
                 for tokens in self.generate_tokens(frame, features, history, queries)]
        self.last_texts = texts
        return texts

    @torch.inference_mode()
    def generate_tokens(self, frame: Frame, features: Any, history: Sequence[Any],
                        queries: Sequence[str]) -> list[list[int]]:
        """Greedy answer token ids per query (end of text excluded)."""
        model = self.model
        keyframe = features if isinstance(features, FrameFeatures) else self.encode(frame)
        context = [c[None] for c in self.temporal_context(keyframe, history)]
        started = time.perf_counter()
        # Temporal module + pooling + projector, once for all queries: (1, T, K, d).
        image = model.image_embeddings(keyframe.features[None], context or None,
                                       keyframe.masks[None])
        self.timings["image"].add(time.perf_counter() - started)
        prefix_ids, image_index = self.preprocessor.prompt(keyframe.layout, [], self.bos_id)
        prefix_ids = prefix_ids[None].to(model.device)  # (1, 1 + image tokens)
        image_index = image_index[None].to(model.device)  # (1, T, K)
        prefix_cache = None
        if self.share_image_prefix and queries:
            embeds = model.embed_inputs(prefix_ids, image, image_index)
            prefix_cache = model.decode(embeds, use_cache=True, compute_logits=False).cache
        answers = []
        for query in queries:
            started = time.perf_counter()
            text_ids = torch.tensor([self.tokenizer.encode(
                user_message(pointing_instruction(query, self.prompt_template)),
                add_special_tokens=False)], dtype=torch.long, device=model.device)
            if prefix_cache is not None:
                _truncate_cache(prefix_cache, prefix_ids.shape[1])
                out = model.decode(model.embed_inputs(text_ids), cache=prefix_cache,
                                   use_cache=True, logits_to_keep=1)
            else:
                embeds = model.embed_inputs(torch.cat([prefix_ids, text_ids], dim=1), image,
                                            image_index)
                out = model.decode(embeds, use_cache=True, logits_to_keep=1)
            prefilled = time.perf_counter()
            self.timings["prefill"].add(prefilled - started)
            answers.append(self._decode_greedy(out.logits, out.cache))
            self.timings["decode"].add(time.perf_counter() - prefilled)
        return answers

    def point(self, frame: Frame, features: Any, history: Sequence[Any],
              queries: Sequence[str]) -> list[list[Point]]:
        """Points (pixels of ``frame``) per query; an unparsable answer gives no points."""
        texts = self.generate_text(frame, features, history, queries)
        return [parse_points(text, frame.width, frame.height, label=query)
                for text, query in zip(texts, queries)]


def _truncate_cache(cache: Any, length: int) -> None:
    """Drop the cached tokens after the first ``length`` (back to the shared image prefix)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
