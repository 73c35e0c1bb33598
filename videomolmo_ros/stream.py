"""The streaming engine: camera frames in, events out. ROS-free (no rclpy, no torch).

Per camera, frames are numbered 0, 1, 2, ... in push order. Every k-th frame is a keyframe:
the pointer answers all of that camera's queries on it in one call (VideoMolmo reads the
features of the l frames before the keyframe, so only those and the keyframe are ever encoded,
each once). Standing (tracked) queries are turned into masks by the segmenter:

* causal masks: the keyframe's prompt masks, then forward propagation, emitted at once;
* fused masks: when the next keyframe K' is pointed, its masks are propagated backward over the
  frames since the previous keyframe K and fused with the forward ones (``fuse_masks``). The
  fused masks of K..K'-1 are emitted when K' is pushed, so the fused mask of frame t is
  ``K' - t`` frames late (the keyframe's own is exactly k frames late). The fused mask of a
  keyframe is its prompt mask.

``flush`` ends a stream: the open window has no right keyframe, so its fused masks fall back
to the forward ones. Every frame of a tracked query thus gets exactly one causal and one fused
mask, from the keyframe the query was first pointed at on.

Memory stays flat: per camera at most k buffered frames, l cached features, and per stage a
bounded reservoir of timings; nothing grows with the number of frames.
"""
from __future__ import annotations

import operator
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar, Union

import numpy as np

from videomolmo_ros.core.frame import Frame
from videomolmo_ros.core.fusion import fuse_masks
from videomolmo_ros.core.labels import MAX_LABEL, LabelAllocator
from videomolmo_ros.core.points import Point, points_to_array
from videomolmo_ros.core.schedule import KeyframeSchedule
from videomolmo_ros.core.stats import RunningStats
from videomolmo_ros.pointers.base import Pointer
from videomolmo_ros.segment.base import MaskTracker, Segmenter

STAGES = ("encode", "point", "prompt", "forward", "backward", "fuse")

_T = TypeVar("_T")


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class EngineConfig:
    """Keyframe spacing k, history length l, fusion threshold tau, and registry limits.

    max_queries counts one-shot and standing queries together; it is at most 255 because each
    standing query needs its own label in the mono8 label map.
    """

    k: int = 10
    l: int = 4  # noqa: E741 (the paper's name)
    tau: float = 0.7
    max_queries: int = 32
    max_query_chars: int = 512

    def __post_init__(self) -> None:
        for name in ("k", "l", "max_queries", "max_query_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"EngineConfig.{name} must be an integer, got {value!r}")
        if self.k < 1:
            raise ValueError(f"EngineConfig.k (keyframe spacing) must be >= 1, got {self.k}")
        if self.l < 0:
            raise ValueError(f"EngineConfig.l (history length) must be >= 0, got {self.l}")
        if not isinstance(self.tau, (int, float, np.floating)) or not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"EngineConfig.tau must be a number in [0, 1], got {self.tau!r}")
        if not 1 <= self.max_queries <= MAX_LABEL:
            raise ValueError(f"EngineConfig.max_queries must be in 1..{MAX_LABEL}, "
                             f"got {self.max_queries}")
        if self.max_query_chars < 1:
            raise ValueError(f"EngineConfig.max_query_chars must be >= 1, "
                             f"got {self.max_query_chars}")


# ----------------------------------------------------------------------------- queries, events

@dataclass(frozen=True)
class Query:
    """A registered text query.

    id: unique, increasing from 1 over the engine's life. camera: the camera name given to
    ``push``. track: True = standing (pointed at every keyframe, masks every frame), False =
    one-shot (pointed at one keyframe, then removed). label: its value in the mono8 label
    map, 1..255 for standing queries, 0 for one-shot queries (they have no masks).
    """

    id: int
    text: str
    camera: str
    track: bool
    label: int


@dataclass(frozen=True)
class KeyframePoints:
    """The points one query got on one keyframe (pixel coordinates of that image)."""

    camera: str
    frame_index: int
    stamp_ns: int
    width: int
    height: int
    query_id: int
    query_text: str
    label: int
    points: tuple[Point, ...]


