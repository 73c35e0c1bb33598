"""Small, fast settings for tests of the training code (seconds, not minutes)."""
from __future__ import annotations

import functools
from typing import Any

from videomolmo_ros.train.dataset import DataConfig

# Small frames and short clips: a scene takes milliseconds, a tiny-model step well under 1 s.
TINY_SCENE: dict[str, Any] = {"width": 96, "height": 72, "num_frames": 8, "num_objects": (2, 4)}


@functools.lru_cache(maxsize=1)
def small_tokenizer() -> Any:
    """The project tokenizer trained on a small corpus (same layout as the default one)."""
    from videomolmo_ros.train.tokenizer import build_tokenizer, training_corpus

    return build_tokenizer(training_corpus(num_scenes=2))


def tiny_data(**overrides: Any) -> DataConfig:
    """A ``DataConfig`` over ``TINY_SCENE`` with 3 queries per keyframe."""
    values: dict[str, Any] = dict(scene=dict(TINY_SCENE), queries_per_frame=3, frames_per_scene=2,
                                  interleave=2)
    values.update(overrides)
    return DataConfig(**values)
