"""Classical CPU mask backend (OpenCV): seeded region growing plus dense optical flow.

Good for: running anywhere, fast (about 3 ms per frame for one object at 320x240, 11 ms at
640x480, one core), no weights to download, and objects that stand out from their
surroundings by colour: distinct plain objects, and textured ones whose texture is shades of
one hue (stripes, dots, shading) on a different background.

Not good for: semantics (a point seeds a colour region, not "the object": a multi-coloured
object yields the part under the point, a point on a shirt never becomes the whole person);
low contrast, camouflage and grey-on-grey patterns (the region leaks or stays one stripe);
objects that change colour (the colour model is fixed when the track starts); long gaps
between keyframes (flow errors accumulate as drift); re-detection (once an object is lost -
left the frame, fully occluded - its mask stays empty until the next prompt). SAM2 is the
backend for quality; this one is the fallback and the test double.

Method. ``prompt``: on the median-filtered image, each point grows a 4-connected region of
pixels similar to the seed - close in Lab, or, for a seed with a clear hue, a darker or
brighter shade of it - plus a 1-px rim at twice the tolerance (blurred edges). A region over
``max_area_fraction`` of the image (a seed on the background) is retried with tighter
tolerances, then replaced by a small disk; a tiny one (the point hit a dot or highlight) gets
the surface around it added. Regions are closed, hole-filled, optionally GrabCut-refined, and
a query's mask is the union over its points. ``forward``/``backward``: DIS optical flow from
the new frame to the previous one backward-warps each mask (``cv2.remap``, linear +
threshold); a mean-shift on the object's colour posterior then corrects the shift where flow
under-estimates it (plain objects), and a refinement keeps warped pixels unless their colour is
clearly background and adds clearly-object pixels within ``refine_radius`` (posterior from
Lab histograms of the object vs. the rest of the image, captured where the track started).
That trims drift and slivers and lets a mask regrow as an object emerges from occlusion.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import cv2
import numpy as np

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.segment.base import Masks, MaskTracker, Segmenter
from videomolmo_ros.segment.common import (FrameCache, as_points, check_backward_frames,
                                           check_image)

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# Lab histogram for the colour model: 8 bins in L (tolerates lightness changes), 16 in a and b.
_N_BINS = 8 * 16 * 16
_DISK5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_CROSS3 = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_GRABCUT_MAX_SIDE = 160  # px; larger GrabCut boxes are downscaled to this


@dataclass(frozen=True)
class ClassicalConfig:
    """Parameters of the classical backend (defaults tuned for 320x240..640x480 frames).

    color_tolerance: flood-fill tolerance per Lab channel (0-255 scale) around the seed colour.
    shade_tolerance: largest RGB distance (0-255 scale) from the line through black and a
        hued seed's colour for a pixel to count as a shade of it (0 = Lab only).
    min_saturation: how far (sine of the angle) a seed's colour must be from grey to have a
        hue; grey, white and black seeds use Lab only.
    shade_ratio: a shade is at most this many times darker or brighter than the seed.
    detail_area_fraction: a region smaller than this fraction of the image is taken for a
        detail (a dot of a pattern, a highlight) and the surface around it is added.
    blur_ksize: median-filter size (odd, or 0 for none) applied before every colour
        comparison, so noise and fine texture don't stop region growing; edges stay sharp.
    max_area_fraction: largest region a single point may produce, as a fraction of the image;
        caps a seed on the background.
    fallback_radius_fraction: radius of the disk used when even the tightest tolerance floods
        too much, as a fraction of min(height, width).
    grabcut_iters: GrabCut iterations refining each prompted region (0 = off). Sharper
        prompt masks, but 5-50 ms per point (boxes are downscaled to 160 px) and, on the
        project's synthetic scenes, no better masks once propagated.
    fill_holes: close each prompted region (5x5) and fill its holes (highlights, pattern
        dots); off for objects that really have holes (rings, frames).
    flow_preset: DIS optical flow preset, "ultrafast", "fast" or "medium".
    refine: run the colour refinement after each warp (off = pure flow warping).
    recenter: before refining, mean-shift the warped mask onto the colour posterior (fixes
        the flow's under-estimated motion of plain, untextured objects).
    recenter_gain: least rise of the mask's mean object posterior (0-1) for the shift to count.
    refine_radius: how far (pixels) per frame the refinement may grow a mask beyond its warp.
    keep_threshold: a warped pixel is dropped when its object posterior is below this.
    grow_threshold: a pixel next to the warped mask is added when its posterior is above this.
    min_area_px: a propagated mask smaller than this is treated as lost (empty).
    max_cache_frames: hard cap on frames whose grey image and colour bins are cached (about
        0.9 MB per 640x480 frame), on top of ``forget``; the oldest entries go first.
    """

    color_tolerance: float = 12.0
    shade_tolerance: float = 14.0
    min_saturation: float = 0.2
    shade_ratio: float = 4.0
    detail_area_fraction: float = 0.0005
    blur_ksize: int = 5
    max_area_fraction: float = 0.25
    fallback_radius_fraction: float = 0.03
    grabcut_iters: int = 0
    fill_holes: bool = True
    flow_preset: str = "fast"
    refine: bool = True
    recenter: bool = True
    recenter_gain: float = 0.05
    refine_radius: int = 4
    keep_threshold: float = 0.25
    grow_threshold: float = 0.6
    min_area_px: int = 20
    max_cache_frames: int = 32

    def __post_init__(self) -> None:
        if self.flow_preset not in _DIS_PRESETS:
            raise ValueError(f"flow_preset must be one of {sorted(_DIS_PRESETS)}, "
                             f"got {self.flow_preset!r}")
        if self.blur_ksize < 0 or (self.blur_ksize and self.blur_ksize % 2 == 0):
            raise ValueError(f"blur_ksize must be 0 or odd and positive, got {self.blur_ksize}")
        if not 0.0 < self.max_area_fraction <= 1.0:
            raise ValueError(f"max_area_fraction must be in (0, 1], got {self.max_area_fraction}")
        if (self.color_tolerance <= 0 or self.refine_radius < 1 or self.max_cache_frames < 2
                or self.shade_ratio < 1.0):
            raise ValueError("color_tolerance > 0, refine_radius >= 1, shade_ratio >= 1 and "
                             "max_cache_frames >= 2 are required")


class ClassicalSegmenter(Segmenter):
    """Factory of classical (OpenCV, CPU) trackers; see the module docstring.

    ``ClassicalSegmenter(config=None, **overrides)``: ``overrides`` are ``ClassicalConfig``
    fields, e.g. ``ClassicalSegmenter(grabcut_iters=2, flow_preset="medium")``.
    """

    name = "classical"

    def __init__(self, config: ClassicalConfig | None = None, **overrides: object) -> None:
        self.config = replace(config or ClassicalConfig(), **overrides)

    def new_tracker(self) -> "ClassicalTracker":
        return ClassicalTracker(self.config)


@dataclass
class _Track:
    """One query's propagation state: its current mask and its colour model."""

    mask: np.ndarray
    posterior: np.ndarray | None  # P(object | colour bin), float32 lookup table


class ClassicalTracker(MaskTracker):
    """Per-camera tracker: region growing at prompts, DIS flow + colour refinement between.

    Resolution changes: if a frame's size differs from the previous frame's (camera
    reconfigured), ``forward`` drops the tracks' contents and returns empty masks (of the new
    size) for every tracked query until the next ``prompt``; ``backward`` likewise returns
    empty masks from the first frame whose size differs. Malformed images (not H x W x 3
    uint8) and mis-ordered ``backward`` frames raise ``ValueError``. Not thread-safe: one
    caller at a time.
    """

    def __init__(self, config: ClassicalConfig | None = None) -> None:
        self.config = config or ClassicalConfig()
        preset = _DIS_PRESETS[self.config.flow_preset]
        self._flow_fwd = cv2.DISOpticalFlow_create(preset)
        self._flow_bwd = cv2.DISOpticalFlow_create(preset)
        self._cache: FrameCache[dict[str, np.ndarray]] = FrameCache(config.max_cache_frames)
        self._tracks: dict[int, _Track] = {}
        self._prev: Frame | None = None
        self._prev_gray: np.ndarray | None = None
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ interface

    def prompt(self, frame: Frame, points: Mapping[int, np.ndarray]) -> Masks:
        """Masks from points (union of per-point regions); restarts the forward tracks."""
        check_image(frame)
        smooth = self._smooth(frame)
        colours = _PromptColours.of(smooth)
        bins = self._bins(frame, colours.lab) if self.config.refine else None
        masks: Masks = {}
        tracks: dict[int, _Track] = {}
        for qid, pts in points.items():
            mask = self._segment_points(colours, frame.image, as_points(pts))
            masks[qid] = mask
            tracks[qid] = _Track(mask.copy(), self._colour_model(bins, mask))
        self._tracks = tracks
        self._prev = frame
        self._prev_gray = self._gray(frame)
        return masks

    def forward(self, frame: Frame) -> Masks:
        """Propagate every tracked mask from the previous frame of this tracker to ``frame``."""
        check_image(frame)
        if self._prev is None:
            return {}
        shape = frame.image.shape[:2]
        if self._prev.image.shape[:2] != shape:
            # Camera resolution changed: the tracks cannot be carried over.
            for track in self._tracks.values():
                track.mask = np.zeros(shape, bool)
            self._prev, self._prev_gray = frame, self._gray(frame)
            return {qid: t.mask.copy() for qid, t in self._tracks.items()}
        gray = self._gray(frame)
        if any(t.mask.any() for t in self._tracks.values()):
            maps = self._maps(self._flow_fwd, gray, self._prev_gray)
            bins = self._bins(frame) if self.config.refine else None
            for track in self._tracks.values():
                track.mask = self._propagate(track.mask, maps, bins, track.posterior)
        self._prev, self._prev_gray = frame, gray
        return {qid: t.mask.copy() for qid, t in self._tracks.items()}

    def backward(self, keyframe: Frame, key_masks: Mapping[int, np.ndarray],
                 frames: Sequence[Frame]) -> list[Masks]:
        """Propagate ``key_masks`` newest-first over ``frames``; forward state is untouched."""
        check_backward_frames(keyframe, frames)
        key_bins = self._bins(keyframe) if self.config.refine else None
        tracks: dict[int, _Track] = {}
        for qid, m in key_masks.items():
            m = np.asarray(m, bool)
            if m.shape != keyframe.image.shape[:2]:
                raise ValueError(f"key mask {qid} has shape {m.shape}, keyframe is "
                                 f"{keyframe.image.shape[:2]}")
            tracks[qid] = _Track(m.copy(), self._colour_model(key_bins, m))
        out: list[Masks] = []
        prev, prev_gray = keyframe, self._gray(keyframe)
        for f in reversed(frames):
            shape = f.image.shape[:2]
            gray = self._gray(f)
            if prev.image.shape[:2] != shape:
                for track in tracks.values():
                    track.mask = np.zeros(shape, bool)
            elif any(t.mask.any() for t in tracks.values()):
                maps = self._maps(self._flow_bwd, gray, prev_gray)
                bins = self._bins(f) if self.config.refine else None
                for track in tracks.values():
                    track.mask = self._propagate(track.mask, maps, bins, track.posterior)
            out.append({qid: t.mask.copy() for qid, t in tracks.items()})
            prev, prev_gray = f, gray
        out.reverse()
        return out

    def forget(self, before_index: int) -> None:
        """Drop the cached grey images and colour bins of frames with index < ``before_index``."""
        self._cache.forget(before_index)

    @property
    def cached_indices(self) -> list[int]:
        """Frame indices with cached per-frame data (for monitoring and tests)."""
        return self._cache.indices

    # ------------------------------------------------------------------ per-frame cache

    def _entry(self, frame: Frame) -> dict[str, np.ndarray]:
        return self._cache.get(
            frame, lambda f: {"gray": cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)},
            valid=lambda entry: entry["gray"].shape == frame.image.shape[:2])

    def _gray(self, frame: Frame) -> np.ndarray:
        return self._entry(frame)["gray"]

    def _smooth(self, frame: Frame) -> np.ndarray:
        """The RGB image median-filtered: noise and fine texture go, edges stay sharp."""
        k = self.config.blur_ksize
        return cv2.medianBlur(frame.image, k) if k > 1 else frame.image

    def _bins(self, frame: Frame, lab: np.ndarray | None = None) -> np.ndarray:
        """Colour-histogram bin of every pixel (quantised smoothed Lab), uint16, cached."""
        entry = self._entry(frame)
        bins = entry.get("bins")
        if bins is None:
            if lab is None:
                lab = cv2.cvtColor(self._smooth(frame), cv2.COLOR_RGB2Lab)
            bins = ((lab[..., 0] >> 5).astype(np.uint16) << 8) \
                | ((lab[..., 1] >> 4).astype(np.uint16) << 4) | (lab[..., 2] >> 4)
            entry["bins"] = bins
        return bins

    # ------------------------------------------------------------------ prompt

    def _segment_points(self, colours: "_PromptColours", rgb: np.ndarray,
                        pts: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        union = np.zeros((h, w), bool)
        for x, y in pts:
            xi, yi = int(round(float(x))), int(round(float(y)))
            if not (0 <= xi < w and 0 <= yi < h) or union[yi, xi]:
                continue  # outside the image, or already covered by an earlier point
            region = self._grow(colours, xi, yi)
            if region is None:
                region = self._disk(h, w, xi, yi)
            elif region.sum() < self.config.detail_area_fraction * h * w:
                region = self._with_surround(colours, region)
            if self.config.grabcut_iters > 0:
                region = self._grabcut(rgb, region, xi, yi)
            if self.config.fill_holes:
                region = _close_and_fill(region)
            union |= region
        return union

    def _grow(self, colours: "_PromptColours", x: int, y: int) -> np.ndarray | None:
        """Region of pixels similar to the seed and connected to it; None if always too big.

        Similar: within ``color_tolerance`` of the seed in Lab, or - for a seed with a clear
        hue - a shade of the seed's colour: RGB close to the line through black and the seed,
        within ``shade_ratio`` of its brightness either way. Shades cover shading, shadows and
        dark/light texture of one hue (stripes). Tolerances halve while the region exceeds
        ``max_area_fraction``.
        """
        cfg = self.config
        h, w = colours.lab.shape[:2]
        cap = cfg.max_area_fraction * h * w
        lab = colours.lab16
        seed_lab = lab[y, x]
        shade = None
        seed = colours.rgb[y, x]
        norm = float(np.linalg.norm(seed))
        if cfg.shade_tolerance > 0 and norm > 0:
            unit = seed / norm
            grey = np.full(3, 1.0 / np.sqrt(3.0), np.float32)
            if np.linalg.norm(unit - float(unit @ grey) * grey) >= cfg.min_saturation:
                along = colours.rgb @ unit  # brightness along the seed's colour line
                off2 = colours.sq_norm - along * along  # squared distance from the line
                on_line = (along >= norm / cfg.shade_ratio) & (along <= norm * cfg.shade_ratio)
                shade = (off2, on_line)

        def similar(scale: float) -> np.ndarray:
            near = (np.abs(lab - seed_lab) <= cfg.color_tolerance * scale).all(axis=2)
            if shade is not None:
                near |= shade[1] & (shade[0] <= (cfg.shade_tolerance * scale) ** 2)
            return near

        flags = 4 | cv2.FLOODFILL_MASK_ONLY | (255 << 8)
        for scale in (1.0, 0.5, 0.25):
            ff = np.zeros((h + 2, w + 2), np.uint8)
            area, *_ = cv2.floodFill(similar(scale).astype(np.uint8), ff, (x, y), 0, 0, 0, flags)
            if area <= cap:
                region = ff[1:-1, 1:-1] > 0
                # Hysteresis: the 1-px rim of mixed (blurred) edge pixels joins at twice
                # the tolerance.
                rim = (cv2.dilate(region.astype(np.uint8), _CROSS3) > 0) & ~region
                return region | (rim & similar(2.0 * scale))
        return None

    def _with_surround(self, colours: "_PromptColours", region: np.ndarray) -> np.ndarray:
        """A tiny region is a detail (a dot, a highlight): add the surface around it.

        Re-seeds at the ring pixel closest to the ring's median Lab colour.
        """
        u8 = region.astype(np.uint8)
        ring = (cv2.dilate(u8, np.ones((5, 5), np.uint8)) > 0) & ~region
        ys, xs = np.nonzero(ring)
        if len(ys) == 0:
            return region
        ring_lab = colours.lab[ys, xs].astype(np.int16)
        i = int(np.abs(ring_lab - np.median(ring_lab, axis=0)).sum(axis=1).argmin())
        surround = self._grow(colours, int(xs[i]), int(ys[i]))
        return region if surround is None else region | surround

    def _disk(self, h: int, w: int, x: int, y: int) -> np.ndarray:
        """Fallback region when every tolerance floods too much."""
        radius = max(2, int(round(self.config.fallback_radius_fraction * min(h, w))))
        disk = np.zeros((h, w), np.uint8)
        cv2.circle(disk, (x, y), radius, 1, -1)
        return disk > 0

    def _grabcut(self, rgb: np.ndarray, region: np.ndarray, x: int, y: int) -> np.ndarray:
        """GrabCut in a box around ``region``; keeps the component under the seed.

        Boxes larger than ``_GRABCUT_MAX_SIDE`` run downscaled, so the cost stays bounded.
        """
        h, w = region.shape
        ys, xs = np.nonzero(region)
        bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        mx, my = max(10, bw // 2), max(10, bh // 2)
        x0, x1 = max(0, xs.min() - mx), min(w, xs.max() + 1 + mx)
        y0, y1 = max(0, ys.min() - my), min(h, ys.max() + 1 + my)
        roi = region[y0:y1, x0:x1].astype(np.uint8)
        image = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        scale = min(1.0, _GRABCUT_MAX_SIDE / max(roi.shape))
        if scale < 1.0:
            size = (max(2, round(roi.shape[1] * scale)), max(2, round(roi.shape[0] * scale)))
            roi = cv2.resize(roi, size, interpolation=cv2.INTER_NEAREST)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        sx = min(roi.shape[1] - 1, int((x - x0) * scale))
        sy = min(roi.shape[0] - 1, int((y - y0) * scale))
        gc = np.where(roi > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        core = cv2.erode(roi, np.ones((5, 5), np.uint8))
        gc[core > 0] = cv2.GC_FGD
        gc[sy, sx] = cv2.GC_FGD
        # The box border is certain background so GrabCut has a background model to fit.
        gc[[0, -1], :] = cv2.GC_BGD
        gc[:, [0, -1]] = cv2.GC_BGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(image, gc, None, bgd, fgd, self.config.grabcut_iters,
                        cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return region  # degenerate box (e.g. a single colour): keep the region
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
        _, labels = cv2.connectedComponents(fg, connectivity=4)
        keep = (labels == labels[sy, sx]).astype(np.uint8)
        if not fg[sy, sx] or keep.sum() > self.config.max_area_fraction * h * w * scale ** 2:
            return region
        if scale < 1.0:
            keep = cv2.resize(keep, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        out = np.zeros((h, w), bool)
        out[y0:y1, x0:x1] = keep > 0
        return out

    # ------------------------------------------------------------------ propagation

    def _colour_model(self, bins: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """P(object | colour bin) from the mask vs. the rest of the image, float32 LUT."""
        if not self.config.refine or not mask.any():
            return None
        obj = np.bincount(bins[mask], minlength=_N_BINS).astype(np.float64)
        rest = np.bincount(bins[~mask], minlength=_N_BINS).astype(np.float64)
        obj /= max(obj.sum(), 1.0)
        rest /= max(rest.sum(), 1.0)
        prior = 1e-4  # colours seen in neither histogram get P = 0.5: keep, don't grow
        return ((obj + prior) / (obj + rest + 2 * prior)).astype(np.float32)

    def _maps(self, dis: cv2.DISOpticalFlow, gray: np.ndarray,
              prev_gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Remap coordinates into the previous frame for every pixel of the current one."""
        flow = dis.calc(gray, prev_gray, None)  # gray(p) ~ prev_gray(p + flow(p))
        h, w = gray.shape
        if self._grid is None or self._grid[0].shape != (h, w):
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid = (gx, gy)
        return self._grid[0] + flow[..., 0], self._grid[1] + flow[..., 1]

    def _propagate(self, mask: np.ndarray, maps: tuple[np.ndarray, np.ndarray],
                   bins: np.ndarray | None, posterior: np.ndarray | None) -> np.ndarray:
        """Backward-warp one mask with the flow maps, then refine it by colour."""
        if not mask.any():
            return mask
        src = mask.astype(np.uint8) * 255
        warped = cv2.remap(src, maps[0], maps[1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0) >= 128
        if bins is not None and posterior is not None and warped.any():
            if self.config.recenter:
                warped = self._recenter(warped, bins, posterior)
            warped = self._refine(warped, bins, posterior)
        if int(warped.sum()) < self.config.min_area_px:
            return np.zeros_like(mask)
        return warped

    def _recenter(self, warped: np.ndarray, bins: np.ndarray,
                  posterior: np.ndarray) -> np.ndarray:
        """Shift the warped mask by a mean-shift of its box on the colour posterior.

        Dense flow under-estimates the motion of plain, untextured objects; the posterior
        mode pulls the mask back onto the object's colour. The shift is kept only when it
        raises the mask's mean posterior by ``recenter_gain`` (flow is better on texture).
        """
        h, w = warped.shape
        ys, xs = np.nonzero(warped)
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        m = max(bx1 - bx0, by1 - by0) // 2 + self.config.refine_radius
        x0, y0, x1, y1 = max(0, bx0 - m), max(0, by0 - m), min(w, bx1 + m), min(h, by1 + m)
        prob = (posterior[bins[y0:y1, x0:x1]] * 255.0).astype(np.uint8)
        window = (int(bx0 - x0), int(by0 - y0), int(bx1 - bx0), int(by1 - by0))
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.5)
        _, (nx, ny, _, _) = cv2.meanShift(prob, window, criteria)
        dx, dy = int(nx - window[0]), int(ny - window[1])
        if dx == 0 and dy == 0:
            return warped
        roi = warped[y0:y1, x0:x1]
        moved = np.zeros_like(roi)
        rh, rw = roi.shape
        moved[max(0, dy):rh + min(0, dy), max(0, dx):rw + min(0, dx)] = \
            roi[max(0, -dy):rh - max(0, dy), max(0, -dx):rw - max(0, dx)]
        if not moved.any() or (float(prob[moved].mean()) - float(prob[roi].mean())
                               < 255.0 * self.config.recenter_gain):
            return warped
        out = np.zeros_like(warped)
        out[y0:y1, x0:x1] = moved
        return out

    def _refine(self, warped: np.ndarray, bins: np.ndarray, posterior: np.ndarray) -> np.ndarray:
        """Keep warped pixels unless clearly background; add nearby clearly-object pixels."""
        cfg = self.config
        h, w = warped.shape
        r = cfg.refine_radius
        ys, xs = np.nonzero(warped)
        x0, x1 = max(0, xs.min() - r), min(w, xs.max() + 1 + r)
        y0, y1 = max(0, ys.min() - r), min(h, ys.max() + 1 + r)
        wm = warped[y0:y1, x0:x1].astype(np.uint8)
        near = cv2.dilate(wm, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
        post = posterior[bins[y0:y1, x0:x1]]
        keep = (wm > 0) & (post >= cfg.keep_threshold)
        grow = (near > 0) & (post >= cfg.grow_threshold)
        fg = (keep | grow).astype(np.uint8)
        # Keep only components touching the warped mask (no same-coloured islands).
        n, labels = cv2.connectedComponents(fg, connectivity=8)
        if n > 2:
            touching = np.unique(labels[(wm > 0) & (fg > 0)])
            fg = np.isin(labels, touching[touching > 0]).astype(np.uint8)
        out = np.zeros((h, w), bool)
        out[y0:y1, x0:x1] = fg > 0
        return out


@dataclass(frozen=True)
class _PromptColours:
    """The colour spaces region growing compares in, from the median-filtered image."""

    lab: np.ndarray  # H x W x 3 uint8
    lab16: np.ndarray  # the same as int16, for signed differences
    rgb: np.ndarray  # H x W x 3 float32
    sq_norm: np.ndarray  # H x W float32: |rgb|^2

    @staticmethod
    def of(smooth_rgb: np.ndarray) -> "_PromptColours":
        lab = cv2.cvtColor(smooth_rgb, cv2.COLOR_RGB2Lab)
        rgb = smooth_rgb.astype(np.float32)
        return _PromptColours(lab=lab, lab16=lab.astype(np.int16), rgb=rgb,
                              sq_norm=(rgb * rgb).sum(axis=2))


def _close_and_fill(region: np.ndarray) -> np.ndarray:
    """The region closed (5x5 disk: notches from pattern dots at its edge) and hole-filled."""
    u8 = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_CLOSE, _DISK5)
    contours, _ = cv2.findContours(u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(u8, contours, -1, 1, thickness=-1)
    return u8 > 0
