"""COCO run-length encoded masks (MeViS' ``mask_dict.json``), decoded and encoded with numpy.

Why not pycocotools: it is not in the project's pinned environment (it needs a C build), and
MeViS only needs its two RLE forms, specified by ``maskApi.c`` of cocodataset/cocoapi:

* runs alternate background/foreground, starting with background, over the pixels in
  column-major (Fortran) order;
* ``counts`` is either that list of run lengths or its compressed string: each run is stored
  as the difference to the run two before it (from the third run on), written little-endian in
  5-bit groups, one character per group (value + 48), bit 0x20 = "more groups follow", and in
  the last group bit 0x10 is the sign.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def decode_counts_string(text: str | bytes) -> list[int]:
    """Run lengths from a compressed COCO RLE string."""
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    position = 0
    while position < len(data):
        value = 0
        shift = 0
        while True:
            group = data[position] - 48
            position += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:  # sign bit of the last group: negative
                    value -= 1 << shift
                break
            if position >= len(data):
                raise ValueError("truncated COCO RLE string")
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def encode_counts_string(counts: Sequence[int]) -> str:
    """The compressed COCO RLE string of a list of run lengths (inverse of the decoder)."""
    out: list[str] = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        while True:
            group = value & 0x1F
            value >>= 5
            more = (value != -1) if group & 0x10 else (value != 0)
            if more:
                group |= 0x20
            out.append(chr(group + 48))
            if not more:
                break
    return "".join(out)


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """An RLE dict ``{"size": [h, w], "counts": str | list}`` as an H x W bool mask."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = decode_counts_string(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and (counts < 0).any():
        raise ValueError("negative run length in COCO RLE")
    total = int(counts.sum())
    if total != height * width:
        raise ValueError(f"COCO RLE covers {total} pixels, the mask has {height * width}")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T.copy()


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """An H x W mask as a compressed COCO RLE dict (what MeViS' ``mask_dict.json`` holds)."""
    mask = np.asarray(mask).astype(bool)
    height, width = mask.shape
    flat = mask.T.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs  # runs start with background
    return {"size": [height, width], "counts": encode_counts_string(runs)}
