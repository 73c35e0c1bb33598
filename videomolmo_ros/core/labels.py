"""Label maps: many per-query masks -> one mono8 image, and the labels that name queries.

The node publishes the masks of all tracked queries of a frame as one ``mono8`` image in which
pixel value ``label`` marks the query that owns the label and 0 is background. Labels are
1..255, so at most 255 tracked queries can be live at once.
"""
from __future__ import annotations

from collections import deque
from typing import Mapping

import numpy as np

MAX_LABEL = 255


def compose_label_map(masks: Mapping[int, np.ndarray], labels: Mapping[int, int],
                      shape: tuple[int, int]) -> np.ndarray:
    """One H x W uint8 label image from query id -> mask and query id -> label.

    0 is background. Where masks overlap, the query with the smaller id (the older query)
    wins: its label is stable while labels get reused, so the choice does not flicker.
    ValueError for a mask of another shape, a query without a label, or a label outside
    1..255.
    """
    height, width = (int(shape[0]), int(shape[1]))
    out = np.zeros((height, width), dtype=np.uint8)
    # Paint the newest query first, so older queries overwrite it where they overlap.
    for query_id in sorted(masks, reverse=True):
        if query_id not in labels:
            raise ValueError(f"query {query_id} has a mask but no label")
        label = int(labels[query_id])
        if not 1 <= label <= MAX_LABEL:
            raise ValueError(f"label {label} of query {query_id} is outside 1..{MAX_LABEL}")
        mask = np.asarray(masks[query_id])
        if mask.shape != (height, width):
            raise ValueError(f"mask of query {query_id} has shape {mask.shape}, "
                             f"expected {(height, width)}")
        out[mask.astype(bool, copy=False)] = label
    return out


class LabelsExhaustedError(RuntimeError):
    """Every label is held by a live query."""


class LabelAllocator:
    """Hands out labels 1..max_label, unique among holders, reused after release.

    Released labels go to the back of the queue (never-used labels come first, then the
    least recently released), so a label is not handed to a new query right after the old
    one was cancelled and a viewer's colours do not jump from one object to another.
    Not thread-safe: the engine calls it under its registry lock.
    """

    def __init__(self, max_label: int = MAX_LABEL) -> None:
        if not 1 <= int(max_label) <= MAX_LABEL:
            raise ValueError(f"max_label must be in 1..{MAX_LABEL}, got {max_label}")
        self.max_label = int(max_label)
        self._free: deque[int] = deque(range(1, self.max_label + 1))
        self._used: set[int] = set()

    def acquire(self) -> int:
        """A free label; LabelsExhaustedError when all are in use."""
        if not self._free:
            raise LabelsExhaustedError(f"all {self.max_label} labels are in use; "
                                       "release one first")
        label = self._free.popleft()
        self._used.add(label)
        return label

    def release(self, label: int) -> None:
        """Give ``label`` back; ValueError if it is not held."""
        if label not in self._used:
            raise ValueError(f"label {label} is not allocated")
        self._used.remove(label)
        self._free.append(label)

    def in_use(self) -> frozenset[int]:
        """The labels currently held."""
        return frozenset(self._used)

    def __len__(self) -> int:
        """Number of labels currently held."""
        return len(self._used)
