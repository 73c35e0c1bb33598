"""sensor_msgs/Image fields -> an RGB uint8 array, without cv_bridge.

cv_bridge is not available as a wheel (and the unofficial PyPI one corrupts 16-bit images),
so the node decodes the raw encodings it accepts by hand here. Pure numpy: the fields are
passed in, so this is tested without ROS.
"""
from __future__ import annotations

import numpy as np

# encoding -> (channels, numpy dtype of one channel, channel order for RGB output)
_LAYOUTS: dict[str, tuple[int, str, tuple[int, ...]]] = {
    "rgb8": (3, "u1", (0, 1, 2)),
    "bgr8": (3, "u1", (2, 1, 0)),
    "rgba8": (4, "u1", (0, 1, 2)),
    "bgra8": (4, "u1", (2, 1, 0)),
    "mono8": (1, "u1", (0, 0, 0)),
    "8UC1": (1, "u1", (0, 0, 0)),
    "8UC3": (3, "u1", (2, 1, 0)),  # OpenCV's default channel order is BGR
    "mono16": (1, "u2", (0, 0, 0)),
    "16UC1": (1, "u2", (0, 0, 0)),
}

SUPPORTED_ENCODINGS = tuple(sorted(_LAYOUTS))


class ImageDecodeError(ValueError):
    """The message cannot be turned into an image; the text says why."""


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                 data: bytes | bytearray | memoryview | np.ndarray,
                 max_pixels: int = 0) -> np.ndarray:
    """Decode raw image fields to H x W x 3 uint8 RGB.

    Honours ``step`` (row padding) and ``is_bigendian``. 16-bit images are scaled to 8 bit
    by their own maximum (a depth or IR image shown as grey). ``max_pixels`` > 0 rejects
    larger images. Raises ImageDecodeError with the reason for anything inconsistent.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(
            f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image ({width} x {height})")
    if max_pixels and height * width > max_pixels:
        raise ImageDecodeError(
            f"image of {width} x {height} exceeds the limit of {max_pixels} pixels")
    channels, kind, order = layout
    itemsize = np.dtype(kind).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is smaller than a row ({row_bytes} bytes)")
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)
    if buffer.size < step * height:
        raise ImageDecodeError(
            f"data has {buffer.size} bytes, {step} x {height} = {step * height} expected")
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]
    dtype = np.dtype(kind).newbyteorder(">" if is_bigendian else "<") if itemsize > 1 \
        else np.dtype(kind)
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if itemsize > 1:
        peak = int(pixels.max())
        pixels = (pixels.astype(np.float32) * (255.0 / peak) if peak else
                  np.zeros(pixels.shape, np.float32)).astype(np.uint8)
    return np.ascontiguousarray(pixels[:, :, list(order)])
