"""The demo: a synthetic video played into the running pointing node over real DDS.

It starts the node (its own process, config/pointing.yaml), publishes the frames one by one
(each waits until the node has processed the previous one, so none is dropped), asks queries
through the ~/point service, collects the points, causal and fused masks, and writes an overlay
video, a contact sheet PNG and a JSON of results; it prints J&F of the fused and the causal
masks against the ground truth.

Who points: the oracle (default: the scene's ground-truth points, which shows the mask stage
alone), or VideoMolmo (``--pointer videomolmo``): the small model shipped with the package, or
the checkpoint ``--model DIR`` (e.g. one trained with ``python -m videomolmo_ros.train``); it
takes any typed query, scored when it is one of the scene's expressions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from videomolmo_ros.core.metrics import j_and_f
from videomolmo_ros.core.points import Point
from videomolmo_ros.data.synthetic import SceneConfig, make_scene
from videomolmo_ros.node import stamp_to_ns
from videomolmo_ros.overlay import draw_overlay
from videomolmo_ros.ros_client import (DEFAULT_CONFIG, NodeProcess, PointingClient,
                                       require_loopback_dds, wait_for)

IMAGE_TOPIC = "/demo/camera/image_raw"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    parser.add_argument("--frames", type=int, default=41,
                        help="frames to play (the last keyframe's window needs the next one)")
    parser.add_argument("--k", type=int, default=10, help="keyframe interval")
    parser.add_argument("--query", action="append", default=[],
                        help="a query (repeatable); default: one of each kind the scene has")
    parser.add_argument("--pointer", default="oracle", choices=("oracle", "videomolmo"),
                        help="who points: the ground-truth oracle (default) or the network")
    parser.add_argument("--model", default="",
                        help="checkpoint directory (release layout) for --pointer videomolmo "
                             "(default: the small model shipped in videomolmo_ros/weights)")
    parser.add_argument("--segmenter", default="auto", choices=("auto", "classical", "sam2"),
                        help="mask backend (auto: sam2 when --sam2-checkpoint is given)")
    parser.add_argument("--sam2-checkpoint", default="", help="SAM2 .pt file")
    parser.add_argument("--sam2-config", default="sam2.1_hiera_t", help="its SAM2 config")
    parser.add_argument("--sam2-image-size", type=int, default=0,
                        help="SAM2 input size (0: the config's 1024)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    return parser.parse_args(argv)


@dataclass
class DemoQuery:
    """A query to ask, with the scene's expression it matches (None: no ground truth)."""

    text: str
    expression: Any = None

    @property
    def kind(self) -> str:
        return self.expression.kind if self.expression is not None else "typed"


def pick_queries(scene, wanted: list[str], pointer: str = "oracle") -> list[DemoQuery]:
    """What to ask: the queries named (the oracle knows only the scene's expressions; the
    network takes any text), else one expression of each kind."""
    if wanted:
        by_text = {e.text.lower(): e for e in scene.expressions}
        missing = [q for q in wanted if q.strip().lower() not in by_text]
        if missing and pointer == "oracle":
            known = "\n  ".join(e.text for e in scene.expressions)
            raise SystemExit(f"the oracle pointer only knows this scene's expressions; "
                             f"unknown: {missing}\nknown:\n  {known}")
        return [DemoQuery(q.strip(), by_text.get(q.strip().lower())) for q in wanted]
    # One of each kind, naming objects no earlier choice names: a label image holds one query
    # per pixel, so queries that share an object would hide each other in it.
    chosen, taken = [], set()
    for kind in ("attribute", "spatial", "motion", "counting"):
        for expression in scene.expressions:
            objects = set(expression.object_ids)
            if expression.kind == kind and objects and not objects & taken:
                chosen.append(DemoQuery(expression.text, expression))
                taken |= objects
                break
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_loopback_dds()
    scene = make_scene(SceneConfig(seed=args.seed, num_frames=max(args.frames, 2)))
    frames = min(args.frames, len(scene.frames))
    expressions = pick_queries(scene, args.query, args.pointer)
    args.out.mkdir(parents=True, exist_ok=True)
    segmenter = args.segmenter if args.segmenter != "auto" else (
        "sam2" if args.sam2_checkpoint else "classical")
    if args.pointer == "oracle":
        print("pointer: ORACLE — it replays the synthetic scene's ground-truth points on "
              f"keyframes; masks: the {segmenter} segmenter.")
    else:
        print(f"pointer: VideoMolmo ({args.model or 'the shipped small model'}); masks: the "
              f"{segmenter} segmenter.")
    log_path = args.out / "node.log"
    node = NodeProcess(DEFAULT_CONFIG, remappings={"camera/image_raw": IMAGE_TOPIC},
                       parameters={"pointer.backend": args.pointer, "model.path": args.model,
                                   "oracle.scene_seed": args.seed, "k": args.k,
                                   "segmenter.backend": args.segmenter,
                                   "sam2.checkpoint": args.sam2_checkpoint,
                                   "sam2.config": args.sam2_config,
                                   "sam2.image_size": args.sam2_image_size,
                                   "oracle.scene_config": json.dumps(
                                       {"num_frames": max(args.frames, 2)})},
                       log_path=log_path)
    client = PointingClient(IMAGE_TOPIC)
    try:
        if not client.wait_for_node(120, alive=node.alive):
            raise SystemExit(f"the node did not come up; its log ({log_path}) ends:\n"
                             + "\n".join(log_path.read_text().splitlines()[-5:]))
        started = time.monotonic()
        if not client.publish_and_wait(scene.frames[0], scene.stamp_ns(0)):
            raise SystemExit(f"the node processed no frame; its log: {log_path}")
        futures = [client.ask(e.text, track=True) for e in expressions]
        for expression in expressions:  # registered before the next keyframe comes
            client.wait_for_query(expression.text)
        for t in range(1, frames):
            if not client.publish_and_wait(scene.frames[t], scene.stamp_ns(t)):
                print(f"warning: frame {t} was not processed in time", file=sys.stderr)
        wait_for(lambda: all(f.done() for f in futures), 10)
        elapsed = time.monotonic() - started
        answers = [f.result() if f.done() else None for f in futures]
        wait_for(lambda: False, 0.5)  # let the last fused masks arrive
        report = evaluate(scene, frames, expressions, answers, client)
        report["frames_played"] = frames
        report["seconds"] = round(elapsed, 2)
        write_outputs(scene, frames, expressions, answers, client, args.out, report)
    finally:
        client.close()
        node.stop()
    print_report(report, args.out)
    return 0


