"""Molmo point text <-> points (percent of width/height in the text, pixels out).

Molmo (and VideoMolmo, which reuses its output format) answers a pointing query with XML-like
tags whose coordinates are percentages (0-100) of the image width and height::

    <point x="61.5" y="40.4" alt="mug">mug</point>
    <points x1="10.0" y1="20.0" x2="30.0" y2="40.0" alt="mugs">mugs</points>
    There are none.

Parsing rules (``parse_points``), chosen to match the released code and never to raise on
model output:

* Pixel = ``int(percent / 100 * size)`` as in VideoMolmo's ``get_coords``, then clamped to
  ``[0, size - 1]`` (100 % would otherwise land one pixel outside the image).
* A coordinate must be a plain non-negative decimal number ("61.5", "7", ".5"). Molmo's
  ``extract_points`` only matches such numbers and drops a point whose x or y exceeds 100, so
  negative numbers, values above 100, NaN/inf, exponents and garbage drop the whole point (its
  x and y together); other points in the same text are kept.
* ``xN`` is paired with ``yN`` (same suffix, "" for ``<point>``) and points come out in the
  order of N; an x without its y, or a y without its x, is dropped.
* A tag cut off by the end of the text or by the next ``<`` (a truncated generation) still
  yields the points whose attributes are complete; an unterminated attribute value is ignored.
* Label: the tag's ``alt``, else its inner text, else the caller's ``label``.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Point:
    """A point in pixel coordinates of the image it was found on."""

    x: float
    y: float
    label: str = ""


NO_POINTS_TEXT = "There are none."

# An opening <point ...> or <points ...> tag; its body ends at '>' or wherever the next tag or
# the text begins/ends, so truncated output still parses.
_OPEN_TAG = re.compile(r"<(points?)\b([^<>]*)(>?)", re.IGNORECASE)
# A complete key="value" attribute (an unterminated value never matches).
_ATTRIBUTE = re.compile(r"([A-Za-z_][\w-]*)\s*=\s*\"([^\"]*)\"")
_COORD_KEY = re.compile(r"^([xy])(\d*)$", re.IGNORECASE)
# Plain non-negative decimal: what Molmo's extract_points regex accepts (no sign, no exponent).
_PLAIN_NUMBER = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)\s*$")


def _percent(value: str) -> float | None:
    """A coordinate in [0, 100], or None when it is not one (see module docstring)."""
    if not _PLAIN_NUMBER.match(value):
        return None
    number = float(value)
    if not 0.0 <= number <= 100.0:
        return None
    return number


def _to_pixel(percent: float, size: int) -> int:
    """Percent of ``size`` -> pixel index, truncated like the release, clamped to the image."""
    pixel = int(percent / 100 * size)
    return min(max(pixel, 0), size - 1)


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")


def _tag_label(attributes: dict[str, str], text: str, tag_end: int, tag_name: str,
               closed: bool) -> str:
    """The tag's alt, else its inner text (up to the matching closing tag), else ""."""
    alt = attributes.get("alt", "").strip()
    if alt:
        return html.unescape(alt)
    if not closed:
        return ""
    close = re.compile(rf"</{tag_name}\s*>", re.IGNORECASE).search(text, tag_end)
    if close is None:
        return ""
    inner = text[tag_end:close.start()]
    if "<" in inner:  # another tag starts before this one closes: no usable inner text
        return ""
    return html.unescape(inner.strip())


def parse_points(text: str, width: int, height: int, label: str = "") -> list[Point]:
    """Molmo point text -> pixel points, in the order they appear; never raises on the text.

    Raises ValueError only for a non-positive image size (a caller bug, not model output).
    """
    _check_size(width, height)
    if not isinstance(text, str):
        return []
    points: list[Point] = []
    for tag in _OPEN_TAG.finditer(text):
        attributes: dict[str, str] = {}
        xs: dict[str, str] = {}
        ys: dict[str, str] = {}
        for key, value in _ATTRIBUTE.findall(tag.group(2)):
            coord = _COORD_KEY.match(key)
            if coord is None:
                attributes.setdefault(key.lower(), value)
                continue
            axis, suffix = coord.group(1).lower(), coord.group(2)
            target = xs if axis == "x" else ys
            if suffix in target:  # a repeated attribute: keep the first, like an XML parser
                continue
            target[suffix] = value
        tag_label = _tag_label(attributes, text, tag.end(), tag.group(1),
                               closed=bool(tag.group(3))) or label
        # Points in the order of their number (x1 before x2), "" (a single <point>) first.
        for suffix in sorted(xs.keys() & ys.keys(), key=lambda s: (len(s) > 0, int(s or 0))):
            x_percent, y_percent = _percent(xs[suffix]), _percent(ys[suffix])
            if x_percent is None or y_percent is None:
                continue
            points.append(Point(float(_to_pixel(x_percent, width)),
                                float(_to_pixel(y_percent, height)), tag_label))
    return points


def _format_percent(pixel: float, size: int) -> str:
    """Pixel -> percent of ``size`` with one decimal, kept inside [0, 100]."""
    return f"{min(max(pixel / size * 100.0, 0.0), 100.0):.1f}"


def format_points(points: Sequence[Point], width: int, height: int, label: str) -> str:
    """Pixel points -> Molmo point text (one decimal), the inverse of ``parse_points``.

    One point gives ``<point x=".." y=".." alt="label">label</point>``, several give
    ``<points x1=".." y1=".." ...>``, none gives "There are none.". One decimal of a percent is
    0.001 * size pixels, so ``parse_points(format_points(p))`` lands within 1 px of integer
    pixel points for images up to 2000 px wide/high (truncation in the parser included).
    Raises ValueError for a non-positive size or a non-finite coordinate.
    """
    _check_size(width, height)
    if not points:
        return NO_POINTS_TEXT
    coords: list[tuple[str, str]] = []
    for point in points:
        if not (math.isfinite(point.x) and math.isfinite(point.y)):
            raise ValueError(f"cannot format a non-finite point: {point}")
        coords.append((_format_percent(point.x, width), _format_percent(point.y, height)))
    alt = html.escape(label, quote=True)
    if len(coords) == 1:
        x, y = coords[0]
        return f'<point x="{x}" y="{y}" alt="{alt}">{alt}</point>'
    pairs = " ".join(f'x{i}="{x}" y{i}="{y}"' for i, (x, y) in enumerate(coords, start=1))
    return f'<points {pairs} alt="{alt}">{alt}</points>'


def points_to_array(points: Sequence[Point]) -> np.ndarray:
    """Points -> N x 2 float array of (x, y); shape (0, 2) when there are none."""
    if not points:
        return np.zeros((0, 2), dtype=np.float64)
    return np.array([[point.x, point.y] for point in points], dtype=np.float64)
