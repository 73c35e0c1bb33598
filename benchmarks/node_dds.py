"""The pointing node over real DDS, fed at a fixed frame rate: latency, drops, memory.

    source scripts/env.sh && vmr_env
    python benchmarks/node_dds.py --fps 10 --frames 300 --k 5 10 20 --l 2 4

For every (k, l) it starts the node (its own process, config/pointing.yaml, oracle pointer,
classical segmenter), publishes a synthetic video of --frames frames at --fps
without waiting for the node, and measures from this side: end-to-end latency of causal and
fused masks (publish -> arrival, p50/p95), the share of frames the node dropped (no overlay
came back), throughput, and the node's resident memory against stream length; the node's own
~/stats give the per-stage times. Writes a Markdown table and a PNG plot to --out.
Figures only: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import rss_mib  # noqa: E402
from videomolmo_ros.data.synthetic import SceneConfig, make_scene  # noqa: E402
from videomolmo_ros.ros_client import (NodeProcess, PointingClient,  # noqa: E402
                                       require_loopback_dds, wait_for)

IMAGE_TOPIC = "/bench/camera/image_raw"




def run_one(scene, k: int, l: int, fps: float, frames: int, queries: int, log_dir: Path) -> dict:
    """One node, one stream; every figure of the table row for (k, l)."""
    node = NodeProcess(remappings={"camera/image_raw": IMAGE_TOPIC},
                       parameters={"k": k, "l": l, "pointer.backend": "oracle",
                                   "oracle.scene_seed": scene.config.seed,
                                   "oracle.scene_config": json.dumps(
                                       {"num_frames": scene.num_frames}),
                                   "stats_period_s": 0.5},
                       log_path=log_dir / f"node_k{k}_l{l}.log")
    client = PointingClient(IMAGE_TOPIC)
    try:
        if not client.wait_for_node(60, alive=node.alive):
            raise SystemExit(f"node did not start: {node.log()[-2000:]}")
        client.publish_and_wait(scene.frames[0], scene.stamp_ns(0))
        expressions = [e for e in scene.expressions if e.object_ids][:queries]
        for expression in expressions:
            client.ask(expression.text, track=True, timeout_s=30.0)
        memory = []
        period = 1.0 / fps
        start = time.monotonic()
        for t in range(1, frames):
            client.publish(scene.frames[t], scene.stamp_ns(t))
            if t % 50 == 0:
                memory.append((t, rss_mib(node.process.pid)))
            time.sleep(max(0.0, start + t * period - time.monotonic()))
        elapsed = time.monotonic() - start  # the stream's duration as sent
        wait_for(lambda: False, 2.0)  # let the last answers arrive
        published = dict(client.published_at)
        causal = [client.masks["causal"][s][1] - published[s] for s in client.masks["causal"]
                  if s in published]
        fused = [client.masks["fused"][s][1] - published[s] for s in client.masks["fused"]
                 if s in published]
        processed = sum(1 for s in published if s in client.overlays)
        return {"k": k, "l": l, "fps": fps, "fps_sent": (frames - 1) / elapsed,
                "frames": len(published),
                "processed": processed, "dropped_ratio": 1 - processed / len(published),
                "throughput_fps": processed / elapsed,
                "causal_ms": _percentiles(causal), "fused_ms": _percentiles(fused),
                "memory_mib": memory, "stages": client.stats.get("stages", {})}
    finally:
        client.close()
        node.stop()


def _percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50": float("nan"), "p95": float("nan"), "n": 0}
    values = np.array(seconds) * 1e3
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "n": int(values.size)}


def markdown(rows: list[dict]) -> str:
    lines = ["| k | l | fps asked / sent | processed fps | dropped | causal p50/p95 ms | "
             "fused p50/p95 ms | node RSS first/last MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = r["memory_mib"]
        lines.append(
            f"| {r['k']} | {r['l']} | {r['fps']:.0f} / {r['fps_sent']:.1f} | "
            f"{r['throughput_fps']:.1f} | "
            f"{r['dropped_ratio']:.1%} | {r['causal_ms']['p50']:.0f} / {r['causal_ms']['p95']:.0f}"
            f" | {r['fused_ms']['p50']:.0f} / {r['fused_ms']['p95']:.0f} | "
            f"{mem[0][1]:.0f} / {mem[-1][1]:.0f} |" if mem else "| n/a |")
    stages = rows[-1]["stages"]
    if stages:
        lines += ["", f"Per-stage compute in the node (last run, k={rows[-1]['k']}, "
                      f"l={rows[-1]['l']}), ms:", "",
                  "| stage | count | mean | p50 | p95 |", "|---|---|---|---|---|"]
        for name, s in stages.items():
            if s["count"]:
                lines.append(f"| {name} | {s['count']} | {s['mean_s'] * 1e3:.2f} | "
                             f"{s['p50_s'] * 1e3:.2f} | {s['p95_s'] * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Two panels drawn with OpenCV (no plotting library in the venv): node memory against
    frames streamed, and fused/causal p50 latency against k."""
    width, height, margin = 900, 360, 50
    canvas = np.full((height, width, 3), 255, np.uint8)
    panel = (width - 3 * margin) // 2
    colours = [(200, 30, 30), (30, 120, 200), (30, 160, 60), (160, 60, 160), (220, 140, 0),
               (0, 160, 160)]

    def axes(x0: int, title: str, xlabel: str, ylabel: str) -> None:
        cv2.rectangle(canvas, (x0, margin), (x0 + panel, height - margin), (0, 0, 0), 1)
        cv2.putText(canvas, title, (x0, margin - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0))
        cv2.putText(canvas, xlabel, (x0 + panel // 2 - 30, height - 15),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0))
        cv2.putText(canvas, ylabel, (x0 + 4, margin + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (80, 80, 80))

    def scale(values, lo_hi):
        lo, hi = lo_hi
        return [(v - lo) / (hi - lo or 1.0) for v in values]

    # left: memory vs frames
    axes(margin, "node RSS vs frames streamed", "frames", "MiB")
    points = [(t, m) for r in rows for t, m in r["memory_mib"]]
    if points:
        t_range = (0, max(t for t, _ in points))
        m_range = (min(m for _, m in points) * 0.95, max(m for _, m in points) * 1.05)
        for i, r in enumerate(rows):
            xs = scale([t for t, _ in r["memory_mib"]], t_range)
            ys = scale([m for _, m in r["memory_mib"]], m_range)
            pts = np.array([(margin + x * panel, height - margin - y * (height - 2 * margin))
                            for x, y in zip(xs, ys)], np.int32)
            cv2.polylines(canvas, [pts], False, colours[i % len(colours)], 2)
            cv2.putText(canvas, f"k={r['k']} l={r['l']}", (margin + 8, margin + 34 + 14 * i),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, colours[i % len(colours)])
        cv2.putText(canvas, f"{m_range[0]:.0f}..{m_range[1]:.0f} MiB, 0..{t_range[1]}",
                    (margin, height - margin + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80))
    # right: latency vs k (mean over l)
    x0 = 2 * margin + panel
    axes(x0, "mask latency p50 vs k", "k", "ms")
    ks = sorted({r["k"] for r in rows})
    series = {"fused": [], "causal": []}
    for k in ks:
        for kind in series:
            series[kind].append(np.nanmean([r[f"{kind}_ms"]["p50"] for r in rows if r["k"] == k]))
    top = max(max(v) for v in series.values()) * 1.1 or 1.0
    for i, (kind, values) in enumerate(series.items()):
        xs = scale(ks, (min(ks), max(ks))) if len(ks) > 1 else [0.5]
        pts = np.array([(x0 + x * panel, height - margin - v / top * (height - 2 * margin))
                        for x, v in zip(xs, values)], np.int32)
        cv2.polylines(canvas, [pts], False, colours[i], 2)
        for p, k in zip(pts, ks):
            cv2.circle(canvas, tuple(int(c) for c in p), 4, colours[i], -1)
            cv2.putText(canvas, str(k), (int(p[0]) - 4, height - margin + 15),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0))
        cv2.putText(canvas, kind, (x0 + 8, margin + 34 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, colours[i])
    cv2.putText(canvas, f"0..{top:.0f} ms", (x0 + panel - 70, margin + 14),
                cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80))
    cv2.imwrite(str(path), canvas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--l", type=int, nargs="+", default=[4])
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/bench_node"))
    args = parser.parse_args(argv)
    require_loopback_dds()
    args.out.mkdir(parents=True, exist_ok=True)
    # The node's oracle regenerates this very scene from its seed and length.
    scene = make_scene(SceneConfig(seed=args.seed, num_frames=args.frames))
    logs = Path(tempfile.mkdtemp(prefix="bench_node_"))
    rows = []
    for k in args.k:
        for l in args.l:  # noqa: E741 (the paper's name)
            print(f"k={k} l={l}: streaming {args.frames} frames at {args.fps} fps ...",
                  flush=True)
            rows.append(run_one(scene, k, l, args.fps, args.frames, args.queries, logs))
    table = markdown(rows)
    (args.out / "node_dds.md").write_text(table)
    (args.out / "node_dds.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "node_dds.png")
    print(f"\n{args.queries} standing queries, {scene.width}x{scene.height} synthetic frames, "
          f"oracle pointer + classical segmenter, CPU\n")
    print(table)
    print(f"wrote {args.out / 'node_dds.md'}, {args.out / 'node_dds.png'}, "
          f"{args.out / 'node_dds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
