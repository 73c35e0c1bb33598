"""``python -m videomolmo_ros.eval.evaluate``: the paper's metrics of the streaming engine on a
dataset, with a chosen pointer, segmenter, k, l and tau.

Writes under ``--out``:

    run.json                    the settings (a rerun must use the same ones: it resumes)
    videos/<video id>.json      per-video results, written as each video finishes
    videos.md                   per-video table
    summary.json / summary.md   dataset (and per-group) J, F, J&F for fused and causal masks,
                                point P/R/F1, counting EMA/MAE; Markdown in the paper's shape
    masks/<video>/<exp_id>/<frame>.png   with --save-masks: fused masks, 0/255. This is the
                                submission layout of MeViS (zip the video folders) and of
                                Ref-YouTube-VOS (zip them under Annotations/); both valid
                                splits have no public ground truth and need it.

Resumable: videos whose result file exists are skipped, so an interrupted run continues where
it stopped. ``--oracle-points`` (= ``--pointer oracle``) replaces the model with ground-truth
points from the masks (``pointers/mask_oracle.py``) and so scores the mask stage alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from videomolmo_ros.backends import (BackendError, PointerSettings, SegmenterSettings,
                                     make_pointer, make_segmenter)
from videomolmo_ros.eval.datasets import TITLES, DatasetError, canonical_name, open_dataset
from videomolmo_ros.eval.datasets.base import Expression, VideoSample
from videomolmo_ros.eval.report import summary_markdown, videos_markdown
from videomolmo_ros.eval.runner import PointerFactory, expression_passes, run_video
from videomolmo_ros.eval.scoring import summarize
from videomolmo_ros.model.shipped import model_path_or_shipped
from videomolmo_ros.stream import EngineConfig

SETTINGS_FILE = "run.json"
# Settings that change the numbers: a rerun into the same --out must match them.
_RESULT_KEYS = ("dataset", "split", "pointer", "model", "segmenter", "k", "l", "tau",
                "max_frames", "min_visible_pixels")


class EvaluationError(RuntimeError):
    """The run cannot start or continue; the text says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m videomolmo_ros.eval.evaluate",
                                     description="Score the streaming engine on a dataset: "
                                     "J, F, J&F, point P/R/F1, counting EMA/MAE.")
    parser.add_argument("--dataset", required=True,
                        help="ref-davis17, ref-youtube-vos, mevis, reasonvos, vpos-bench, "
                             "synthetic")
    parser.add_argument("--root", required=True, type=Path, help="dataset root directory")
    parser.add_argument("--split", default=None, help="split (default: the dataset's "
                        "evaluation split) or VPoS-Bench subset")
    parser.add_argument("--pointer", default="videomolmo", choices=("oracle", "videomolmo"))
    parser.add_argument("--oracle-points", action="store_true",
                        help="ground-truth points from the masks: score the mask stage alone")
    parser.add_argument("--model", default="", help="checkpoint dir or HF repo id (videomolmo; "
                        "default: the small model shipped in videomolmo_ros/weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--quantization", default="", help='"", "fp4" or "nf4"')
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--segmenter", default="classical",
                        help="mask backend, as backends.make_segmenter names it")
    parser.add_argument("--sam2-checkpoint", default="", help="SAM2 .pt file (sam2/auto)")
    parser.add_argument("--sam2-config", default="sam2.1_hiera_t", help="its SAM2 config")
    parser.add_argument("--sam2-image-size", type=int, default=0,
                        help="SAM2 input size (0: the config's 1024)")
    parser.add_argument("--sam2-device", default="cpu")
    parser.add_argument("--k", type=int, default=10, help="keyframe spacing")
    parser.add_argument("--l", type=int, default=4, help="history length of the temporal module")
    parser.add_argument("--tau", type=float, default=0.7, help="fusion IoU threshold")
    parser.add_argument("--min-visible-pixels", type=int, default=20,
                        help="oracle: objects smaller than this get no point")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N videos")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="use at most the first N frames of each video (quick runs)")
    parser.add_argument("--save-masks", action="store_true",
                        help="write fused masks as PNG (needed for splits without ground truth)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings as stored in run.json."""
    pointer = "oracle" if args.oracle_points else args.pointer
    return {"dataset": canonical_name(args.dataset), "split": args.split, "pointer": pointer,
            "model": model_path_or_shipped(args.model) if pointer == "videomolmo" else "",
            "segmenter": args.segmenter, "sam2_checkpoint": args.sam2_checkpoint,
            "sam2_config": args.sam2_config, "sam2_image_size": args.sam2_image_size,
            "k": args.k, "l": args.l, "tau": args.tau,
            "max_frames": args.max_frames, "min_visible_pixels": args.min_visible_pixels,
            "root": str(args.root)}


def model_label(settings: dict[str, Any]) -> str:
    """How the run is named in the tables."""
    pointer = "oracle points" if settings["pointer"] == "oracle" else \
        f"VideoMolmo ({Path(settings['model']).name or settings['model']})"
    return f"{pointer} + {settings['segmenter']}"


def settings_line(settings: dict[str, Any]) -> str:
    """The engine settings, for the tables' captions."""
    line = f"k={settings['k']}, l={settings['l']}, tau={settings['tau']:g}"
    if settings.get("max_frames"):
        line += f", first {settings['max_frames']} frames per video"
    return line


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    """EvaluationError if ``out`` holds a run with other settings (resume needs equality)."""
    path = out / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = [k for k in _RESULT_KEYS if previous.get(k) != settings.get(k)]
        if changed:
            raise EvaluationError(
                f"{out} holds a run with other settings ({', '.join(changed)}: "
                f"{[previous.get(k) for k in changed]} vs {[settings.get(k) for k in changed]}); "
                "use another --out, or delete it to start over")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def video_result_path(out: Path, video_id: str) -> Path:
    """Where a video's result lives (the id %-quoted: VPoS-Bench ids contain '/')."""
    return out / "videos" / f"{quote(video_id, safe='')}.json"


def load_result(path: Path) -> dict[str, Any] | None:
    """A finished video's result, or None if absent or unreadable (then it is redone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pointer_factory(settings: dict[str, Any], args: argparse.Namespace) -> PointerFactory:
    """Per pass: a fresh mask oracle over the pass' expressions, or the one loaded model."""
    if settings["pointer"] == "oracle":
        from videomolmo_ros.pointers.mask_oracle import MaskOraclePointer

        def oracle(sample: VideoSample, expressions: Sequence[Expression]):
            return MaskOraclePointer(sample, expressions,
                                     min_visible_pixels=settings["min_visible_pixels"])
        return oracle
    model = make_pointer(PointerSettings(
        backend="videomolmo", model_path=settings["model"], model_dtype=args.dtype,
        model_device=args.device, model_quantization=args.quantization,
        max_new_tokens=args.max_new_tokens, history_frames=args.l))
    return lambda sample, expressions: model


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary JSON."""
    settings = settings_of(args)
    try:
        dataset = open_dataset(settings["dataset"], args.root, args.split)
    except DatasetError as error:
        raise EvaluationError(str(error)) from error
    try:
        config = EngineConfig(k=args.k, l=args.l, tau=args.tau)
    except ValueError as error:
        raise EvaluationError(str(error)) from error
    segmenter = make_segmenter(args.segmenter, SegmenterSettings(  # BackendError if unknown
        sam2_config=args.sam2_config, sam2_checkpoint=args.sam2_checkpoint,
        sam2_image_size=args.sam2_image_size, sam2_device=args.sam2_device))
    ids = dataset.video_ids()[:args.limit] if args.limit is not None else dataset.video_ids()
    if not ids:
        raise EvaluationError(f"{settings['dataset']}: no videos under {args.root}")
    out: Path = args.out
    _check_resume(out, settings)
    todo = [v for v in ids if load_result(video_result_path(out, v)) is None]
    factory = pointer_factory(settings, args) if todo else None  # may load the model
    if not (out / SETTINGS_FILE).is_file():
        write_json(out / SETTINGS_FILE, settings)
    masks_dir = out / "masks" if args.save_masks else None
    progress = _progress(len(ids), settings["dataset"], args.no_progress)
    progress.update(len(ids) - len(todo))
    for video_id in todo:
        sample = dataset.sample(video_id)
        if not sample.has_masks:
            if settings["pointer"] == "oracle":
                raise EvaluationError(f"{video_id}: no ground-truth masks in this split, so "
                                      "there are no oracle points")
            if masks_dir is None:
                raise EvaluationError(f"{video_id}: no ground-truth masks in this split; pass "
                                      "--save-masks to write a submission instead")
        frames = _planned_frames(sample, config, args.max_frames)
        inner = _progress(frames, video_id, args.no_progress, unit="frame", leave=False)
        result = run_video(sample, factory, segmenter, config, max_frames=args.max_frames,
                           save_masks=masks_dir, on_frame=lambda: inner.update(1))
        inner.close()
        write_json(video_result_path(out, video_id), result)
        fused = [e["fused"]["JF"] for e in result["expressions"] if e.get("fused")]
        if fused:
            progress.set_postfix_str(f"last J&F {100 * sum(fused) / len(fused):.1f}")
        progress.update(1)
    progress.close()
    return write_reports(out, settings, ids)


def write_reports(out: Path, settings: dict[str, Any], ids: Sequence[str]) -> dict[str, Any]:
    """summary.json/.md and videos.md from the per-video results of ``ids``."""
    videos = [r for r in (load_result(video_result_path(out, v)) for v in ids) if r is not None]
    scored = [v for v in videos if v.get("has_ground_truth", True)]
    summary = summarize(scored).to_json()
    groups: dict[str, Any] = {}
    for name in sorted({v.get("group", "") for v in scored}):
        groups[name or "all"] = summarize(v for v in scored if v.get("group", "") == name).to_json()
    title = TITLES.get(settings["dataset"], settings["dataset"])
    if settings.get("split"):
        title += f" ({settings['split']})"
    label = model_label(settings)
    data = {"settings": settings, "model": label, "summary": summary, "groups": groups}
    write_json(out / "summary.json", data)
    write_text(out / "summary.md",
               summary_markdown(title, label, summary, groups, settings_line(settings)))
    write_text(out / "videos.md", videos_markdown(title, videos))
    return data


def _planned_frames(sample: VideoSample, config: EngineConfig, max_frames: int | None) -> int:
    frames = sample.num_frames if max_frames is None else min(max_frames, sample.num_frames)
    passes = len(expression_passes([e for e in sample.expressions if e.text.strip()],
                                   config.max_queries))
    return frames * passes


class _NoProgress:
    """Stands in for tqdm with --no-progress."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, disabled: bool, unit: str = "video", leave: bool = True):
    if disabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, 2 on a usage, dataset or backend error."""
    args = build_parser().parse_args(argv)
    try:
        data = evaluate(args)
    except (BackendError, EvaluationError, DatasetError) as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    print((args.out / "summary.md").read_text())
    return 0 if data else 1


if __name__ == "__main__":
    raise SystemExit(main())