@dataclass(frozen=True)
class MaskEvent:
    """All tracked queries' masks of one frame (query id -> H x W bool), and their labels.

    kind "causal": available when the frame is pushed; "fused": bidirectionally fused,
    emitted when the next keyframe is pushed (or on flush).
    """

    camera: str
    kind: Literal["causal", "fused"]
    frame_index: int
    stamp_ns: int
    masks: dict[int, np.ndarray]
    labels: dict[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of this event's frame. Use it, not the latest image's size: fused events
        flushed on a resolution change belong to frames of the old size. The engine never
        emits an event without masks."""
        return tuple(next(iter(self.masks.values())).shape[:2])


@dataclass(frozen=True)
class EngineWarning:
    """Something went wrong on a frame and the engine recovered (the text says how)."""

    camera: str
    frame_index: int
    stamp_ns: int
    message: str


Event = Union[KeyframePoints, MaskEvent, EngineWarning]


# ----------------------------------------------------------------------------- statistics

@dataclass
class CameraStats:
    """Counters of one camera (a snapshot when read through ``StreamingEngine.stats``).

    buffered_frames / buffered_features: frames held for fusion (<= k) and cached features
    (<= l) right now; they show that memory stays bounded.
    """

    frames: int = 0
    keyframes: int = 0
    encodes: int = 0
    point_calls: int = 0
    warnings: int = 0
    resets: int = 0
    buffered_frames: int = 0
    buffered_features: int = 0


# ----------------------------------------------------------------------------- engine internals

class _StageError(Exception):
    """A pointer or tracker call raised; carries the stage name and the cause."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage} failed: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


@dataclass
class _Buffered:
    """A frame held until its fused mask is emitted, with its causal (forward) masks."""

    frame: Frame
    masks: dict[int, np.ndarray]


@dataclass
class _CameraState:
    """Everything the engine keeps for one camera (bounded: <= k frames, <= l features)."""

    features: deque[tuple[int, Any]]  # (frame index, features), maxlen l
    tracker: MaskTracker | None = None
    next_index: int = 0
    origin: int = 0  # index of the stream's first frame: keyframes are origin + n*k
    shape: tuple[int, int] | None = None
    keyframe: _Buffered | None = None  # left keyframe of the open window (its prompt masks)
    window: list[_Buffered] = field(default_factory=list)  # frames after it, oldest first
    window_queries: frozenset[int] = frozenset()  # queries prompted at that keyframe
    stats: CameraStats = field(default_factory=CameraStats)


def _check_image(image: Any) -> None:
    """ValueError unless ``image`` is a non-empty H x W x 3 uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")


def _check_camera(camera: Any) -> str:
    if not isinstance(camera, str) or not camera:
        raise ValueError(f"camera must be a non-empty string, got {camera!r}")
    return camera


# ----------------------------------------------------------------------------- the engine

class StreamingEngine:
    """Frames in, events out, for any number of cameras; see the module docstring.

    Threads: ``push`` and ``flush`` belong to one worker thread (they are serialised by a
    lock anyway); ``add_query``, ``cancel_query``, ``queries``, ``stats`` and ``timings`` may
    be called from any thread. The engine keeps a reference to each pushed image for up to k
    frames (for backward propagation): do not modify an image after pushing it.

    Keyframe phase: frame index i of a camera is a keyframe when (i - origin) % k == 0, where
    origin is 0 and moves to the frame at which a resolution change restarted the stream.
    Indices keep increasing across such a restart, so (camera, index) stays unambiguous.

    Errors raised by the pointer or the tracker do not escape ``push``: the engine emits an
    ``EngineWarning``, flushes the open window forward-only (frames that got a causal mask
    still get their fused mask), drops the camera's tracker and feature cache, and waits for
    the next scheduled keyframe. Queries survive (a one-shot query that was not answered yet
    is answered at the next keyframe). A failed encode of a history frame (not a keyframe)
    only warns: that keyframe's history is one frame shorter.
    """

    def __init__(self, pointer: Pointer, segmenter: Segmenter,
                 config: EngineConfig | None = None) -> None:
        self.pointer = pointer
        self.segmenter = segmenter
        self.config = config if config is not None else EngineConfig()
        # The spacing of the history frames belongs to the pointer's weights (a model trained
        # on every 4th frame must be fed every 4th frame), not to the engine's settings.
        stride = getattr(pointer, "history_stride", 1)
        self.schedule = KeyframeSchedule(self.config.k, self.config.l, stride)
        self._registry_lock = threading.Lock()
        self._queries: dict[int, Query] = {}
        self._labels = LabelAllocator(MAX_LABEL)
        self._next_query_id = 1
        self._stream_lock = threading.RLock()
        self._cameras: dict[str, _CameraState] = {}
        self._timings = {stage: RunningStats() for stage in STAGES}

    # ------------------------------------------------------------------ queries

    def add_query(self, text: str, camera: str, track: bool = True) -> Query:
        """Register a query on ``camera``; it is pointed at that camera's next keyframe.

        The text is stripped of surrounding whitespace. ValueError for empty or over-long
        text, a bad camera name, or when max_queries are live.
        """
        if not isinstance(text, str):
            raise ValueError(f"query text must be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise ValueError("query text is empty")
        if len(text) > self.config.max_query_chars:
            raise ValueError(f"query text has {len(text)} characters; the limit is "
                             f"{self.config.max_query_chars}")
        camera = _check_camera(camera)
        with self._registry_lock:
            if len(self._queries) >= self.config.max_queries:
                raise ValueError(f"too many queries: {len(self._queries)} are live, the limit "
                                 f"is {self.config.max_queries}; cancel one first")
            label = self._labels.acquire() if track else 0
            query = Query(id=self._next_query_id, text=text, camera=camera, track=bool(track),
                          label=label)
            self._next_query_id += 1
            self._queries[query.id] = query
        return query

    def cancel_query(self, query_id: int) -> bool:
        """Remove a query at once from all future outputs (pending fused masks included).

        False if no such query is live (unknown, cancelled, or a one-shot already answered).
        """
        with self._registry_lock:
            query = self._queries.pop(query_id, None)
            if query is None:
                return False
            if query.label:
                self._labels.release(query.label)
        return True

    def queries(self, camera: str | None = None) -> tuple[Query, ...]:
        """The live queries (of one camera, or all), oldest first."""
        with self._registry_lock:
            return tuple(q for q in self._queries.values()
                         if camera is None or q.camera == camera)

    def _live_ids(self, camera: str) -> frozenset[int]:
        with self._registry_lock:
            return frozenset(q.id for q in self._queries.values() if q.camera == camera)

    def _labels_of(self, ids: Sequence[int]) -> dict[int, int]:
        with self._registry_lock:
            return {i: self._queries[i].label for i in ids if i in self._queries}

    def _retire(self, query_ids: Sequence[int]) -> None:
        """Remove answered one-shot queries (they hold no label)."""
        with self._registry_lock:
            for query_id in query_ids:
                self._queries.pop(query_id, None)

    # ------------------------------------------------------------------ observability

    @property
    def timings(self) -> dict[str, RunningStats]:
        """Per-stage durations: encode, point, prompt, forward, backward, fuse."""
        return self._timings

    @property
    def stats(self) -> dict[str, CameraStats]:
        """A snapshot of every camera's counters and buffer sizes (lock-free: never waits
        for a running ``push``; the numbers may be one frame apart)."""
        return {camera: replace(state.stats,
                                buffered_frames=len(state.window) + (state.keyframe is not None),
                                buffered_features=len(state.features))
                for camera, state in list(self._cameras.items())}

    def _stage(self, stage: str, call: Callable[..., _T], *args: Any) -> _T:
        """Run a pointer/tracker call, timing it; its exceptions become _StageError."""
        start = time.perf_counter()
        try:
            result = call(*args)
        except Exception as error:  # noqa: BLE001 (a backend failure must not kill the stream)
            raise _StageError(stage, error) from error
        if stage in self._timings:
            self._timings[stage].add(time.perf_counter() - start)
        return result

    # ------------------------------------------------------------------ streaming

    def push(self, camera: str, image: np.ndarray, stamp_ns: int) -> list[Event]:
        """Process one frame of ``camera``; returns the events it completes, in order.

        ``image``: H x W x 3 uint8 RGB. ValueError (before any state changes) for a bad
        image, camera name or stamp. Fused events come out in increasing frame order.
        """
        _check_camera(camera)
        _check_image(image)
        try:
            stamp = operator.index(stamp_ns)
        except TypeError as error:
            raise ValueError(f"stamp_ns must be an integer, got {stamp_ns!r}") from error
        with self._stream_lock:
            state = self._cameras.get(camera)
            if state is None:
                state = _CameraState(features=deque(maxlen=self.schedule.reach))
                self._cameras[camera] = state
            frame = Frame(camera=camera, index=state.next_index, stamp_ns=stamp, image=image)
            state.next_index += 1
            state.stats.frames += 1
            events: list[Event] = []
            shape = (frame.height, frame.width)
            if state.shape is not None and state.shape != shape:
                self._finish_window(state, camera, events)
                self._warn(state, frame, events,
                           f"resolution changed from {state.shape[1]}x{state.shape[0]} to "
                           f"{shape[1]}x{shape[0]}; tracking restarts with this frame as a "
                           "keyframe")
                self._reset(state, origin=frame.index)
            state.shape = shape
            try:
                if self.schedule.is_keyframe(frame.index - state.origin):
                    self._on_keyframe(state, frame, events)
                else:
                    self._on_frame(state, frame, events)
            except _StageError as error:
                self._finish_window(state, camera, events)
                self._warn(state, frame, events,
                           f"{error}; masks resume at the next keyframe")
                self._reset(state, origin=state.origin)
            return self._drop_cancelled(camera, events)

    def flush(self, camera: str | None = None) -> list[Event]:
        """End of stream: fused masks of the open window (forward-only) of one or all cameras.

        Afterwards the window is empty. Pushing more frames afterwards continues the stream:
        the frames up to the next keyframe are fused with its backward masks as usual.
        """
        with self._stream_lock:
            names = list(self._cameras) if camera is None else [camera]
            events: list[Event] = []
            for name in names:
                state = self._cameras.get(name)
                if state is not None:
                    self._finish_window(state, name, events)
            return self._drop_cancelled(camera, events)

    # ------------------------------------------------------------------ per-frame work

    def _on_keyframe(self, state: _CameraState, frame: Frame, events: list[Event]) -> None:
        """Point all queries of the camera, prompt the tracked ones, close the last window."""
        state.stats.keyframes += 1
        with self._registry_lock:
            queries = [q for q in self._queries.values() if q.camera == frame.camera]
        key_masks: dict[int, np.ndarray] = {}
        tracked = [q for q in queries if q.track]
        if queries:
            features = self._stage("encode", self.pointer.encode, frame)
            state.stats.encodes += 1
            wanted = {state.origin + i
                      for i in self.schedule.history_indices(frame.index - state.origin)}
            history = [feat for index, feat in reversed(state.features) if index in wanted]
            state.features.append((frame.index, features))
            state.stats.point_calls += 1
            answers = self._stage("point", self.pointer.point, frame, features, history,
                                  [q.text for q in queries])
            if len(answers) != len(queries):
                raise _StageError("point", ValueError(
                    f"pointer returned {len(answers)} answers for {len(queries)} queries"))
            for query, points in zip(queries, answers):
                events.append(KeyframePoints(
                    camera=frame.camera, frame_index=frame.index, stamp_ns=frame.stamp_ns,
                    width=frame.width, height=frame.height, query_id=query.id,
                    query_text=query.text, label=query.label, points=tuple(points)))
            self._retire([q.id for q in queries if not q.track])
            if tracked:
                if state.tracker is None:
                    state.tracker = self._stage("new_tracker", self.segmenter.new_tracker)
                prompts = {q.id: points_to_array(points)
                           for q, points in zip(queries, answers) if q.track}
                raw = self._stage("prompt", state.tracker.prompt, frame, prompts)
                key_masks = self._complete("prompt", raw, list(prompts), frame)
        # Close the previous window with this keyframe's backward pass (may raise: the window
        # is still intact then, and the caller flushes it forward-only).
        self._finish_window(state, frame.camera, events, right=frame, right_masks=key_masks)
        state.window_queries = frozenset(q.id for q in tracked)
        if tracked:
            state.keyframe = _Buffered(frame, key_masks)
            self._emit(frame, "causal", key_masks, events)
        if state.tracker is not None:
            self._stage("forget", state.tracker.forget, frame.index)

    def _on_frame(self, state: _CameraState, frame: Frame, events: list[Event]) -> None:
        """Cache features if the next keyframe will read them; forward-propagate the masks."""
        needed = self.schedule.needs_features(frame.index - state.origin)
        if needed and self._live_ids(frame.camera):
            try:
                features = self._stage("encode", self.pointer.encode, frame)
            except _StageError as error:
                self._warn(state, frame, events,
                           f"{error}; the next keyframe's history lacks this frame")
            else:
                state.stats.encodes += 1
                state.features.append((frame.index, features))
        live = self._live_ids(frame.camera)
        tracked = sorted(q for q in state.window_queries if q in live)
        if not tracked or state.tracker is None:
            return
        raw = self._stage("forward", state.tracker.forward, frame)
        masks = self._complete("forward", raw, tracked, frame)
        state.window.append(_Buffered(frame, masks))
        self._emit(frame, "causal", masks, events)

    def _finish_window(self, state: _CameraState, camera: str, events: list[Event],
                       right: Frame | None = None,
                       right_masks: Mapping[int, np.ndarray] | None = None) -> None:
        """Emit the fused masks of the open window and empty it.

        With ``right`` (the next keyframe, already prompted) the window frames get backward
        masks from ``right_masks``; without, fusion falls back to the forward masks. All
        tracker calls happen before anything is emitted or cleared, so a failure leaves the
        window intact for a forward-only flush.
        """
        if state.keyframe is None and not state.window:
            return
        live = self._live_ids(camera)
        ids = sorted(q for q in state.window_queries if q in live)
        backward: list[Mapping[int, np.ndarray]] | None = None
        if right is not None and right_masks and state.window and state.tracker is not None:
            seeds = {q: right_masks[q] for q in ids if q in right_masks}
            if seeds:
                frames = [buffered.frame for buffered in state.window]
                backward = self._stage("backward", state.tracker.backward, right, seeds, frames)
                if len(backward) != len(frames):
                    raise _StageError("backward", ValueError(
                        f"tracker returned {len(backward)} backward masks for "
                        f"{len(frames)} frames"))
        live = self._live_ids(camera)  # a query may have been cancelled meanwhile
        ids = [q for q in ids if q in live]
        fused_window: list[dict[int, np.ndarray]] = []
        start = time.perf_counter()
        for position, buffered in enumerate(state.window):
            fused: dict[int, np.ndarray] = {}
            for query_id in ids:
                forward = buffered.masks.get(query_id)
                if forward is None:
                    continue
                back = backward[position].get(query_id) if backward is not None else None
                if back is None:
                    back = np.zeros_like(forward)
                fused[query_id] = fuse_masks(forward, np.asarray(back, dtype=bool),
                                             self.config.tau)
            fused_window.append(fused)
        if state.window:
            self._timings["fuse"].add(time.perf_counter() - start)
        if state.keyframe is not None:
            key = state.keyframe
            self._emit(key.frame, "fused",
                       {q: key.masks[q] for q in ids if q in key.masks}, events)
        for buffered, fused in zip(state.window, fused_window):
            self._emit(buffered.frame, "fused", fused, events)
        state.keyframe = None
        state.window = []

    # ------------------------------------------------------------------ helpers

    def _complete(self, stage: str, masks: Mapping[int, np.ndarray], ids: Sequence[int],
                  frame: Frame) -> dict[int, np.ndarray]:
        """The tracker's masks for ``ids`` as H x W bool (missing = empty); bad shape raises."""
        shape = (frame.height, frame.width)
        out: dict[int, np.ndarray] = {}
        for query_id in ids:
            mask = masks.get(query_id) if masks is not None else None
            if mask is None:
                out[query_id] = np.zeros(shape, dtype=bool)
                continue
            mask = np.asarray(mask)
            if mask.shape != shape:
                raise _StageError(stage, ValueError(
                    f"mask of query {query_id} has shape {mask.shape}, expected {shape}"))
            out[query_id] = mask.astype(bool, copy=False)
        return out

    def _emit(self, frame: Frame, kind: Literal["causal", "fused"],
              masks: dict[int, np.ndarray], events: list[Event]) -> None:
        """Append one MaskEvent for the frame's live queries (none if there are none)."""
        labels = self._labels_of(list(masks))
        masks = {q: m for q, m in masks.items() if q in labels}
        if masks:
            events.append(MaskEvent(camera=frame.camera, kind=kind, frame_index=frame.index,
                                    stamp_ns=frame.stamp_ns, masks=masks, labels=labels))

    def _drop_cancelled(self, camera: str | None, events: list[Event]) -> list[Event]:
        """Last check before returning: strip masks of queries cancelled during this call."""
        with self._registry_lock:
            live = set(self._queries)
        out: list[Event] = []
        for event in events:
            if isinstance(event, MaskEvent) and not set(event.masks) <= live:
                masks = {q: m for q, m in event.masks.items() if q in live}
                if not masks:
                    continue
                event = replace(event, masks=masks,
                                labels={q: event.labels[q] for q in masks})
            out.append(event)
        return out

    def _warn(self, state: _CameraState, frame: Frame, events: list[Event], message: str) -> None:
        state.stats.warnings += 1
        events.append(EngineWarning(camera=frame.camera, frame_index=frame.index,
                                    stamp_ns=frame.stamp_ns, message=message))

    def _reset(self, state: _CameraState, origin: int) -> None:
        """Forget the camera's tracking state; the next keyframe (phase ``origin``) restarts it."""
        state.stats.resets += 1
        state.tracker = None
        state.features.clear()
        state.keyframe = None
        state.window = []
        state.window_queries = frozenset()
        state.origin = origin
