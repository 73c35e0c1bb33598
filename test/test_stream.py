"""StreamingEngine: keyframe pointing, causal and fused masks, queries, robustness, memory.

A fake pointer (fixed points per query text, records calls) and a fake segmenter (a square
around the first point; forward/backward shift it by a configurable number of pixels per
frame; records calls) stand in for VideoMolmo and SAM2.
"""
from __future__ import annotations

import gc
import threading
import tracemalloc
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from videomolmo_ros.core.fusion import fuse_masks
from videomolmo_ros.core.labels import (LabelAllocator, LabelsExhaustedError,
                                        compose_label_map)
from videomolmo_ros.core.points import Point
from videomolmo_ros.pointers.base import Pointer
from videomolmo_ros.segment.base import MaskTracker, Segmenter
from videomolmo_ros.stream import (EngineConfig, EngineWarning, KeyframePoints, MaskEvent,
                                   StreamingEngine)
from videomolmo_ros.core.stats import RunningStats

# ----------------------------------------------------------------------------- fakes


@dataclass
class PointCall:
    camera: str
    index: int
    features: Any
    history: tuple
    queries: tuple


class FakePointer(Pointer):
    """Points from a text -> [(x, y), ...] table (default: one point at (16, 16))."""

    name = "fake"

    def __init__(self, points: dict[str, list[tuple[float, float]]] | None = None,
                 maxlen: int | None = None) -> None:
        self.points = points or {}
        self.encoded: deque = deque(maxlen=maxlen)  # (camera, index)
        self.calls: deque = deque(maxlen=maxlen)  # PointCall
        self.fail_point_at: set[tuple[str, int]] = set()
        self.fail_encode_at: set[tuple[str, int]] = set()

    def encode(self, frame):
        self.encoded.append((frame.camera, frame.index))
        if (frame.camera, frame.index) in self.fail_encode_at:
            raise RuntimeError("encoder out of memory")
        return ("feat", frame.camera, frame.index)

    def point(self, frame, features, history, queries):
        self.calls.append(PointCall(frame.camera, frame.index, features, tuple(history),
                                    tuple(queries)))
        if (frame.camera, frame.index) in self.fail_point_at:
            raise RuntimeError("model exploded")
        return [[Point(x, y, text) for x, y in self.points.get(text, [(16, 16)])]
                for text in queries]


def square(shape: tuple[int, int], points: np.ndarray, half: int) -> np.ndarray:
    """A (2*half+1)-wide square around the first point; empty without points."""
    mask = np.zeros(shape, dtype=bool)
    if len(points):
        x, y = int(points[0][0]), int(points[0][1])
        mask[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1] = True
    return mask


class FakeTracker(MaskTracker):
    def __init__(self, owner: "FakeSegmenter") -> None:
        self.owner = owner
        self.base: dict[int, np.ndarray] = {}
        self.base_index = 0

    def _fail(self, what: str, frame) -> None:
        if (what, frame.camera, frame.index) in self.owner.fail_at:
            raise RuntimeError(f"tracker {what} failed")

    def prompt(self, frame, points):
        self.owner.prompts.append((frame.camera, frame.index,
                                   {q: np.array(p) for q, p in points.items()}))
        self._fail("prompt", frame)
        self.base = {q: square((frame.height, frame.width), p, self.owner.half)
                     for q, p in points.items()}
        self.base_index = frame.index
        return {q: m.copy() for q, m in self.base.items()}

    def forward(self, frame):
        self.owner.forwards.append((frame.camera, frame.index))
        self._fail("forward", frame)
        shift = self.owner.fwd_dx * (frame.index - self.base_index)
        return {q: np.roll(m, shift, axis=1) for q, m in self.base.items()}

    def backward(self, keyframe, key_masks, frames):
        self.owner.backwards.append((keyframe.camera, keyframe.index, tuple(sorted(key_masks)),
                                     tuple(f.index for f in frames)))
        self._fail("backward", keyframe)
        return [{q: np.roll(np.asarray(m), self.owner.bwd_dx * (f.index - keyframe.index),
                            axis=1)
                 for q, m in key_masks.items()} for f in frames]

    def forget(self, before_index):
        self.owner.forgets.append(before_index)