def evaluate(scene, frames: int, expressions, answers, client) -> dict:
    """J&F of fused and causal masks per query, over the frames that have both."""
    queries = []
    for expression, answer in zip(expressions, answers):
        entry = {"query": expression.text, "kind": expression.kind,
                 "ground_truth": expression.expression is not None,
                 "success": bool(answer and answer.success),
                 "message": answer.message if answer else "no answer"}
        if answer and answer.success:
            entry.update(query_id=answer.query_id, label=answer.label, count=answer.count,
                         keyframe_stamp_ns=stamp_to_ns(answer.keyframe_stamp),
                         points=[[round(p.x, 1), round(p.y, 1)] for p in answer.points])
            for kind in ("causal", "fused"):
                scores = []
                for t in range(frames):
                    stamp = scene.stamp_ns(t)
                    fused = client.masks["fused"].get(stamp)
                    causal = client.masks["causal"].get(stamp)
                    if fused is None or causal is None:
                        continue
                    if expression.expression is None:
                        break  # a typed query the scene has no ground truth for
                    label_map = (fused if kind == "fused" else causal)[0]
                    truth = np.any(scene.masks[t][list(expression.expression.object_ids)],
                                   axis=0)
                    scores.append(j_and_f(label_map == answer.label, truth))
                if scores:
                    j, f, jf = np.mean(scores, axis=0)
                    entry[kind] = {"J": round(float(j), 4), "F": round(float(f), 4),
                                   "J&F": round(float(jf), 4), "frames": len(scores)}
        queries.append(entry)
    return {"queries": queries}


def write_outputs(scene, frames: int, expressions, answers, client, out: Path,
                  report: dict) -> None:
    """overlay.mp4 (fused masks, keyframe points as stars), overlay_sheet.png, results.json."""
    captions = {a.label: e.text for e, a in zip(expressions, answers) if a and a.success}
    by_label_points: dict[int, list[Point]] = {}
    keyframe_points = {}
    for msg, _ in client.points:
        keyframe_points.setdefault(stamp_to_ns(msg.header.stamp), {})[msg.label] = [
            Point(p.x, p.y) for p in msg.points]
    height, width = scene.frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out / "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                             float(scene.config.fps), (width, height))
    sheet = []
    for t in range(frames):
        stamp = scene.stamp_ns(t)
        fused = client.masks["fused"].get(stamp)
        by_label_points.update(keyframe_points.get(stamp, {}))
        picture = draw_overlay(scene.frames[t], fused[0] if fused else None, by_label_points,
                               captions)
        cv2.putText(picture, f"t={t} {'fused' if fused else 'no fused mask'}",
                    (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        if t % max(1, frames // 8) == 0 and len(sheet) < 8:
            sheet.append(picture)
    writer.release()
    while len(sheet) % 4:
        sheet.append(np.zeros_like(sheet[0]))
    rows = [np.concatenate(sheet[i:i + 4], axis=1) for i in range(0, len(sheet), 4)]
    cv2.imwrite(str(out / "overlay_sheet.png"),
                cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    (out / "results.json").write_text(json.dumps(report, indent=2))


def print_report(report: dict, out: Path) -> None:
    print(f"\nplayed {report['frames_played']} frames in {report['seconds']} s over DDS")
    print(f"{'query':<42} {'kind':<10} {'pts':>3}  {'fused J&F':>9}  {'causal J&F':>10}")
    for q in report["queries"]:
        if not q["success"]:
            print(f"{q['query'][:42]:<42} {q['kind']:<10} failed: {q['message']}")
            continue
        fused, causal = (f"{q[kind]['J&F']:.3f}" if kind in q else "n/a"
                         for kind in ("fused", "causal"))
        print(f"{q['query'][:42]:<42} {q['kind']:<10} {q['count']:>3}  {fused:>9}  "
              f"{causal:>10}")
    print(f"\nwrote {out / 'overlay.mp4'}, {out / 'overlay_sheet.png'}, {out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
