"""Where the small VideoMolmo this project trains ships: ``weights/videomolmo-small`` inside
the package (weights by ``train.ship``, model card ``README.md`` by hand). It is what
``pointer.backend: videomolmo`` loads when ``model.path`` is empty. Once a trained model meets
issue 4's targets it also becomes the node's and the demo's default pointer (today: the oracle).

It is the published architecture at a small size, trained here from scratch on the synthetic
referring videos (``python -m videomolmo_ros.train``), so it understands the synthetic scenes'
language and nothing else; real footage needs the published checkpoint (``model.path``).
"""
from __future__ import annotations

from pathlib import Path

SHIPPED_MODEL_NAME = "videomolmo-small"


def shipped_model_dir() -> Path:
    """Where the shipped model lives (installed along with the Python package)."""
    return Path(__file__).resolve().parent.parent / "weights" / SHIPPED_MODEL_NAME


def model_path_or_shipped(model_path: str) -> str:
    """What a ``model.path`` setting names: itself, or the shipped model when it is empty."""
    return model_path or str(shipped_model_dir())
