"""SAM2 mask backend: streaming at bounded memory, forward and backward, faithful to stock SAM2.

The ``sam2`` package's ``SAM2VideoPredictor`` wants the whole video up front (``init_state``
loads every frame) and keeps every frame's outputs; a camera stream never ends. This backend
drives the same model methods (``forward_image``, ``track_step``, ``_encode_new_memory``) frame
by frame and keeps only what SAM2's memory attention reads, so that on the same frames,
prompts and weights it gives the masks the stock predictor gives (tested bit for bit on CPU in
``test/test_sam2_parity.py``).

Per camera (``Sam2Tracker``):

* ``prompt`` (keyframe): each point of each query is its own SAM2 object (as the VideoMolmo
  release does); a query's mask is the OR of its objects' masks, empty for zero points. The
  forward tracks restart from this conditioning frame: every object and memory of the previous
  keyframe is dropped, exactly as if stock SAM2 were started fresh on the video from here.
  Old memories are not carried over because a keyframe's objects are new (other points, maybe
  another count); the cost is no long-term memory across keyframes (an object lost at a
  keyframe's point stays lost until a later keyframe points at it again).
* ``forward`` (every other frame): one ``track_step`` per object, as ``propagate_in_video``.
  Each object's memory bank holds its conditioning output plus the outputs of the frames its
  next step can read: the spatial memories of the last ``stride * (num_maskmem - 2) + 1``
  frames (6 for the released configs) and the object pointers of the last
  ``max_obj_ptrs_in_encoder - 1`` frames (15; 256 floats each). Older entries are dropped.
* ``backward`` (next keyframe pointed): from that keyframe over the buffered window, newest
  first, as ``propagate_in_video(reverse=True)``. Seeds equal to the masks ``prompt`` returned
  for that keyframe reuse its point-conditioned objects (the paper's setting, SAM2 prompted by
  points at both keyframes); other seeds are mask prompts (as ``add_new_mask``), one object
  per query; an empty seed gives empty masks without running SAM2.
* Image features: computed once per frame (keyed by index and stamp) and shared by
  ``prompt``, ``forward`` and ``backward``; ``forget`` drops those of older frames, and at
  most ``max_cached_frames`` are kept in any case (evicted frames are recomputed if needed).
* Failures: an object SAM2 loses (object score <= 0) gives an empty mask, which the engine's
  fusion rule replaces by the other direction's mask. ``torch.cuda.OutOfMemoryError`` on one
  frame is logged; that frame's masks are empty and it leaves no memory (as a skipped frame),
  and the stream goes on. On a prompt the queries stay empty until the next keyframe.

Differences from stock SAM2, all deliberate: (1) a stream has no length, so SAM2 behaves as on
a video of at least ``max_obj_ptrs_in_encoder`` (16) frames; on shorter videos the stock
predictor uses fewer object-pointer slots and another temporal scale for them, so parity is
checked on a 16-frame video. (2) Objects are tracked from a fresh state at each keyframe (see
above), whereas one stock session would treat later clicks as corrections. (3) Frames are
resized with PIL as ``init_state`` does for JPEG folders, but from the raw RGB image (no JPEG
round trip). (4) ``dtype`` other than float32 runs the model under ``torch.autocast``, as the
SAM2 examples do on GPU; parity holds for float32.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.segment.base import Masks, MaskTracker, Segmenter
from videomolmo_ros.segment.common import (FrameCache, as_points, check_backward_frames,
                                           check_image)
from videomolmo_ros.segment.sam2_build import build_model

log = logging.getLogger(__name__)

# SAM2's input normalisation (ImageNet statistics, as in sam2.utils.misc.load_video_frames).
_MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
_STD = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
# A stream has no length: SAM2 behaves as on a long video.
_UNBOUNDED_FRAMES = 2 ** 31 - 1
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class Sam2Segmenter(Segmenter):
    """Factory of SAM2 trackers sharing one model (see the module docstring).

    config_name: a SAM 2 / 2.1 config, e.g. "sam2.1_hiera_t" or "sam2.1_hiera_large".
    checkpoint: the matching ``.pt`` file; ``None`` only with ``random_weights=True``.
    image_size: model input side in pixels, a multiple of 32 (default: the config's 1024).
    device, dtype: where and in which precision the model runs ("cuda", torch.bfloat16...).
    overrides: extra hydra overrides (e.g. fewer memory-attention layers for benchmarks).
    max_cached_frames: cap on frames whose image features a tracker keeps (about 17 MB each
        at 1024 px in float32); above the keyframe interval k, so that backward reuses the
        window's features instead of recomputing them.
    """

    name = "sam2"

    def __init__(self, config_name: str = "sam2.1_hiera_t",
                 checkpoint: str | os.PathLike | None = None, image_size: int | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                 *, random_weights: bool = False, seed: int = 0, overrides: Sequence[str] = (),
                 max_cached_frames: int = 32) -> None:
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        if max_cached_frames < 1:
            raise ValueError(f"max_cached_frames must be >= 1, got {max_cached_frames}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_cached_frames = max_cached_frames
        self.model = build_model(config_name, checkpoint, image_size=image_size,
                                 device=self.device, random_weights=random_weights, seed=seed,
                                 overrides=overrides)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    def new_tracker(self) -> "Sam2Tracker":
        return Sam2Tracker(self.model, dtype=self.dtype, max_cached_frames=self.max_cached_frames)


class _Features(NamedTuple):
    """One frame's backbone outputs, flattened as SAM2's track_step takes them."""

    feats: list[torch.Tensor]  # per level: (h*w) x 1 x C, finest first
    pos: list[torch.Tensor]    # per level: (h*w) x 1 x C positional encodings
    sizes: list[tuple[int, int]]  # per level: (h, w)


@dataclass
class _Object:
    """One SAM2 object (one keyframe point, or one mask seed) and its memory bank."""

    query_id: int
    cond_index: int
    cond: dict[str, Any]  # compact output at the conditioning frame
    bank: dict[int, dict[str, Any]] = field(default_factory=dict)  # non-conditioning outputs

    def output_dict(self) -> dict[str, dict[int, dict[str, Any]]]:
        """The view SAM2's memory attention reads (track_step's ``output_dict``)."""
        return {"cond_frame_outputs": {self.cond_index: self.cond},
                "non_cond_frame_outputs": self.bank}


@dataclass
class _Keyframe:
    """The last prompt: its frame identity, returned masks and point objects (for backward)."""

    index: int
    stamp_ns: int
    masks: Masks
    objects: list[_Object]


class Sam2Tracker(MaskTracker):
    """Per-camera SAM2 tracks: prompt, forward, backward with bounded memory.

    Not thread-safe: one caller at a time (the engine holds its stream lock). Trackers of
    several cameras share the model.
    """

    def __init__(self, model: torch.nn.Module, *, dtype: torch.dtype = torch.float32,
                 max_cached_frames: int = 32) -> None:
        self.model = model
        self.dtype = dtype
        self.max_cached_frames = max_cached_frames
        self.device = model.device
        self.size = int(model.image_size)
        self._cache: FrameCache[_Features] = FrameCache(max_cached_frames)
        self._objects: list[_Object] = []
        self._queries: list[int] | None = None  # tracked query ids; None before any prompt
        self._last_index: int | None = None
        self._key: _Keyframe | None = None
        self._maskmem_pos_enc: list[torch.Tensor] | None = None
        self._image_pos: dict[tuple, list[torch.Tensor]] = {}
        self._fill_holes = model.fill_hole_area > 0 and _has_sam2_extension()
        # What the memory attention of the next step can read (see the module docstring).
        stride = int(model.memory_temporal_stride_for_eval)
        self.mem_lag = stride * max(int(model.num_maskmem) - 2, 0)
        self.ptr_lag = (int(model.max_obj_ptrs_in_encoder) - 2
                        if model.use_obj_ptrs_in_encoder else -1)
        self.encoded_frames = 0  # image-encoder runs (tests check features are shared)

    # ------------------------------------------------------------------ interface

    def prompt(self, frame: Frame, points: Mapping[int, np.ndarray]) -> Masks:
        """One SAM2 object per point, masks OR-ed per query; restarts the forward tracks."""
        check_image(frame)
        prompts = {qid: as_points(pts) for qid, pts in points.items()}
        self._objects, self._queries, self._key = [], list(prompts), None
        self._last_index = frame.index
        try:
            with self._mode():
                feats = self._features(frame)
                objects, logits = [], []
                for qid, pts in prompts.items():
                    for xy in pts:
                        obj, low = self._point_object(feats, frame, qid, xy)
                        objects.append(obj)
                        logits.append(low)
                masks = self._video_masks(frame, objects, logits, list(prompts))
        except torch.cuda.OutOfMemoryError:
            self._on_oom("prompt", frame)
            return _empty(frame, prompts)
        self._objects = objects
        self._key = _Keyframe(frame.index, frame.stamp_ns,
                              {q: m.copy() for q, m in masks.items()}, objects)
        return masks

    def forward(self, frame: Frame) -> Masks:
        """Propagate every tracked object to the next frame (stock ``propagate_in_video``)."""
        check_image(frame)
        if self._queries is None:
            return {}
        if self._last_index is not None and frame.index <= self._last_index:
            raise ValueError(f"forward frames must follow the last prompted or propagated "
                             f"frame ({frame.index} <= {self._last_index})")
        self._last_index = frame.index
        try:
            with self._mode():
                feats = self._features(frame)
                logits = [self._track(obj, feats, frame.index, reverse=False)
                          for obj in self._objects]
                return self._video_masks(frame, self._objects, logits, self._queries)
        except torch.cuda.OutOfMemoryError:
            for obj in self._objects:  # the frame leaves no memory, as a skipped frame
                obj.bank.pop(frame.index, None)
            self._on_oom("forward", frame)
            return _empty(frame, self._queries)

    def backward(self, keyframe: Frame, key_masks: Mapping[int, np.ndarray],
                 frames: Sequence[Frame]) -> list[Masks]:
        """Propagate from ``keyframe`` over ``frames`` newest first (stock ``reverse=True``)."""
        check_backward_frames(keyframe, frames)
        seeds = {qid: np.asarray(m, dtype=bool) for qid, m in key_masks.items()}
        for qid, m in seeds.items():
            if m.shape != (keyframe.height, keyframe.width):
                raise ValueError(f"key mask {qid} has shape {m.shape}, keyframe is "
                                 f"{(keyframe.height, keyframe.width)}")
        try:
            with self._mode():
                objects = self._backward_objects(keyframe, seeds)
        except torch.cuda.OutOfMemoryError:
            self._on_oom("backward seed", keyframe)
            return [_empty(f, seeds) for f in frames]
        out: list[Masks] = []
        for f in reversed(frames):
            try:
                with self._mode():
                    feats = self._features(f)
                    logits = [self._track(obj, feats, f.index, reverse=True) for obj in objects]
                    out.append(self._video_masks(f, objects, logits, list(seeds)))
            except torch.cuda.OutOfMemoryError:
                for obj in objects:
                    obj.bank.pop(f.index, None)
                self._on_oom("backward", f)
                out.append(_empty(f, seeds))
        out.reverse()
        return out

    def forget(self, before_index: int) -> None:
        """Drop the image features of frames with index < ``before_index``."""
        self._cache.forget(before_index)

    # ------------------------------------------------------------------ monitoring

    @property
    def cached_indices(self) -> list[int]:
        """Frame indices whose image features are cached."""
        return self._cache.indices

    def memory_entries(self) -> dict[str, int]:
        """Sizes of the forward state: objects, memory-bank entries, spatial memories."""
        bank = sum(len(o.bank) for o in self._objects)
        spatial = sum(1 for o in self._objects for e in o.bank.values()
                      if "maskmem_features" in e)
        return {"objects": len(self._objects), "bank_entries": bank,
                "spatial_memories": spatial, "cached_frames": len(self._cache)}

    # ------------------------------------------------------------------ model steps

    def _mode(self) -> "_Mode":
        return _Mode(self.device, self.dtype)

    def _features(self, frame: Frame) -> _Features:
        """The frame's backbone features, computed once and cached (see ``forget``)."""
        return self._cache.get(frame, self._encode)

    def _encode(self, frame: Frame) -> _Features:
        image = self._preprocess(frame.image)  # 1 x 3 x S x S
        backbone_out = self.model.forward_image(image)
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone_out)
        self.encoded_frames += 1
        return _Features(feats, self._shared_pos(pos), sizes)

    def _shared_pos(self, pos: list[torch.Tensor]) -> list[torch.Tensor]:
        """One copy of the image positional encodings (they depend on the shape only).

        Without this every cached frame would hold its own (about 90 MB of them at 1024 px).
        """
        key = tuple((tuple(p.shape), p.dtype, p.device) for p in pos)
        shared = self._image_pos.get(key)
        if shared is None:
            shared = self._image_pos[key] = pos
        return shared

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 H x W x 3 -> normalised 1 x 3 x S x S, as ``init_state`` does.

        Same operations in the same precision as sam2.utils.misc: PIL resize (its default
        filter), divide by 255 in float64, cast to float32, subtract mean, divide by std.
        """
        resized = np.asarray(Image.fromarray(image).resize((self.size, self.size)))
        x = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32)
        x -= _MEAN
        x /= _STD
        return x.to(self.device).unsqueeze(0)

    def _point_object(self, feats: _Features, frame: Frame, qid: int,
                      xy: np.ndarray) -> tuple[_Object, torch.Tensor]:
        """A new object from one positive click (``add_new_points_or_box`` + preflight)."""
        coords = torch.tensor(np.asarray(xy, np.float32)[None, None])  # 1 x 1 x 2 (x, y)
        coords = coords / torch.tensor([frame.width, frame.height]) * self.size
        inputs = {"point_coords": coords.to(self.device),
                  "point_labels": torch.ones(1, 1, dtype=torch.int32, device=self.device)}
        return self._cond_object(feats, frame.index, qid, point_inputs=inputs)

    def _mask_object(self, feats: _Features, index: int, qid: int,
                     mask: np.ndarray) -> tuple[_Object, torch.Tensor]:
        """A new object from a mask (``add_new_mask`` + preflight)."""
        m = torch.tensor(mask, dtype=torch.bool)[None, None].float().to(self.device)
        if m.shape[-2:] != (self.size, self.size):  # 1 x 1 x H x W -> 1 x 1 x S x S
            m = F.interpolate(m, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        return self._cond_object(feats, index, qid, mask_inputs=m)

    def _cond_object(self, feats: _Features, index: int, qid: int, *,
                     point_inputs: dict[str, torch.Tensor] | None = None,
                     mask_inputs: torch.Tensor | None = None) -> tuple[_Object, torch.Tensor]:
        """Run SAM on a conditioning frame, then encode its (binarised) mask into memory."""
        empty = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        out = self.model.track_step(
            frame_idx=index, is_init_cond_frame=True, current_vision_feats=feats.feats,
            current_vision_pos_embeds=feats.pos, feat_sizes=feats.sizes,
            point_inputs=point_inputs, mask_inputs=mask_inputs, output_dict=empty,
            num_frames=_UNBOUNDED_FRAMES, track_in_reverse=False, run_mem_encoder=False,
            prev_sam_mask_logits=None)
        low = self._fill(out["pred_masks"])  # 1 x 1 x S/4 x S/4 logits
        high = F.interpolate(low, size=(self.size, self.size), mode="bilinear",
                             align_corners=False)
        maskmem, pos_enc = self.model._encode_new_memory(
            current_vision_feats=feats.feats, feat_sizes=feats.sizes, pred_masks_high_res=high,
            object_score_logits=out["object_score_logits"], is_mask_from_pts=True)
        out["maskmem_features"], out["maskmem_pos_enc"] = maskmem, pos_enc
        return _Object(qid, index, self._compact(out)), low

    def _track(self, obj: _Object, feats: _Features, index: int, reverse: bool) -> torch.Tensor:
        """One propagation step of one object; stores its memory and prunes the bank."""
        out = self.model.track_step(
            frame_idx=index, is_init_cond_frame=False, current_vision_feats=feats.feats,
            current_vision_pos_embeds=feats.pos, feat_sizes=feats.sizes, point_inputs=None,
            mask_inputs=None, output_dict=obj.output_dict(), num_frames=_UNBOUNDED_FRAMES,
            track_in_reverse=reverse, run_mem_encoder=True, prev_sam_mask_logits=None)
        obj.bank[index] = self._compact(out)
        self._prune(obj.bank, index)
        return self._fill(out["pred_masks"])

    def _prune(self, bank: dict[int, dict[str, Any]], index: int) -> None:
        """Keep what the next step (either direction) can read; drop the rest."""
        for t in list(bank):
            distance = abs(index - t)
            if distance > max(self.mem_lag, self.ptr_lag):
                del bank[t]
            elif distance > self.mem_lag and "maskmem_features" in bank[t]:
                bank[t] = {"obj_ptr": bank[t]["obj_ptr"]}  # 1 x C: the pointer is still read

    def _compact(self, out: dict[str, Any]) -> dict[str, Any]:
        """What memory attention reads of one output (maskmem stored in bf16, as stock)."""
        maskmem = out["maskmem_features"]
        if maskmem is not None:
            maskmem = maskmem.to(torch.bfloat16)
        return {"maskmem_features": maskmem,
                "maskmem_pos_enc": self._shared_pos_enc(out["maskmem_pos_enc"]),
                "obj_ptr": out["obj_ptr"],
                "object_score_logits": out["object_score_logits"]}

    def _shared_pos_enc(self, pos: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """One copy of the memory positional encoding (the same for every frame and object)."""
        if pos is None:
            return None
        cached = self._maskmem_pos_enc
        if cached is None or cached[0].shape[-2:] != pos[0].shape[-2:]:
            cached = self._maskmem_pos_enc = [p[0:1].clone() for p in pos]
        return cached

    def _fill(self, logits: torch.Tensor) -> torch.Tensor:
        """Stock post-processing: fill small holes when SAM2's C extension is built."""
        if not self._fill_holes:
            return logits
        from sam2.utils.misc import fill_holes_in_mask_scores

        return fill_holes_in_mask_scores(logits, self.model.fill_hole_area)

    def _backward_objects(self, keyframe: Frame, seeds: Mapping[int, np.ndarray]) -> list[_Object]:
        """Objects to propagate backward: the keyframe's point objects, or mask prompts."""
        key = self._key
        same_key = (key is not None and key.index == keyframe.index
                    and key.stamp_ns == keyframe.stamp_ns)
        objects: list[_Object] = []
        feats = None
        for qid, seed in seeds.items():
            if same_key and qid in key.masks and np.array_equal(seed, key.masks[qid]):
                # Fresh banks; the conditioning outputs are shared read-only with forward.
                objects += [_Object(qid, o.cond_index, o.cond)
                            for o in key.objects if o.query_id == qid]
            elif seed.any():
                if feats is None:
                    feats = self._features(keyframe)
                objects.append(self._mask_object(feats, keyframe.index, qid, seed)[0])
        return objects

    def _video_masks(self, frame: Frame, objects: Sequence[_Object],
                     logits: Sequence[torch.Tensor], queries: Sequence[int]) -> Masks:
        """Per query: OR over its objects of (logits resized to the frame) > 0."""
        masks = {qid: np.zeros((frame.height, frame.width), bool) for qid in queries}
        if not objects:
            return masks
        low = torch.cat(list(logits), dim=0)  # n_obj x 1 x S/4 x S/4
        video = F.interpolate(low, size=(frame.height, frame.width), mode="bilinear",
                              align_corners=False)
        fg = (video[:, 0] > 0.0).cpu().numpy()  # n_obj x H x W
        for obj, m in zip(objects, fg):
            masks[obj.query_id] |= m
        return masks

    def _on_oom(self, stage: str, frame: Frame) -> None:
        log.warning("SAM2 ran out of GPU memory in %s on frame %d of camera %r; its masks "
                    "are empty and the stream goes on", stage, frame.index, frame.camera)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Mode:
    """inference_mode plus autocast for a non-float32 dtype (one ``with`` for both)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self._stack: list[Any] = [torch.inference_mode()]
        if dtype != torch.float32:
            self._stack.append(torch.autocast(device_type=device.type, dtype=dtype))

    def __enter__(self) -> "_Mode":
        for ctx in self._stack:
            ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for ctx in reversed(self._stack):
            ctx.__exit__(*exc)


def _has_sam2_extension() -> bool:
    """Whether sam2's optional C/CUDA extension (hole filling) is built."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        log.info("sam2 C extension not built: small-hole filling of masks is skipped, as the "
                 "stock predictor does then")
        return False
    return True


def _empty(frame: Frame, queries: Iterator[int] | Mapping[int, Any] | Sequence[int]) -> Masks:
    return {qid: np.zeros((frame.height, frame.width), bool) for qid in queries}
