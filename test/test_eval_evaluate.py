"""The evaluate command end to end on a tiny synthetic export (mask oracle + classical)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import videomolmo_ros.eval.evaluate as evaluate_module
from videomolmo_ros.data.synthetic import (ObjectSpec, SceneConfig, generate_scene, make_scene,
                                           write_scene)
from videomolmo_ros.eval.datasets import open_dataset
from videomolmo_ros.eval.datasets.base import Expression
from videomolmo_ros.eval.evaluate import main, video_result_path
from videomolmo_ros.eval.runner import expression_passes, run_video
from videomolmo_ros.eval.scoring import ExpressionScorer, summarize
from videomolmo_ros.pointers.mask_oracle import MaskOraclePointer
from videomolmo_ros.segment.base import MaskTracker, Segmenter
from videomolmo_ros.stream import EngineConfig

SCENES = ("scene_a", "scene_b")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    for seed, name in zip((1, 4), SCENES):
        write_scene(generate_scene(seed, num_frames=12, max_expressions_per_kind=5), root / name)
    return root


@pytest.fixture(scope="module")
def run(export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    code = main(["--dataset", "synthetic", "--root", str(export), "--oracle-points",
                 "--segmenter", "classical", "--k", "5", "--l", "2", "--tau", "0.7",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def _args(export: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "synthetic", "--root", str(export), "--pointer", "oracle",
            "--segmenter", "classical", "--k", "5", "--l", "2", "--out", str(out),
            "--no-progress", *extra]


def test_summary_numbers(run):
    data = json.loads((run / "summary.json").read_text())
    summary = data["summary"]
    assert summary["videos"] == 2 and summary["frames"] == 24 and summary["expressions"] > 10
    for kind in ("fused", "causal"):
        for metric in ("J", "F", "JF"):
            assert 0.0 <= summary[kind][metric] <= 1.0
        assert summary[kind]["JF"] > 0.7  # easy scenes, ground-truth points
    assert summary["points"]["F1"] > 0.9 and 0.0 <= summary["points"]["P"] <= 1.0
    assert summary["counting"]["keyframes"] > 0
    assert 0.0 <= summary["counting"]["EMA"] <= 1.0 and summary["counting"]["MAE"] >= 0.0
    assert data["settings"]["k"] == 5 and data["settings"]["pointer"] == "oracle"
    video = json.loads(video_result_path(run, "scene_a").read_text())
    assert video["num_frames"] == 12
    for expression in video["expressions"]:
        assert expression["frames_scored"] == 12
        assert expression["points"]["keyframes"] == 3  # frames 0, 5, 10


def _tables(markdown: str) -> list[list[str]]:
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_markdown_tables_are_well_formed(run):
    summary_md = (run / "summary.md").read_text()
    assert summary_md.startswith("## Synthetic")
    assert "k=5, l=2, tau=0.7" in summary_md
    tables = _tables(summary_md) + _tables((run / "videos.md").read_text())
    assert len(tables) == 4  # J/F/J&F, points, counting, per video
    for lines in tables:
        widths = {line.count("|") for line in lines}
        assert len(widths) == 1, lines  # same number of columns on every row
        assert all(line.endswith("|") for line in lines)
        assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    header = tables[0][0]
    assert "J&F" in header and "| J |" in header and "| F |" in header
    assert "fused masks" in tables[0][2] and "causal masks" in tables[0][3]
    assert len(tables[-1]) == 2 + len(SCENES)


def test_resume_skips_finished_videos(run, export, monkeypatch):
    calls = []
    real = evaluate_module.run_video

    def counting_run_video(sample, *args, **kwargs):
        calls.append(sample.video_id)
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "run_video", counting_run_video)
    first = video_result_path(run, "scene_a")
    second = video_result_path(run, "scene_b")
    stamp = first.stat().st_mtime_ns
    before = json.loads((run / "summary.json").read_text())["summary"]
    assert main(_args(export, run)) == 0
    assert calls == [] and first.stat().st_mtime_ns == stamp  # nothing redone
    second.unlink()
    assert main(_args(export, run)) == 0
    assert calls == ["scene_b"] and first.stat().st_mtime_ns == stamp
    after = json.loads((run / "summary.json").read_text())["summary"]
    assert after["fused"]["JF"] == pytest.approx(before["fused"]["JF"])


def test_other_settings_into_the_same_out_are_refused(run, export, capsys):
    assert main(_args(export, run, "--tau", "0.5")) == 2
    assert "other settings" in capsys.readouterr().err


def test_unknown_segmenter_is_a_clear_error(export, tmp_path, capsys):
    code = main(["--dataset", "synthetic", "--root", str(export), "--oracle-points",
                 "--segmenter", "no-such-backend", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown segmenter backend 'no-such-backend'" in err and "classical" in err


def test_limit_max_frames_and_saved_masks(export, tmp_path):
    out = tmp_path / "o"
    assert main(_args(export, out, "--limit", "1", "--max-frames", "3", "--save-masks")) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["videos"] == 1 and summary["frames"] == 3
    saved = sorted((out / "masks" / "scene_a").glob("*/*.png"))
    expressions = len(json.loads(video_result_path(out, "scene_a").read_text())["expressions"])
    assert len(saved) == 3 * expressions
    assert not video_result_path(out, "scene_b").exists()


def test_expression_passes_keep_texts_distinct():
    expressions = [Expression(str(i), text) for i, text in
                   enumerate(["a", "b", "a", "c", "a ", "d"])]
    passes = expression_passes(expressions, size=3)
    assert [[e.exp_id for e in p] for p in passes] == [["0", "1", "3"], ["2", "5"], ["4"]]


def test_scorer_and_summary_protocol():
    scorer = ExpressionScorer("0", "x", counting=True)
    gt = np.zeros((8, 8), dtype=bool)
    gt[2:6, 2:6] = True
    scorer.add_mask("fused", 0, gt, gt)
    scorer.add_mask("fused", 1, None, gt)  # missing prediction = empty
    scorer.add_mask("causal", 0, gt, gt)
    scorer.add_mask("causal", 1, gt, gt)
    scorer.add_points([(3.0, 3.0), (7.0, 7.0)], [gt, np.zeros_like(gt)], gt_count=1)
    result = scorer.result()
    assert result["fused"]["J"] == pytest.approx(0.5) and result["causal"]["JF"] == 1.0
    assert result["points"]["P"] == 0.5 and result["points"]["R"] == 1.0
    summary = summarize([{"num_frames": 2, "expressions": [result]}])
    assert summary.fused["JF"] == pytest.approx(0.5)
    assert summary.counting == {"EMA": 0.0, "MAE": 1.0, "keyframes": 1}


class _ReplayTracker(MaskTracker):
    """A perfect segmenter: the objects under the prompt points, from the ground truth."""

    def __init__(self, sample, objects):
        self.sample, self.objects, self.tracks = sample, objects, {}

    def _masks(self, frame):
        t = self.sample.index_for_stamp(frame.stamp_ns)
        out = {}
        for query, ids in self.tracks.items():
            mask = np.zeros((frame.height, frame.width), dtype=bool)
            for o in ids:
                mask |= self.sample.object_mask(t, o)
            out[query] = mask
        return out

    def prompt(self, frame, points):
        t = self.sample.index_for_stamp(frame.stamp_ns)
        self.tracks = {q: [o for o in self.objects if any(
            self.sample.object_mask(t, o)[int(y), int(x)] for x, y in pts)]
            for q, pts in points.items()}
        return self._masks(frame)

    def forward(self, frame):
        return self._masks(frame)

    def backward(self, keyframe, key_masks, frames):
        return [self._masks(frame) for frame in frames]


class _ReplaySegmenter(Segmenter):
    def __init__(self, sample):
        self.sample = sample
        self.objects = sorted({o for e in sample.expressions for o in e.object_ids})

    def new_tracker(self):
        return _ReplayTracker(self.sample, self.objects)


def test_perfect_segmenter_scores_one(tmp_path):
    """Plumbing check: with ground-truth points and a ground-truth segmenter, every frame's
    fused and causal masks match, so the engine's events line up with the right frames."""
    specs = [ObjectSpec("red", "circle", "large", "plain", "static", (80.0, 120.0)),
             ObjectSpec("blue", "square", "large", "plain", "right", (150.0, 60.0), speed=3.0)]
    write_scene(make_scene(SceneConfig(num_frames=13, seed=0), specs), tmp_path / "s")
    sample = open_dataset("synthetic", tmp_path).sample("s")
    result = run_video(sample, lambda s, e: MaskOraclePointer(s, e), _ReplaySegmenter(sample),
                       EngineConfig(k=5, l=2))
    assert result["expressions"] and not result["warnings"]
    for expression in result["expressions"]:
        assert expression["frames_scored"] == 13
        assert expression["fused"] == {"J": 1.0, "F": 1.0, "JF": 1.0}
        assert expression["causal"] == {"J": 1.0, "F": 1.0, "JF": 1.0}
        assert expression["points"]["F1"] == 1.0
