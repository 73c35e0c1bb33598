"""Streaming SAM2 backend vs. the stock SAM2VideoPredictor: time per frame and resident memory.

    python benchmarks/sam2_stream.py [--checkpoints 100 1000 3000] [--image-size 64]

Both run on the same frames (a synthetic video written once as JPEG files), the same prompt
(one point per object on frame 0) and the same seeded random weights, each in its own
process so that resident memory is not shared. The stock predictor is given the frames as a
video (``init_state`` on the JPEG folder: it loads every frame up front) and propagates with
``propagate_in_video``; the streaming backend reads one JPEG per frame and calls
``Sam2Tracker.forward``. A slimmed configuration keeps long runs to minutes on a CPU: small
input size and one memory-attention layer by default (the memory-bank logic does not depend on
the model's width). Prints, at each checkpoint, the mean propagation time per frame since the
previous checkpoint and the resident memory (VmRSS), for both and their ratio (stock / ours).
Figures only: nothing here asserts anything.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import rss_mib  # noqa: E402




def disk_x(t: int, width: int) -> int:
    """Centre x of the disk in frame t: it bounces left-right (no jumps on long runs)."""
    span = width - 40
    return 20 + abs((2 * t) % (2 * span) - span)


def frame_image(t: int, width: int, height: int) -> np.ndarray:
    """Frame t: a red disk bouncing left-right over a textured background (RGB uint8)."""
    rng = np.random.default_rng(t)
    img = np.clip(np.array([90, 120, 80]) + rng.normal(0, 8, (height, width, 3)), 0, 255)
    img = img.astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    img[(xx - disk_x(t, width)) ** 2 + (yy - height // 2) ** 2 < (height // 6) ** 2] = \
        (220, 40, 40)
    return img


def prompt_points(width: int, height: int, objects: int) -> list[tuple[float, float]]:
    """One point per object on frame 0: the first on the disk, the others spread on top."""
    pts = [(float(disk_x(0, width)), height / 2)]
    pts += [(width * (k + 0.5) / objects, height * 0.2) for k in range(1, objects)]
    return pts


def write_video(folder: str, frames: int, width: int, height: int) -> None:
    from PIL import Image

    for t in range(frames):
        Image.fromarray(frame_image(t, width, height)).save(
            os.path.join(folder, f"{t:05d}.jpg"), quality=95)


def build(args: argparse.Namespace):
    from videomolmo_ros.segment.sam2_backend import Sam2Segmenter

    overrides = [f"++model.memory_attention.num_layers={args.mem_layers}"] \
        if args.mem_layers else []
    return Sam2Segmenter(args.config, random_weights=True, seed=0, image_size=args.image_size,
                         device=args.device, overrides=overrides)


def run_child(args: argparse.Namespace) -> dict:
    """One backend over the JPEG folder; returns per-checkpoint times and RSS."""
    import torch
    from PIL import Image

    from videomolmo_ros.core.frame import Frame

    torch.set_num_threads(args.threads)
    checkpoints = sorted(args.checkpoints)
    total = checkpoints[-1]
    paths = [os.path.join(args.folder, f"{t:05d}.jpg") for t in range(total)]
    seg = build(args)
    start_rss = rss_mib()
    points = prompt_points(args.width, args.height, args.objects)
    rows, times = [], []
    t_start = time.perf_counter()

    def checkpoint(done: int) -> None:
        if done in checkpoints:
            previous = rows[-1]["frames"] if rows else 1  # frame 0 is the prompt
            since = times[-(done - previous):]  # (wall, cpu) seconds per frame
            wall, cpu = (1000 * float(np.mean([x[i] for x in since])) for i in (0, 1))
            rows.append({"frames": done, "ms": wall, "cpu_ms": cpu, "rss": rss_mib()})

    if args.child == "ours":
        tracker = seg.new_tracker()
        first = np.asarray(Image.open(paths[0]).convert("RGB"))
        tracker.prompt(Frame("cam", 0, 0, first), {k: np.array([p]) for k, p in
                                                   enumerate(points)})
        init_s = time.perf_counter() - t_start
        for t in range(1, total):
            image = np.asarray(Image.open(paths[t]).convert("RGB"))  # the camera's frame
            t0, c0 = time.perf_counter(), time.process_time()
            tracker.forward(Frame("cam", t, t, image))
            times.append((time.perf_counter() - t0, time.process_time() - c0))
            checkpoint(t + 1)
    else:
        model = seg.model
        with torch.inference_mode():
            state = model.init_state(args.folder)  # loads every frame of the video
            for k, p in enumerate(points):
                model.add_new_points_or_box(state, 0, k, points=np.array([p], np.float32),
                                            labels=np.array([1], np.int32))
        init_s = time.perf_counter() - t_start
        stream = model.propagate_in_video(state, start_frame_idx=0)
        t0, c0 = time.perf_counter(), time.process_time()
        for index, _, video_masks in stream:
            _ = (video_masks > 0.0).cpu().numpy()
            if index > 0:  # frame 0 is the prompt's output, not a propagation
                times.append((time.perf_counter() - t0, time.process_time() - c0))
            checkpoint(index + 1)
            t0, c0 = time.perf_counter(), time.process_time()
    return {"rows": rows, "init_s": init_s, "start_rss": start_rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[100, 300],
                        help="frame counts at which to report (the largest is the run length)")
    parser.add_argument("--config", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--mem-layers", type=int, default=1,
                        help="memory-attention layers (0: the config's own, 4)")
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=("ours", "stock"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.checkpoints) < 2:
        parser.error("checkpoints must be >= 2 frames")
    if args.child:
        print(json.dumps(run_child(args)))
        return 0

    total = max(args.checkpoints)
    with tempfile.TemporaryDirectory() as folder:
        write_video(folder, total, args.width, args.height)
        results = {}
        for which in ("ours", "stock"):
            cmd = [sys.executable, __file__, "--child", which, "--folder", folder] + \
                (argv if argv is not None else sys.argv[1:])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-4000:])
                return done.returncode
            results[which] = json.loads(done.stdout.strip().splitlines()[-1])

    ours, stock = results["ours"], results["stock"]
    print(f"SAM2 streaming vs stock: {args.config}, {args.image_size} px input, "
          f"memory-attention layers: {args.mem_layers or 'config'}, {args.objects} object(s), "
          f"{args.width}x{args.height} frames, {args.device}, {args.threads} thread(s), "
          "random weights")
    print(f"start-up (build excluded): ours {ours['init_s']:.2f} s (prompt), "
          f"stock {stock['init_s']:.2f} s (init_state loading {total} frames + prompt); "
          f"RSS after build: ours {ours['start_rss']:.0f} MiB, "
          f"stock {stock['start_rss']:.0f} MiB")
    head = (f"{'frames':>7} | {'cpu ms/frame ours':>17} {'stock':>6} {'ratio':>5} | "
            f"{'wall ms ours':>12} {'stock':>6} | "
            f"{'RSS MiB ours':>12} {'stock':>6} {'ratio':>5} | {'growth ours':>11} {'stock':>6}")
    print(head)
    print("-" * len(head))
    for a, b in zip(ours["rows"], stock["rows"]):
        ga, gb = a["rss"] - ours["start_rss"], b["rss"] - stock["start_rss"]
        print(f"{a['frames']:>7} | {a['cpu_ms']:>17.1f} {b['cpu_ms']:>6.1f} "
              f"{b['cpu_ms'] / a['cpu_ms']:>5.2f} | {a['ms']:>12.1f} {b['ms']:>6.1f} | "
              f"{a['rss']:>12.0f} {b['rss']:>6.0f} {b['rss'] / a['rss']:>5.2f} | "
              f"{ga:>11.0f} {gb:>6.0f}")
    print("ms/frame: mean propagation time per frame since the previous checkpoint, as process "
          "CPU time (robust to other load on shared cores) and wall time; ratio = stock / ours; "
          "growth = RSS minus RSS after building the model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
