"""Throughput, latency and memory of the streaming engine on a synthetic video (CPU backend).

    bash scripts/env.sh-managed venv:  python benchmarks/stream_throughput.py [--frames 10000]

A synthetic scene is played ping-pong (forward, then backward, ...) so that a long stream has
no jumps; the oracle pointer answers the queries and the classical segmenter makes the masks,
as in the demo. Prints frames per second, the latency of causal and of fused masks (p50/p95:
compute time from a frame's push to its mask, and for fused masks also the frames waited), and
resident memory at checkpoints. Figures only: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import peak_rss_mib, rss_mib  # noqa: E402
from videomolmo_ros.data.synthetic import SceneConfig, make_scene  # noqa: E402
from videomolmo_ros.pointers.oracle import OraclePointer  # noqa: E402
from videomolmo_ros.segment.classical import ClassicalSegmenter  # noqa: E402
from videomolmo_ros.stream import EngineConfig, MaskEvent, StreamingEngine  # noqa: E402






def ping_pong(length: int, t: int) -> int:
    """Frame of a clip of ``length`` frames shown forward, backward, forward, ..."""
    period = 2 * (length - 1)
    phase = t % period
    return phase if phase < length else period - phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[1_000, 10_000])
    parser.add_argument("--queries", type=int, default=2, help="standing queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--l", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", type=int, default=120, help="frames of the synthetic clip")
    args = parser.parse_args(argv)

    scene = make_scene(SceneConfig(seed=args.seed, num_frames=args.clip))
    # Ping-pong reverses time, so the oracle must see clip stamps: keep each frame's own stamp
    # for the pointer and a monotonic stream stamp for the engine.
    oracle = OraclePointer(scene)
    expressions = [e for e in scene.expressions if e.object_ids][: args.queries]
    engine = StreamingEngine(_ClipPointer(oracle, scene, args.clip), ClassicalSegmenter(),
                             EngineConfig(k=args.k, l=args.l))
    for expression in expressions:
        engine.add_query(expression.text, "cam", track=True)

    pushed_at: dict[int, float] = {}
    causal_ms, fused_ms, fused_frames = [], [], []
    rows = []
    start = time.perf_counter()
    baseline = rss_mib()
    for t in range(args.frames):
        frame = scene.frames[ping_pong(args.clip, t)]
        stamp = t * 100_000_000
        pushed_at[stamp] = time.perf_counter()
        events = engine.push("cam", frame, stamp)
        now = time.perf_counter()
        for event in events:
            if not isinstance(event, MaskEvent):
                continue
            if event.kind == "causal":
                causal_ms.append((now - pushed_at[event.stamp_ns]) * 1e3)
            else:
                fused_ms.append((now - pushed_at.pop(event.stamp_ns)) * 1e3)
                fused_frames.append(t - event.frame_index)
        if len(pushed_at) > 4 * args.k:  # frames before the first keyframe never get masks
            for old in sorted(pushed_at)[: len(pushed_at) - 4 * args.k]:
                del pushed_at[old]
        if t + 1 in args.checkpoints:
            rows.append((t + 1, time.perf_counter() - start, rss_mib(), peak_rss_mib()))

    elapsed = time.perf_counter() - start
    print(f"engine: k={args.k} l={args.l}, {len(expressions)} standing queries, "
          f"{scene.width}x{scene.height} frames, oracle pointer + classical segmenter, "
          f"1 camera, CPU")
    print(f"frames: {args.frames} in {elapsed:.1f} s = {args.frames / elapsed:.1f} frames/s")
    print(f"{'latency':<28} {'p50':>9} {'p95':>9}")
    print(f"{'causal mask (compute, ms)':<28} {np.percentile(causal_ms, 50):>9.2f} "
          f"{np.percentile(causal_ms, 95):>9.2f}")
    print(f"{'fused mask (wall, ms)':<28} {np.percentile(fused_ms, 50):>9.2f} "
          f"{np.percentile(fused_ms, 95):>9.2f}")
    print(f"{'fused mask (frames late)':<28} {np.percentile(fused_frames, 50):>9.0f} "
          f"{np.percentile(fused_frames, 95):>9.0f}")
    print("  (at a camera rate of R frames/s a fused mask is frames_late / R seconds late, "
          "plus compute)")
    print(f"\n{'after frames':>12} {'seconds':>8} {'RSS MiB':>8} {'peak MiB':>9} "
          f"(RSS before streaming: {baseline:.0f} MiB)")
    for frames, seconds, rss, peak in rows:
        print(f"{frames:>12} {seconds:>8.1f} {rss:>8.1f} {peak:>9.1f}")
    print("\nper-stage compute (ms):")
    for stage, stats in engine.timings.items():
        if stats.count:
            print(f"  {stage:<9} n={stats.count:<6} mean={stats.mean * 1e3:7.2f} "
                  f"p50={stats.p50 * 1e3:7.2f} p95={stats.p95 * 1e3:7.2f}")
    return 0


class _ClipPointer:
    """The oracle, asked about the clip frame a stream frame shows (ping-pong playback)."""

    name = "oracle"

    def __init__(self, oracle: OraclePointer, scene, clip: int) -> None:
        self.oracle, self.scene, self.clip = oracle, scene, clip

    def encode(self, frame):
        return None

    def point(self, frame, features, history, queries):
        index = ping_pong(self.clip, frame.stamp_ns // 100_000_000)
        clip_frame = self.scene.frame(index, frame.camera)
        return self.oracle.point(clip_frame, None, history, queries)


if __name__ == "__main__":
    sys.exit(main())
