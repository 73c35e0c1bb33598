"""Molmo multi-crop pre-processing: frame -> crops of patches, and the image tokens of the prompt.

Same logic as Molmo's ``overlap-and-resize-c2`` mode (VideoMolmo ``memory_preprocessor.py``,
Molmo ``image_preprocessing_molmo.py``), written over numpy and ``torch.nn.functional``:

1. Tiling: choose (rows, cols) crops, at most ``max_crops``, whose crop *windows* (the crop minus
   its overlap margins) cover the frame with the least up-scaling (or least down-scaling when
   every tiling must shrink it). Frames are resized, keeping their aspect ratio, onto a canvas of
   ``tiling * window + margins`` pixels, padded with ``pad_value`` (0 = black) centred.
2. Crops of ``crop_size`` pixels start every ``window`` pixels, so neighbours overlap by the two
   margins; a global view (the whole frame resized + padded to one crop) goes first.
3. Pixels are bilinear-resized with anti-aliasing in float32 (uint8 / 255), clipped to [0, 1],
   then normalised with the OpenAI CLIP mean/std, and cut into ``patch x patch x 3`` vectors
   (row-major patches, (y, x, channel) inside a patch).
4. Tokens: ``<im_start> (<im_patch> * cols <im_col>) * rows <im_end>`` for the global view
   (12 x 12 for 336 px crops), then one such grid for all crops together, where each crop
   contributes its pooled patches minus the margins shared with its neighbours. ``patch_index``
   maps every pooled patch of every crop to its ``<im_patch>`` token (-1: a margin, dropped).
5. The model input is ``[bos] + image tokens + text``; Qwen2 has no BOS, so ``<|endoftext|>``
   (the EOS) is used, as in Molmo.

The layout depends only on the frame size, so all frames of a camera share it; history frames
are cut with the keyframe's layout (crop i of every frame covers the same region).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from videomolmo_ros.model.config import VideoMolmoConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"
IM_PATCH_TOKEN = "<im_patch>"
IM_COL_TOKEN = "<im_col>"
IMAGE_PROMPT_TOKEN = "<|image|>"
IMAGE_SPECIAL_TOKENS = (IM_START_TOKEN, IM_END_TOKEN, IM_PATCH_TOKEN, IM_COL_TOKEN,
                        IMAGE_PROMPT_TOKEN)


@dataclass(frozen=True)
class ImageTokenIds:
    """Ids of the image marker tokens (152064-152067 in Molmo's tokenizer)."""

    start: int
    end: int
    patch: int
    col: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "ImageTokenIds":
        """Look the markers up in a tokenizer that has them as added tokens (Molmo's has)."""
        ids = []
        unk = getattr(tokenizer, "unk_token_id", None)
        for token in (IM_START_TOKEN, IM_END_TOKEN, IM_PATCH_TOKEN, IM_COL_TOKEN):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or (unk is not None and token_id == unk):
                raise ValueError(f"tokenizer has no {token} token; use Molmo's tokenizer "
                                 "(allenai/Molmo-7B-D-0924), which VideoMolmo uses")
            ids.append(int(token_id))
        if len(set(ids)) != len(ids):
            raise ValueError(f"image marker tokens must be distinct, got {ids}")
        return cls(*ids)


# --------------------------------------------------------------------------------- pixel level
def resize_and_pad(image: np.ndarray, output_size: tuple[int, int],
                   pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 H x W x 3 -> float32 h x w x 3 in [0, 1] (aspect kept, centred padding), and the
    boolean mask of the pixels that come from the image.

    The scale is computed in float32 and the scaled size truncated, as in Molmo's training code.
    """
    desired_h, desired_w = int(output_size[0]), int(output_size[1])
    height, width = image.shape[:2]
    scale = min(np.float32(desired_h) / np.float32(height),
                np.float32(desired_w) / np.float32(width))
    scaled_h = max(1, int(np.float32(height) * scale))
    scaled_w = max(1, int(np.float32(width) * scale))

    # (3, H, W) float32 in [0, 1], resized with the bilinear anti-aliasing filter.
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    if (scaled_h, scaled_w) != (height, width):
        pixels = F.interpolate(pixels[None], size=(scaled_h, scaled_w), mode="bilinear",
                               align_corners=False, antialias=True)[0]
    resized = pixels.clamp_(0.0, 1.0).permute(1, 2, 0).numpy()

    top = (desired_h - scaled_h) // 2
    left = (desired_w - scaled_w) // 2
    padding = ((top, desired_h - scaled_h - top), (left, desired_w - scaled_w - left))
    mask = np.pad(np.ones((scaled_h, scaled_w), dtype=bool), padding)
    padded = np.pad(resized, padding + ((0, 0),), constant_values=pad_value)
    return padded.astype(np.float32, copy=False), mask


def normalize(image: np.ndarray) -> np.ndarray:
    """CLIP normalisation of a float image in [0, 1] (last axis = RGB)."""
    mean = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)
    std = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)
    return (image - mean) / std


def patchify(images: np.ndarray, patch_size: int) -> np.ndarray:
    """(N, H, W[, C]) -> (N, H/p * W/p, p * p [* C]): row-major patches, (y, x, c) inside."""
    n, height, width = images.shape[:3]
    rows, cols = height // patch_size, width // patch_size
    extra = images.shape[3:]
    blocks = images.reshape((n, rows, patch_size, cols, patch_size) + extra)
    order = (0, 1, 3, 2, 4) + tuple(range(5, 5 + len(extra)))
    return blocks.transpose(order).reshape(n, rows * cols, -1)


def patches_to_image(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The inverse of ``patchify`` for a square crop, channels first for convolutions:
    (N, side*side, p * p * C) -> (N, C, side * p, side * p)."""
    n, count, size = patches.shape
    side = math.isqrt(count)
    channels = size // (patch_size * patch_size)
    if side * side != count or channels * patch_size * patch_size != size:
        raise ValueError(f"{count} patches of {size} values are not a square crop of "
                         f"{patch_size} px patches")
    blocks = patches.reshape(n, side, side, patch_size, patch_size, channels)
    return blocks.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, side * patch_size,
                                                     side * patch_size)


def select_tiling(height: float, width: float, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, cols) of crop windows for a (height, width) area, at most ``max_crops`` crops.

    Prefer the tiling needing the least up-scaling; if every tiling must shrink the area, the one
    shrinking it least. Ties go to fewer crops, then fewer rows. Computed in float32 (the area may
    be <= 0 for tiny frames; the scale is then negative or infinite, as in Molmo).
    """
    tilings = sorted(((r, c) for r in range(1, max_crops + 1) for c in range(1, max_crops + 1)
                      if r * c <= max_crops), key=lambda t: (t[0] * t[1], t[0]))
    candidates = np.asarray(tilings, dtype=np.int32)
    size = np.asarray([height, width], dtype=np.float32)
    with np.errstate(divide="ignore"):
        scales = (candidates * window).astype(np.float32) / size
    scale = scales.min(axis=-1)
    if np.all(scale < 1):
        index = int(np.argmax(scale))
    else:
        index = int(np.argmin(np.where(scale < 1.0, 10e9, scale)))
    return int(candidates[index, 0]), int(candidates[index, 1])


# ------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class CropLayout:
    """How frames of one size are cut into crops (equal for every frame of that size).

    image_size: (height, width) of the frames. tiling: (rows, cols) of high-resolution crops.
    canvas_size: (height, width) the frame is resized and padded to before cropping.
    crop_size / window: crop side and crop stride in pixels.
    """

    image_size: tuple[int, int]
    tiling: tuple[int, int]
    canvas_size: tuple[int, int]
    crop_size: int
    window: int

    @property
    def num_crops(self) -> int:
        """Crops fed to the ViT: the high-resolution ones plus the global view."""
        return self.tiling[0] * self.tiling[1] + 1


def make_crop_layout(height: int, width: int, config: VideoMolmoConfig) -> CropLayout:
    """The Molmo tiling of a ``height`` x ``width`` frame."""
    vision = config.vision_backbone
    patch = vision.image_patch_size
    crop_size = vision.image_default_input_size[0]
    left, right = config.crops.overlap_margins
    window = (crop_size // patch - left - right) * patch
    margin_pixels = (left + right) * patch
    tiling = select_tiling(height - margin_pixels, width - margin_pixels, window,
                           config.crops.max_crops)
    canvas = (tiling[0] * window + margin_pixels, tiling[1] * window + margin_pixels)
    return CropLayout((int(height), int(width)), tiling, canvas, crop_size, window)


@dataclass(frozen=True)
class ImageTokens:
    """The image part of the prompt for one crop layout.

    tokens: (L,) int64 token ids. patch_index: (num_crops, K) int64, K = pooled patches per crop
    (144 for ViT-L/336); entry [c, k] is the position in ``tokens`` of pooled patch k of crop c
    (crop 0 = global view), -1 where the patch lies in a dropped overlap margin.
    """

    tokens: np.ndarray
    patch_index: np.ndarray


def _pooled_span(index: int, count: int, crop_patches: int, margins: tuple[int, int],
                 pool: int) -> tuple[int, int]:
    """(first pooled row/col kept, number kept) of crop ``index`` of ``count`` along one axis."""
    left, right = margins
    size = crop_patches - left - right
    if index == 0:
        size += left
    if index == count - 1:
        size += right
    first = 0 if index == 0 else left // pool
    return first, -(-size // pool)


def image_tokens(layout: CropLayout, ids: ImageTokenIds, config: VideoMolmoConfig) -> ImageTokens:
    """Token ids of the image markers for ``layout`` and where each pooled patch goes."""
    rows_per_crop, cols_per_crop = config.llm_patches_per_crop  # pooled grid of one crop
    crop_rows, crop_cols = config.vision_backbone.image_num_patch  # patch grid of one crop
    col = [ids.col] if config.crops.use_col_tokens else []
    stride = len(col)

    def grid(rows: int, cols: int) -> list[int]:
        return [ids.start] + ([ids.patch] * cols + col) * rows + [ids.end]

    def position(offset: int, row: int, column: int, cols: int) -> int:
        return offset + 1 + row * (cols + stride) + column

    # Global view: the full pooled grid of one crop.
    tokens = grid(rows_per_crop, cols_per_crop)
    patch_index = [np.asarray([position(0, r, c, cols_per_crop)
                               for r in range(rows_per_crop) for c in range(cols_per_crop)])]

    # High-resolution crops: one grid, each crop contributing its pooled patches minus margins.
    n_rows, n_cols = layout.tiling
    margins = config.crops.overlap_margins
    row_spans = [_pooled_span(i, n_rows, crop_rows, margins, config.image_pooling_h)
                 for i in range(n_rows)]
    col_spans = [_pooled_span(j, n_cols, crop_cols, margins, config.image_pooling_w)
                 for j in range(n_cols)]
    grid_rows = sum(kept for _, kept in row_spans)
    grid_cols = sum(kept for _, kept in col_spans)
    offset = len(tokens)
    tokens += grid(grid_rows, grid_cols)
    row_start = 0
    for first_row, kept_rows in row_spans:
        col_start = 0
        for first_col, kept_cols in col_spans:
            index = np.full((rows_per_crop, cols_per_crop), -1, dtype=np.int64)
            for r in range(kept_rows):
                for c in range(kept_cols):
                    index[first_row + r, first_col + c] = position(
                        offset, row_start + r, col_start + c, grid_cols)
            patch_index.append(index.reshape(-1))
            col_start += kept_cols
        row_start += kept_rows
    return ImageTokens(np.asarray(tokens, dtype=np.int64), np.stack(patch_index).astype(np.int64))


# ----------------------------------------------------------------------------- frame -> crops
@dataclass(frozen=True)
class PreprocessedFrame:
    """One frame cut into crops.

    crops: (num_crops, P, patch*patch*3) float32, P = patches per crop (576), global view first.
    masks: (num_crops, P) float32, fraction of each patch covered by the frame, in Molmo's
    layout (rows follow the high-resolution crops, then one row of -1; only Molmo-7B-D's padding
    embeddings read it, VideoMolmo ignores it). layout: the crop layout used.
    """

    crops: torch.Tensor
    masks: torch.Tensor
    layout: CropLayout


def crop_frame(image: np.ndarray, layout: CropLayout,
               config: VideoMolmoConfig) -> PreprocessedFrame:
    """Cut an RGB uint8 frame into the crops of ``layout`` (it may come from another frame of a
    different size: the frame is then fitted into that layout's canvas)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
    patch = config.vision_backbone.image_patch_size
    pad = config.crops.pad_value
    canvas, canvas_mask = resize_and_pad(image, layout.canvas_size, pad)
    canvas = normalize(canvas)
    size, window = layout.crop_size, layout.window
    crops, masks = [], []
    for i in range(layout.tiling[0]):
        for j in range(layout.tiling[1]):
            y0, x0 = i * window, j * window
            crops.append(canvas[y0:y0 + size, x0:x0 + size])
            masks.append(canvas_mask[y0:y0 + size, x0:x0 + size])
    global_view, _ = resize_and_pad(image, (size, size), pad)
    all_crops = np.stack([normalize(global_view)] + crops)  # (num_crops, size, size, 3)
    patches = patchify(all_crops, patch)  # (num_crops, P, patch*patch*3)
    crop_masks = patchify(np.stack(masks).astype(np.float32), patch).mean(axis=-1)
    crop_masks = np.pad(crop_masks, ((0, 1), (0, 0)), constant_values=-1)
    return PreprocessedFrame(torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)),
                             torch.from_numpy(crop_masks.astype(np.float32)), layout)


