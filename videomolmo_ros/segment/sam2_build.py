"""Build a SAM2 video model from the ``sam2`` package's own configs and a user checkpoint.

One job: turn (config name, checkpoint, input size, device) into an eval-mode
``SAM2VideoPredictor`` module. The model is built by the package's
``build_sam2_video_predictor`` so that it carries exactly the post-processing overrides the
stock predictor uses (dynamic multimask, binarised prompt masks in memory, hole filling);
the checkpoint is loaded here instead, so that a wrong file fails with a readable message.

Config names: every SAM 2 and SAM 2.1 size is accepted under its usual spellings, e.g.
``sam2.1_hiera_t``, ``sam2.1_hiera_tiny``, ``facebook/sam2.1-hiera-tiny``,
``sam2_hiera_b+``, ``sam2_hiera_base_plus``, or the package path
``configs/sam2.1/sam2.1_hiera_t.yaml``.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import torch

_SIZES = {"t": "t", "tiny": "t", "s": "s", "small": "s", "b+": "b+", "base_plus": "b+",
          "base-plus": "b+", "baseplus": "b+", "bplus": "b+", "l": "l", "large": "l"}
_NAME = re.compile(r"^(?:facebook/)?(?:configs/sam2(?:\.1)?/)?(?P<version>sam2(?:\.1)?)"
                   r"[_-]hiera[_-](?P<size>[a-z+_-]+?)(?:\.yaml)?$")
# How many offending keys an error message lists before "... and N more".
_MAX_KEYS_SHOWN = 12


class Sam2BuildError(ValueError):
    """A SAM2 model could not be built: unknown config, bad size, missing or wrong checkpoint."""


def config_file(name: str) -> str:
    """The package config path (``configs/<version>/<version>_hiera_<size>.yaml``) for a name."""
    match = _NAME.match(name.strip().lower())
    size = _SIZES.get(match.group("size")) if match else None
    if match is None or size is None:
        raise Sam2BuildError(
            f"unknown SAM2 config {name!r}; use e.g. 'sam2.1_hiera_t', 'sam2.1_hiera_small', "
            "'sam2_hiera_b+', 'facebook/sam2.1-hiera-large' or "
            "'configs/sam2.1/sam2.1_hiera_t.yaml' (versions sam2, sam2.1; sizes tiny, small, "
            "base_plus, large)")
    version = match.group("version")
    return f"configs/{version}/{version}_hiera_{size}.yaml"


def size_overrides(image_size: int) -> list[str]:
    """Hydra overrides that set the model's square input size (pixels, a multiple of 32)."""
    if image_size <= 0 or image_size % 32:
        raise Sam2BuildError(f"image_size must be a positive multiple of 32, got {image_size}")
    feat = image_size // 16  # backbone stride 16: the memory attention's RoPE grid
    rope = f"[{feat},{feat}]"
    return [f"++model.image_size={image_size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes={rope}",
            f"++model.memory_attention.layer.cross_attention.feat_sizes={rope}"]


def build_model(config_name: str, checkpoint: str | os.PathLike | None = None, *,
                image_size: int | None = None, device: str | torch.device = "cpu",
                random_weights: bool = False, seed: int = 0,
                overrides: Sequence[str] = ()) -> torch.nn.Module:
    """An eval-mode ``SAM2VideoPredictor`` on ``device``.

    checkpoint: a SAM2 ``.pt`` file (``{"model": state_dict}`` as released, or a bare
        state dict), read with ``torch.load(weights_only=True)``. ``None`` is allowed only
        with ``random_weights=True`` (tests, benchmarks): weights then come from ``seed``.
    image_size: input side in pixels (default: the config's, 1024).
    overrides: extra hydra overrides, e.g. ``"++model.memory_attention.num_layers=1"``.
    """
    from sam2.build_sam import build_sam2_video_predictor  # optional dependency

    cfg = config_file(config_name)
    if checkpoint is None and not random_weights:
        raise Sam2BuildError(
            f"no SAM2 checkpoint given for {config_name!r}; pass the path of the matching "
            "checkpoint (e.g. sam2.1_hiera_tiny.pt), or random_weights=True for tests")
    state = _read_checkpoint(checkpoint) if checkpoint is not None else None
    extra = list(overrides)
    if image_size is not None:
        extra = size_overrides(int(image_size)) + extra
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = build_sam2_video_predictor(cfg, ckpt_path=None, device="cpu",
                                           hydra_overrides_extra=extra)
    if state is not None:
        _load_state(model, state, checkpoint)
    return model.to(device).eval()


def _read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in a checkpoint file (clear errors for missing or odd files)."""
    if not os.path.isfile(path):
        raise Sam2BuildError(f"SAM2 checkpoint not found: {os.fspath(path)!r}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip or weights_only refusals: all unreadable here
        raise Sam2BuildError(f"cannot read SAM2 checkpoint {os.fspath(path)!r}: {error}") \
            from error
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        blob = blob["model"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise Sam2BuildError(f"SAM2 checkpoint {os.fspath(path)!r} holds no state dict "
                             "(expected {'model': state_dict} or a state dict)")
    return blob


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor],
                path: str | os.PathLike) -> None:
    """Load ``state`` strictly; list missing, unexpected and mis-shaped keys on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {_few(keys)}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", shapes)) if keys]
        raise Sam2BuildError(f"SAM2 checkpoint {os.fspath(path)!r} does not match the config "
                             "(wrong size or version?): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f", ... and {more} more" if more > 0 else "")
