"""Pointer and segmenter factories by name, shared by the node, the demo and the benchmarks.

Heavy backends are imported only when chosen, so the node starts without torch when it runs
the oracle pointer and the classical segmenter.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from videomolmo_ros.pointers.base import Pointer
from videomolmo_ros.segment.base import Segmenter

POINTERS = ("oracle", "videomolmo")
SEGMENTERS = ("auto", "classical", "sam2")


class BackendError(ValueError):
    """A backend name or its settings are wrong; the text says how."""


@dataclass
class PointerSettings:
    """What the ``pointer.*`` parameters of the node say."""

    backend: str = "oracle"
    # oracle: replays the ground-truth points of the synthetic scene of this seed/config
    oracle_scene_seed: int = 0
    oracle_scene_config: dict[str, Any] = field(default_factory=dict)
    # videomolmo: a checkpoint directory (release layout) or a repo id in the local HF cache;
    # "" = the small model shipped with the package (``model.shipped``)
    model_path: str = ""
    model_dtype: str = "fp32"
    model_device: str = "cpu"
    model_quantization: str = ""  # "", "fp4" (the release's) or "nf4"
    max_new_tokens: int = 300
    history_frames: int = 4  # the engine's l: the temporal module's context length


@dataclass
class SegmenterSettings:
    """What the ``sam2.*`` parameters of the node say (the classical backend has none)."""

    sam2_config: str = "sam2.1_hiera_t"  # any of the package's configs, SAM 2 or 2.1
    sam2_checkpoint: str = ""            # a .pt file of the official release
    sam2_image_size: int = 0             # 0: the config's (1024)
    sam2_device: str = "cpu"
    sam2_dtype: str = "float32"          # or bfloat16 (autocast)


def parse_scene_config(text: str) -> dict[str, Any]:
    """The JSON object of SceneConfig overrides given as a parameter string ('' = none)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BackendError(f"oracle.scene_config is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise BackendError("oracle.scene_config must be a JSON object")
    return value


def make_pointer(settings: PointerSettings) -> Pointer:
    """The pointer a name stands for."""
    if settings.backend == "oracle":
        from videomolmo_ros.data.synthetic import SceneConfig, make_scene
        from videomolmo_ros.pointers.oracle import OraclePointer

        try:
            config = SceneConfig(seed=settings.oracle_scene_seed, **settings.oracle_scene_config)
        except TypeError as error:
            raise BackendError(f"bad oracle scene config: {error}") from error
        return OraclePointer(make_scene(config))
    if settings.backend == "videomolmo":
        from videomolmo_ros.model.shipped import model_path_or_shipped

        model_path = model_path_or_shipped(settings.model_path)
        try:
            from videomolmo_ros.model.pointer import VideoMolmoPointer
        except ImportError as error:
            raise BackendError(f"the videomolmo pointer needs torch and transformers: "
                               f"{error}") from error
        try:
            return VideoMolmoPointer.from_pretrained(
                model_path, dtype=settings.model_dtype, device=settings.model_device,
                quantization=settings.model_quantization or None,
                history_frames=settings.history_frames, max_new_tokens=settings.max_new_tokens)
        except (OSError, ValueError, RuntimeError, NotImplementedError) as error:
            raise BackendError(f"cannot load the model from {model_path!r}: "
                               f"{error}") from error
    raise BackendError(f"unknown pointer backend {settings.backend!r}; known: {', '.join(POINTERS)}")


def make_segmenter(backend: str, settings: SegmenterSettings | None = None) -> Segmenter:
    """The segmenter a name stands for. "auto": SAM2 where a checkpoint is configured, else
    the classical CPU backend."""
    settings = settings or SegmenterSettings()
    if backend == "auto":
        backend = "sam2" if settings.sam2_checkpoint else "classical"
    if backend == "classical":
        from videomolmo_ros.segment.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    if backend == "sam2":
        try:
            from videomolmo_ros.segment.sam2_backend import Sam2Segmenter
            from videomolmo_ros.segment.sam2_build import Sam2BuildError
        except ImportError as error:
            raise BackendError(f"the sam2 backend needs torch and the sam2 package: "
                               f"{error}") from error
        try:
            return Sam2Segmenter(settings.sam2_config, settings.sam2_checkpoint or None,
                                 image_size=settings.sam2_image_size or None,
                                 device=settings.sam2_device, dtype=settings.sam2_dtype)
        except (Sam2BuildError, OSError, RuntimeError) as error:
            raise BackendError(f"cannot build SAM2: {error}") from error
    raise BackendError(f"unknown segmenter backend {backend!r}; known: {', '.join(SEGMENTERS)}")