def black_frame(layout: CropLayout) -> np.ndarray:
    """The padding frame the release prepends at the start of a video (same size, all black)."""
    return np.zeros(layout.image_size + (3,), dtype=np.uint8)


class MultiCropPreprocessor:
    """Config + token ids, with layouts and token grids cached per frame size."""

    def __init__(self, config: VideoMolmoConfig, token_ids: ImageTokenIds) -> None:
        self.config = config
        self.token_ids = token_ids
        self.layout = functools.lru_cache(maxsize=16)(self._layout)
        self.image_tokens = functools.lru_cache(maxsize=16)(self._image_tokens)

    def _layout(self, height: int, width: int) -> CropLayout:
        return make_crop_layout(height, width, self.config)

    def _image_tokens(self, layout: CropLayout) -> ImageTokens:
        return image_tokens(layout, self.token_ids, self.config)

    def frame(self, image: np.ndarray, layout: CropLayout | None = None) -> PreprocessedFrame:
        """Crops of ``image`` in its own layout, or in ``layout`` (a keyframe's)."""
        if layout is None:
            layout = self.layout(int(image.shape[0]), int(image.shape[1]))
        return crop_frame(image, layout, self.config)

    def prompt(self, layout: CropLayout, text_ids: Sequence[int],
               bos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (L,), image_input_idx (num_crops, K)) for ``[bos] + image + text``."""
        image = self.image_tokens(layout)
        input_ids = np.concatenate([[bos_id], image.tokens, np.asarray(text_ids, dtype=np.int64)])
        index = np.where(image.patch_index >= 0, image.patch_index + 1, -1)
        return torch.from_numpy(input_ids.astype(np.int64)), torch.from_numpy(index)
