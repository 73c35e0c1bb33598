"""Dataset readers behind one API (``VideoSample`` / ``Expression``), opened by name.

Names (and the split used when none is given):
  ref-davis17      valid (ReferFormer's converted layout) / val (original DAVIS downloads)
  ref-youtube-vos  valid (no public ground truth: submission only)
  mevis            valid_u
  reasonvos        (no splits)
  vpos-bench       all subsets (a split names one subset)
  synthetic        (no splits)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from videomolmo_ros.eval.datasets.base import (DatasetError, Expression, VideoDataset,
                                               VideoSample)

__all__ = ["DATASETS", "DatasetError", "Expression", "VideoDataset", "VideoSample",
           "open_dataset", "TITLES"]

# Display names as in the paper's tables.
TITLES = {
    "ref-davis17": "Refer-DAVIS-17",
    "ref-youtube-vos": "Refer-Youtube-VOS",
    "mevis": "MeViS",
    "reasonvos": "ReasonVOS",
    "vpos-bench": "VPoS-Bench",
    "synthetic": "Synthetic",
}
_ALIASES = {"ref-davis": "ref-davis17", "refdavis": "ref-davis17", "davis17": "ref-davis17",
            "ref-ytvos": "ref-youtube-vos", "refytvos": "ref-youtube-vos",
            "reason-vos": "reasonvos", "vpos": "vpos-bench"}


def _ref_davis(root: Path, split: str | None) -> VideoDataset:
    from videomolmo_ros.eval.datasets.ref_davis import open_ref_davis
    return open_ref_davis(root, split)


def _ref_ytvos(root: Path, split: str | None) -> VideoDataset:
    from videomolmo_ros.eval.datasets.ref_youtube_vos import RefYouTubeVOS
    return RefYouTubeVOS(root, split or "valid")


def _mevis(root: Path, split: str | None) -> VideoDataset:
    from videomolmo_ros.eval.datasets.mevis import MeViS
    return MeViS(root, split or "valid_u")


def _reasonvos(root: Path, split: str | None) -> VideoDataset:
    from videomolmo_ros.eval.datasets.reasonvos import ReasonVOS
    return ReasonVOS(root, split)


def _vpos(root: Path, split: str | None) -> VideoDataset:
    from videomolmo_ros.eval.datasets.vpos_bench import VPoSBench
    return VPoSBench(root, split)


def _synthetic(root: Path, split: str | None) -> VideoDataset:
    from videomolmo_ros.eval.datasets.synthetic import SyntheticExport
    return SyntheticExport(root, split)


DATASETS: dict[str, Callable[[Path, "str | None"], VideoDataset]] = {
    "ref-davis17": _ref_davis,
    "ref-youtube-vos": _ref_ytvos,
    "mevis": _mevis,
    "reasonvos": _reasonvos,
    "vpos-bench": _vpos,
    "synthetic": _synthetic,
}


def canonical_name(name: str) -> str:
    """The registry name of a dataset name or alias; DatasetError if unknown."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def open_dataset(name: str, root: str | Path, split: str | None = None) -> VideoDataset:
    """The reader of dataset ``name`` over ``root`` (see the module docstring for splits)."""
    return DATASETS[canonical_name(name)](Path(root), split)