class FakeSegmenter(Segmenter):
    name = "fake"

    def __init__(self, half: int = 3, fwd_dx: int = 0, bwd_dx: int = 0,
                 maxlen: int | None = None) -> None:
        self.half = half
        self.fwd_dx = fwd_dx
        self.bwd_dx = bwd_dx
        self.trackers: list[FakeTracker] = []
        self.prompts: deque = deque(maxlen=maxlen)
        self.forwards: deque = deque(maxlen=maxlen)
        self.backwards: deque = deque(maxlen=maxlen)
        self.forgets: deque = deque(maxlen=maxlen)
        self.fail_at: set[tuple[str, str, int]] = set()  # (method, camera, frame index)

    def new_tracker(self):
        tracker = FakeTracker(self)
        self.trackers.append(tracker)
        return tracker


def image(size: int = 32) -> np.ndarray:
    return np.zeros((size, size, 3), dtype=np.uint8)


def make(k: int = 5, l: int = 2, points=None,  # noqa: E741
         **seg) -> tuple[StreamingEngine, FakePointer, FakeSegmenter]:
    pointer = FakePointer(points)
    segmenter = FakeSegmenter(**seg)
    return StreamingEngine(pointer, segmenter, EngineConfig(k=k, l=l)), pointer, segmenter


def run(engine: StreamingEngine, frames: range, camera: str = "cam", size: int = 32) -> list:
    """Push frames (stamp = 1000 * index + 7) and return all events."""
    events = []
    for i in frames:
        events += engine.push(camera, image(size), 1000 * i + 7)
    return events


def masks_of(events, kind: str, camera: str = "cam") -> list[MaskEvent]:
    return [e for e in events if isinstance(e, MaskEvent) and e.kind == kind
            and e.camera == camera]


def per_frame(events, kind: str, camera: str = "cam") -> Counter:
    """(frame index, query id) -> how many masks of this kind."""
    return Counter((e.frame_index, q) for e in masks_of(events, kind, camera) for q in e.masks)


# ----------------------------------------------------------------------------- config, queries


