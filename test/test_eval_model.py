"""evaluate with the VideoMolmo pointer: a tiny random-weight checkpoint through the real loader.

Random weights point at nothing in particular; what is checked is the path from the command
line through the model, the engine and the scoring into the tables.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.data.synthetic import generate_scene, write_scene  # noqa: E402
from videomolmo_ros.eval.evaluate import main  # noqa: E402
from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.loading import save_release_layout  # noqa: E402
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402


def test_evaluate_with_a_tiny_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "ckpt"
    save_release_layout(VideoMolmoModel(VideoMolmoConfig.tiny()).eval(), checkpoint)
    tiny_tokenizer().save_pretrained(checkpoint)
    scene = generate_scene(2, num_frames=4, max_expressions_per_kind=1)
    write_scene(scene, tmp_path / "data" / "s")
    out = tmp_path / "out"
    code = main(["--dataset", "synthetic", "--root", str(tmp_path / "data"), "--pointer",
                 "videomolmo", "--model", str(checkpoint), "--max-new-tokens", "4",
                 "--segmenter", "classical", "--k", "3", "--l", "2", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    data = json.loads((out / "summary.json").read_text())
    assert data["settings"]["pointer"] == "videomolmo"
    summary = data["summary"]
    assert summary["videos"] == 1 and summary["frames"] == 4
    for kind in ("fused", "causal"):
        assert 0.0 <= summary[kind]["JF"] <= 1.0
    assert summary["points"] is not None and 0.0 <= summary["points"]["F1"] <= 1.0
    assert "VideoMolmo (ckpt) + classical" in (out / "summary.md").read_text()