@pytest.mark.parametrize("kwargs", [dict(k=0), dict(l=-1), dict(tau=1.5), dict(tau=-0.1),
                                    dict(max_queries=0), dict(max_queries=256),
                                    dict(max_query_chars=0), dict(k=2.5)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        EngineConfig(**kwargs)


def test_add_query_validation_and_ids():
    pointer, segmenter = FakePointer(), FakeSegmenter()
    engine = StreamingEngine(pointer, segmenter,
                             EngineConfig(max_queries=2, max_query_chars=10))
    with pytest.raises(ValueError, match="empty"):
        engine.add_query("   \n", "cam")
    with pytest.raises(ValueError, match="11 characters; the limit is 10"):
        engine.add_query("x" * 11, "cam")
    with pytest.raises(ValueError, match="camera"):
        engine.add_query("mug", "")
    a = engine.add_query("  mug ", "cam")
    b = engine.add_query("cup", "cam", track=False)
    assert (a.id, a.text, a.track, b.id, b.track, b.label) == (1, "mug", True, 2, False, 0)
    assert 1 <= a.label <= 255
    with pytest.raises(ValueError, match="too many queries"):
        engine.add_query("plate", "cam")
    assert engine.queries() == (a, b)
    assert engine.cancel_query(a.id) is True
    assert engine.cancel_query(a.id) is False
    c = engine.add_query("plate", "cam")
    assert c.id == 3 and c.label != 0
    assert engine.queries("cam") == (b, c) and engine.queries("other") == ()


# ----------------------------------------------------------------------------- fused delay


def test_fused_masks_of_a_window_come_exactly_when_the_next_keyframe_is_pushed():
    engine, _, _ = make(k=5, l=2)
    engine.add_query("mug", "cam")
    fused_at: dict[int, list[int]] = {}
    for i in range(15):
        events = engine.push("cam", image(), 1000 * i)
        fused_at[i] = [e.frame_index for e in masks_of(events, "fused")]
    assert fused_at[5] == [0, 1, 2, 3, 4]
    assert fused_at[10] == [5, 6, 7, 8, 9]
    assert all(fused_at[i] == [] for i in range(15) if i not in (5, 10))
    # every keyframe's fused mask is exactly k frames late
    assert fused_at[5][0] == 0 and fused_at[10][0] == 5
    tail = engine.flush()
    assert [e.frame_index for e in masks_of(tail, "fused")] == [10, 11, 12, 13, 14]
    assert engine.flush() == []


def test_keyframe_events_order_points_then_fused_then_causal():
    engine, _, _ = make(k=5, l=2)
    engine.add_query("mug", "cam")
    run(engine, range(5))
    events = engine.push("cam", image(), 5007)
    kinds = [type(e).__name__ + (f":{e.kind}" if isinstance(e, MaskEvent) else "")
             for e in events]
    assert kinds == ["KeyframePoints"] + ["MaskEvent:fused"] * 5 + ["MaskEvent:causal"]
    assert events[-1].frame_index == 5


def test_every_frame_gets_one_causal_and_one_fused_mask_per_tracked_query():
    engine, _, _ = make(k=5, l=2)
    a = engine.add_query("mug", "cam")
    b = engine.add_query("cup", "cam")
    events = run(engine, range(23)) + engine.flush()
    expected = Counter({(i, q): 1 for i in range(23) for q in (a.id, b.id)})
    assert per_frame(events, "causal") == expected
    assert per_frame(events, "fused") == expected
    # one event per frame, carrying both queries' masks and labels
    fused = masks_of(events, "fused")
    assert len(fused) == 23
    assert all(e.labels == {a.id: a.label, b.id: b.label} for e in fused)
    assert all(m.dtype == bool and m.shape == (32, 32) for e in fused for m in e.masks.values())


def test_fused_events_are_in_strictly_increasing_stamp_order_per_camera():
    engine, _, _ = make(k=4, l=1)
    engine.add_query("mug", "a")
    engine.add_query("cup", "b")
    events = []
    for i in range(30):
        events += engine.push("a", image(), 10_000 + 33 * i)
        if i % 3 != 2:  # camera b runs at a different rate
            events += engine.push("b", image(), 50_000 + 41 * i)
    events += engine.flush()
    for camera in ("a", "b"):
        stamps = [e.stamp_ns for e in masks_of(events, "fused", camera)]
        assert stamps == sorted(set(stamps)) and len(stamps) > 10


def test_query_added_late_is_pointed_at_next_keyframe_and_fused_from_there():
    engine, pointer, _ = make(k=5, l=2)
    events = run(engine, range(4))
    q = engine.add_query("mug", "cam")
    events += run(engine, range(4, 13)) + engine.flush()
    points = [e for e in events if isinstance(e, KeyframePoints)]
    assert [p.frame_index for p in points] == [5, 10]
    assert sorted({i for i, _ in per_frame(events, "fused")}) == list(range(5, 13))
    assert sorted({i for i, _ in per_frame(events, "causal")}) == list(range(5, 13))
    assert [c.index for c in pointer.calls] == [5, 10]
    assert all(e.masks.keys() == {q.id} for e in masks_of(events, "fused"))


# ----------------------------------------------------------------------------- backward, fusion


def test_backward_gets_the_frames_between_keyframes_and_the_live_queries():
    engine, _, segmenter = make(k=5, l=2)
    a = engine.add_query("mug", "cam")
    run(engine, range(8))
    b = engine.add_query("cup", "cam")  # first pointed at 10: not in window 5..9
    run(engine, range(8, 17))
    engine.flush()
    assert list(segmenter.backwards) == [
        ("cam", 5, (a.id,), (1, 2, 3, 4)),
        ("cam", 10, (a.id,), (6, 7, 8, 9)),
        ("cam", 15, (a.id, b.id), (11, 12, 13, 14)),
    ]  # flush has no right keyframe: no backward pass over 16
    assert [p[1] for p in segmenter.prompts] == [0, 5, 10, 15]
    assert sorted(segmenter.prompts[2][2]) == [a.id, b.id]
    assert list(segmenter.forgets) == [0, 5, 10, 15]


def test_fusion_rule_union_on_disagreement_intersection_on_agreement():
    # 7-pixel squares; forward stays put, backward drifts 1 px per frame away from K'.
    # IoU of two 7-wide squares shifted by s is (7-s)/(7+s): s=1 -> 0.75 (>= 0.7,
    # intersection), s>=2 -> <= 0.56 (union).
    engine, _, segmenter = make(k=5, l=2, half=3, fwd_dx=0, bwd_dx=1)
    q = engine.add_query("mug", "cam")
    events = run(engine, range(6))
    causal = {e.frame_index: e.masks[q.id] for e in masks_of(events, "causal")}
    fused = {e.frame_index: e.masks[q.id] for e in masks_of(events, "fused")}
    assert sorted(fused) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(fused[0], causal[0])  # keyframe: its prompt mask
    key_mask = causal[5]
    for i in (1, 2, 3, 4):
        backward = np.roll(key_mask, i - 5, axis=1)
        forward = causal[i]
        shift = 5 - i
        if shift == 1:
            expected = forward & backward
            assert expected.sum() < forward.sum()
        else:
            expected = forward | backward
            assert expected.sum() > forward.sum()
        np.testing.assert_array_equal(fused[i], expected)
        np.testing.assert_array_equal(fused[i], fuse_masks(forward, backward, 0.7))


def test_flush_fuses_forward_only():
    engine, _, _ = make(k=5, l=2, fwd_dx=1)
    q = engine.add_query("mug", "cam")
    events = run(engine, range(8))
    tail = engine.flush()
    causal = {e.frame_index: e.masks[q.id] for e in masks_of(events, "causal")}
    fused = {e.frame_index: e.masks[q.id] for e in masks_of(tail, "fused")}
    assert sorted(fused) == [5, 6, 7]
    for i in fused:
        np.testing.assert_array_equal(fused[i], causal[i])
    assert not np.array_equal(causal[6], causal[5])  # the forward masks really moved


def test_push_after_flush_continues_without_duplicates():
    engine, _, _ = make(k=5, l=2)
    engine.add_query("mug", "cam")
    events = run(engine, range(7)) + engine.flush() + run(engine, range(7, 12)) + engine.flush()
    assert set(per_frame(events, "fused").values()) == {1}
    assert sorted(i for i, _ in per_frame(events, "fused")) == list(range(12))


def test_k1_every_frame_is_a_keyframe():
    engine, pointer, segmenter = make(k=1, l=2)
    engine.add_query("mug", "cam")
    fused_at = {i: [e.frame_index for e in masks_of(engine.push("cam", image(), i), "fused")]
                for i in range(5)}
    assert fused_at == {0: [], 1: [0], 2: [1], 3: [2], 4: [3]}
    assert list(segmenter.backwards) == [] and list(segmenter.forwards) == []
    assert [c.history for c in pointer.calls][2] == (("feat", "cam", 1), ("feat", "cam", 0))


# ----------------------------------------------------------------------------- pointer calls


def test_encode_only_frames_the_temporal_module_reads_and_never_twice():
    engine, pointer, _ = make(k=10, l=4)
    engine.add_query("mug", "cam")
    run(engine, range(35))
    indices = [i for _, i in pointer.encoded]
    assert indices == [0, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 26, 27, 28, 29, 30]
    assert len(indices) == len(set(indices))
    stats = engine.stats["cam"]
    assert (stats.frames, stats.keyframes, stats.encodes, stats.point_calls) == (35, 4, 16, 4)
    assert engine.timings["encode"].count == 16


def test_no_queries_no_encoding():
    engine, pointer, segmenter = make(k=5, l=2)
    events = run(engine, range(12))
    assert events == [] and list(pointer.encoded) == [] and list(pointer.calls) == []
    assert segmenter.trackers == []


def test_history_is_most_recent_first_and_at_most_l():
    engine, pointer, _ = make(k=10, l=4)
    engine.add_query("mug", "cam")
    run(engine, range(21))
    calls = list(pointer.calls)
    assert [c.index for c in calls] == [0, 10, 20]
    assert calls[0].history == ()
    assert [h[2] for h in calls[1].history] == [9, 8, 7, 6]
    assert [h[2] for h in calls[2].history] == [19, 18, 17, 16]
    assert calls[1].features == ("feat", "cam", 10)


def test_history_follows_the_pointers_stride():
    pointer = FakePointer()
    pointer.history_stride = 4  # weights trained on every 4th frame
    engine = StreamingEngine(pointer, FakeSegmenter(), EngineConfig(k=10, l=4))
    engine.add_query("mug", "cam")
    run(engine, range(31))
    calls = list(pointer.calls)
    assert [c.index for c in calls] == [0, 10, 20, 30]
    assert [h[2] for h in calls[1].history] == [6, 2]
    assert [h[2] for h in calls[2].history] == [16, 12, 8, 4]
    assert [h[2] for h in calls[3].history] == [26, 22, 18, 14]
    # only keyframes and history frames are encoded, each once
    assert [i for _, i in pointer.encoded] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                               28, 30]


def test_history_shorter_when_query_arrives_late():
    engine, pointer, _ = make(k=10, l=4)
    run(engine, range(8))
    engine.add_query("mug", "cam")
    run(engine, range(8, 11))
    assert [i for _, i in pointer.encoded] == [8, 9, 10]
    assert [h[2] for h in pointer.calls[0].history] == [9, 8]


def test_history_when_l_exceeds_k():
    engine, pointer, _ = make(k=2, l=3)
    engine.add_query("mug", "cam")
    run(engine, range(7))
    assert [i for _, i in pointer.encoded] == list(range(7))  # every frame, once
    assert [h[2] for h in pointer.calls[3].history] == [5, 4, 3]


def test_one_point_call_per_keyframe_for_several_queries():
    engine, pointer, segmenter = make(k=5, l=2, points={"mug": [(5, 5)], "cup": [(20, 20)],
                                                        "plate": [(10, 25), (12, 25)]})
    a = engine.add_query("mug", "cam")
    b = engine.add_query("cup", "cam")
    c = engine.add_query("plate", "cam", track=False)
    events = run(engine, range(6))
    assert [(x.index, x.queries) for x in pointer.calls] == [(0, ("mug", "cup", "plate")),
                                                              (5, ("mug", "cup"))]
    points = [e for e in events if isinstance(e, KeyframePoints)]
    assert [(p.frame_index, p.query_id) for p in points] == [(0, a.id), (0, b.id), (0, c.id),
                                                             (5, a.id), (5, b.id)]
    assert points[2].points == (Point(10, 25, "plate"), Point(12, 25, "plate"))
    assert (points[0].width, points[0].height, points[0].label) == (32, 32, a.label)
    assert [sorted(p[2]) for p in segmenter.prompts] == [[a.id, b.id], [a.id, b.id]]
    np.testing.assert_array_equal(segmenter.prompts[0][2][b.id], [[20, 20]])
    # one encode per frame serves all queries
    assert [i for _, i in pointer.encoded] == [0, 3, 4, 5]


def test_one_shot_query_points_once_and_has_no_masks():
    engine, pointer, segmenter = make(k=5, l=2)
    run(engine, range(2))
    q = engine.add_query("mug", "cam", track=False)
    events = run(engine, range(2, 16)) + engine.flush()
    points = [e for e in events if isinstance(e, KeyframePoints)]
    assert [(p.frame_index, p.query_id, p.label) for p in points] == [(5, q.id, 0)]
    assert not [e for e in events if isinstance(e, MaskEvent)]
    assert engine.queries() == () and engine.cancel_query(q.id) is False
    assert [c.index for c in pointer.calls] == [5]
    assert list(segmenter.prompts) == [] and segmenter.trackers == []
    assert [i for _, i in pointer.encoded] == [3, 4, 5]  # nothing once it was answered


# ----------------------------------------------------------------------------- cancel


def test_cancel_removes_query_from_all_future_outputs_at_once():
    engine, _, segmenter = make(k=5, l=2)
    a = engine.add_query("mug", "cam")
    b = engine.add_query("cup", "cam")
    before = run(engine, range(8))
    assert per_frame(before, "causal")[(7, a.id)] == 1
    assert engine.cancel_query(a.id)
    after = run(engine, range(8, 13)) + engine.flush()
    assert all(set(e.masks) == {b.id} and set(e.labels) == {b.id}
               for e in after if isinstance(e, MaskEvent))
    # fused masks of frames 5..7 (causal already out) are still emitted, for b only
    assert sorted(i for i, _ in per_frame(after, "fused")) == list(range(5, 13))
    assert all(p.query_id == b.id for p in after if isinstance(p, KeyframePoints))
    assert segmenter.backwards[-1][2] == (b.id,)
    # a's label is free again; b's is not
    c = engine.add_query("plate", "cam")
    assert c.label != b.label


def test_cancelling_every_query_stops_all_output():
    engine, pointer, segmenter = make(k=5, l=2)
    q = engine.add_query("mug", "cam")
    run(engine, range(7))
    engine.cancel_query(q.id)
    encodes = len(pointer.encoded)
    events = run(engine, range(7, 20)) + engine.flush()
    assert events == []
    assert len(pointer.encoded) == encodes
    assert list(segmenter.forwards)[-1] == ("cam", 6)  # no tracking work after the cancel


# ----------------------------------------------------------------------------- cameras


def test_two_cameras_are_independent():
    engine, pointer, segmenter = make(k=5, l=2)
    qa = engine.add_query("mug", "a")
    qb = engine.add_query("cup", "b")
    events = []
    for i in range(12):
        events += engine.push("a", image(), i)
        if i < 6:
            events += engine.push("b", image(16), 100 + i)
    events += engine.flush("a")
    assert [(c.camera, c.index, c.queries) for c in pointer.calls] == [
        ("a", 0, ("mug",)), ("b", 0, ("cup",)), ("a", 5, ("mug",)), ("b", 5, ("cup",)),
        ("a", 10, ("mug",))]
    assert len(segmenter.trackers) == 2
    assert per_frame(events, "fused", "a") == Counter({(i, qa.id): 1 for i in range(12)})
    assert per_frame(events, "fused", "b") == Counter({(i, qb.id): 1 for i in range(5)})
    assert all(m.shape == (16, 16) for e in masks_of(events, "causal", "b")
               for m in e.masks.values())
    assert engine.stats["a"].frames == 12 and engine.stats["b"].frames == 6
    assert engine.stats["b"].buffered_frames == 1  # b's window [5, ...) is still open
    tail = engine.flush()
    assert [e.frame_index for e in masks_of(tail, "fused", "b")] == [5]


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("bad", [
    np.zeros((8, 8, 3), dtype=np.float32),
    np.zeros((8, 8), dtype=np.uint8),
    np.zeros((8, 8, 4), dtype=np.uint8),
    np.zeros((0, 8, 3), dtype=np.uint8),
    [[[0, 0, 0]]],
])
def test_bad_image_raises_before_any_state_change(bad):
    engine, pointer, _ = make(k=5, l=2)
    engine.add_query("mug", "cam")
    run(engine, range(3))
    before = engine.stats["cam"]
    with pytest.raises(ValueError):
        engine.push("cam", bad, 3007)
    with pytest.raises(ValueError):
        engine.push("new", bad, 3007)
    assert engine.stats["cam"] == before and "new" not in engine.stats
    events = engine.push("cam", image(), 3007)
    assert [e.frame_index for e in masks_of(events, "causal")] == [3]


def test_bad_stamp_raises():
    engine, _, _ = make()
    with pytest.raises(ValueError, match="stamp"):
        engine.push("cam", image(), 1.5)
    assert engine.stats == {}


def test_resolution_change_warns_flushes_and_restarts_with_a_keyframe():
    engine, pointer, segmenter = make(k=5, l=2)
    q = engine.add_query("mug", "cam")
    events = run(engine, range(7))
    change = engine.push("cam", image(48), 7007)
    assert [type(e).__name__ for e in change] == [
        "MaskEvent", "MaskEvent", "EngineWarning", "KeyframePoints", "MaskEvent"]
    assert [e.frame_index for e in masks_of(change, "fused")] == [5, 6]
    assert [e.shape for e in masks_of(change, "fused")] == [(32, 32), (32, 32)]
    assert "resolution changed from 32x32 to 48x48" in change[2].message
    assert change[3].frame_index == 7 and (change[3].width, change[3].height) == (48, 48)
    assert masks_of(change, "causal")[0].masks[q.id].shape == (48, 48)
    assert len(segmenter.trackers) == 2
    events += change + run(engine, range(8, 18), size=48) + engine.flush()
    # the new phase: keyframes at 7, 12, 17; indices keep increasing
    assert [c.index for c in pointer.calls] == [0, 5, 7, 12, 17]
    assert [h[2] for h in pointer.calls[3].history] == [11, 10]  # nothing from the old size
    assert per_frame(events, "fused") == Counter({(i, q.id): 1 for i in range(18)})
    assert per_frame(events, "causal") == Counter({(i, q.id): 1 for i in range(18)})
    assert engine.stats["cam"].warnings == 1


def test_pointer_exception_warns_and_recovers_at_the_next_keyframe():
    engine, pointer, segmenter = make(k=5, l=2)
    a = engine.add_query("mug", "cam")
    events = run(engine, range(8))
    b = engine.add_query("cup", "cam", track=False)
    pointer.fail_point_at.add(("cam", 10))
    events += run(engine, range(8, 10))
    failed = engine.push("cam", image(), 10007)
    # the open window 5..9 is flushed forward-only, then the warning; no causal mask for 10
    assert [e.frame_index for e in masks_of(failed, "fused")] == [5, 6, 7, 8, 9]
    warnings = [e for e in failed if isinstance(e, EngineWarning)]
    assert len(warnings) == 1 and "model exploded" in warnings[0].message
    assert warnings[0].frame_index == 10
    assert masks_of(failed, "causal") == []
    assert engine.queries() == (a, b)  # nothing lost
    events += failed + run(engine, range(11, 20)) + engine.flush()
    assert sorted(i for i, _ in per_frame(events, "causal")) == [*range(10), *range(15, 20)]
    assert per_frame(events, "fused") == per_frame(events, "causal")
    answered = [(e.frame_index, e.query_id) for e in events if isinstance(e, KeyframePoints)]
    assert (15, b.id) in answered and (10, b.id) not in answered
    assert len(segmenter.trackers) == 2
    assert engine.stats["cam"].resets == 1


@pytest.mark.parametrize("method,frame,resume", [("forward", 7, 10), ("backward", 10, 15),
                                                 ("prompt", 10, 15)])
def test_tracker_exception_warns_and_recovers(method, frame, resume):
    engine, _, segmenter = make(k=5, l=2)
    q = engine.add_query("mug", "cam")
    segmenter.fail_at.add((method, "cam", frame))
    events = run(engine, range(18)) + engine.flush()
    warnings = [e for e in events if isinstance(e, EngineWarning)]
    assert len(warnings) == 1 and f"tracker {method} failed" in warnings[0].message
    lost = set(range(frame, resume))  # no masks until the next keyframe
    expected = Counter({(i, q.id): 1 for i in range(18) if i not in lost})
    assert per_frame(events, "causal") == expected
    assert per_frame(events, "fused") == expected
    assert engine.queries() == (q,)


def test_history_encode_failure_only_shortens_history():
    engine, pointer, _ = make(k=5, l=2)
    q = engine.add_query("mug", "cam")
    pointer.fail_encode_at.add(("cam", 4))
    events = run(engine, range(6))
    assert [e.frame_index for e in events if isinstance(e, EngineWarning)] == [4]
    assert [h[2] for h in pointer.calls[1].history] == [3]
    assert per_frame(events, "causal") == Counter({(i, q.id): 1 for i in range(6)})


def test_pointer_answer_count_mismatch_is_a_warning():
    class BrokenPointer(FakePointer):
        def point(self, frame, features, history, queries):
            return []

    engine = StreamingEngine(BrokenPointer(), FakeSegmenter(), EngineConfig(k=5, l=2))
    engine.add_query("mug", "cam")
    events = run(engine, range(3))
    assert [type(e) for e in events] == [EngineWarning]
    assert "0 answers for 1 queries" in events[0].message


def test_concurrent_add_and_cancel_while_pushing():
    engine, _, _ = make(k=3, l=1)
    keep = engine.add_query("mug", "cam")
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn():
        try:
            while not stop.is_set():
                q = engine.add_query("cup", "cam")
                engine.cancel_query(q.id)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        events = run(engine, range(300)) + engine.flush()
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert engine.queries() == (keep,)
    assert per_frame(events, "fused")[(299, keep.id)] == 1
    assert not [e for e in events if isinstance(e, EngineWarning)]


# ----------------------------------------------------------------------------- memory, timing


def test_buffers_and_memory_stay_flat_over_10000_frames():
    pointer = FakePointer(maxlen=16)
    segmenter = FakeSegmenter(half=1, maxlen=16)
    engine = StreamingEngine(pointer, segmenter, EngineConfig(k=10, l=4))
    engine.add_query("mug", "cam")
    pointer.points["mug"] = [(4, 4)]
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    max_frames = max_features = 0

    def push(start: int, stop: int) -> None:
        nonlocal max_frames, max_features
        for i in range(start, stop):
            engine.push("cam", frame, i)
            if i % 97 == 0:
                stats = engine.stats["cam"]
                max_frames = max(max_frames, stats.buffered_frames)
                max_features = max(max_features, stats.buffered_features)

    tracemalloc.start()
    try:
        push(0, 1000)
        gc.collect()
        at_1000 = tracemalloc.get_traced_memory()[0]
        push(1000, 10_000)
        gc.collect()
        at_10000 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert 0 < max_frames <= 10 and 0 < max_features <= 4
    assert engine.stats["cam"].frames == 10_000 and engine.stats["cam"].encodes == 5000
    assert all(s.sample_size <= s.reservoir for s in engine.timings.values())
    # a leak of one pointer per frame would add 72 KiB; the engine adds ~1 KiB of noise
    assert at_10000 - at_1000 < 16 * 1024, (at_1000, at_10000)


def test_timings_count_each_stage():
    engine, _, _ = make(k=5, l=2)
    engine.add_query("mug", "cam")
    run(engine, range(12))
    t = engine.timings
    assert set(t) == {"encode", "point", "prompt", "forward", "backward", "fuse"}
    assert (t["encode"].count, t["point"].count, t["prompt"].count) == (7, 3, 3)
    assert (t["forward"].count, t["backward"].count, t["fuse"].count) == (9, 2, 2)
    for stats in t.values():
        assert 0 <= stats.p50 <= stats.p95 <= stats.max and stats.total >= 0


def test_running_stats_reservoir_is_bounded_and_exact_while_small():
    stats = RunningStats(reservoir=100)
    for v in range(1, 101):
        stats.add(v)
    assert (stats.count, stats.total, stats.mean, stats.max) == (100, 5050.0, 50.5, 100.0)
    assert stats.p50 == pytest.approx(50.5) and stats.p95 == pytest.approx(95.05)
    for v in range(100_000):
        stats.add(v % 1000)
    assert stats.sample_size == 100 and stats.count == 100_100
    assert 300 < stats.p50 < 700  # a fair sample of the uniform values 0..999
    assert RunningStats().summary()["p95_s"] == 0.0


# ----------------------------------------------------------------------------- labels


def test_label_allocator_unique_reused_and_exhausted():
    labels = LabelAllocator(max_label=3)
    assert [labels.acquire() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(LabelsExhaustedError):
        labels.acquire()
    labels.release(2)
    assert labels.acquire() == 2 and len(labels) == 3
    labels.release(1)
    labels.release(3)
    assert labels.acquire() == 1  # least recently released first
    with pytest.raises(ValueError):
        labels.release(3)
    with pytest.raises(ValueError):
        LabelAllocator(max_label=256)
    full = LabelAllocator()
    assert sorted(full.acquire() for _ in range(255)) == list(range(1, 256))


def test_engine_labels_unique_among_live_queries():
    engine = StreamingEngine(FakePointer(), FakeSegmenter(), EngineConfig(max_queries=255))
    queries = [engine.add_query(f"q{i}", "cam") for i in range(255)]
    assert sorted(q.label for q in queries) == list(range(1, 256))
    with pytest.raises(ValueError, match="too many"):
        engine.add_query("one more", "cam")
    engine.cancel_query(queries[10].id)
    assert engine.add_query("again", "cam").label == queries[10].label


def test_compose_label_map_older_query_wins_overlap():
    a = np.zeros((4, 5), dtype=bool)
    a[0:2, 0:3] = True
    b = np.zeros((4, 5), dtype=bool)
    b[1:3, 2:5] = True
    out = compose_label_map({7: b, 3: a}, {3: 200, 7: 9}, (4, 5))
    assert out.dtype == np.uint8 and out.shape == (4, 5)
    np.testing.assert_array_equal(out, [[200, 200, 200, 0, 0],
                                        [200, 200, 200, 9, 9],
                                        [0, 0, 9, 9, 9],
                                        [0, 0, 0, 0, 0]])
    assert not compose_label_map({}, {}, (2, 3)).any()
    with pytest.raises(ValueError, match="shape"):
        compose_label_map({1: np.zeros((3, 3), bool)}, {1: 1}, (4, 5))
    with pytest.raises(ValueError, match="no label"):
        compose_label_map({1: a}, {}, (4, 5))
    with pytest.raises(ValueError, match="outside"):
        compose_label_map({1: a}, {1: 0}, (4, 5))


def test_mask_event_composes_into_a_label_image():
    engine, _, _ = make(k=5, l=2, points={"mug": [(5, 5)], "cup": [(20, 20)]})
    a = engine.add_query("mug", "cam")
    b = engine.add_query("cup", "cam")
    event = masks_of(engine.push("cam", image(), 7), "causal")[0]
    assert event.shape == (32, 32)
    label_map = compose_label_map(event.masks, event.labels, event.shape)
    assert label_map[5, 5] == a.label and label_map[20, 20] == b.label and label_map[0, 31] == 0
    assert set(np.unique(label_map)) == {0, a.label, b.label}
