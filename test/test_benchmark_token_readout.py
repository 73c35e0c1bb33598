"""benchmarks/token_readout.py runs on a real (tiny, random-weight) checkpoint and prints every
read-out score; a directory without a model is a clear error, not a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model.loading import save_release_layout  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402
from videomolmo_ros.train.presets import tiny  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "token_readout.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


def test_token_readout_scores_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    save_release_layout(VideoMolmoModel(tiny()).eval(), tmp_path)
    done = run(str(tmp_path), "--frames", "32", "--steps", "3")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    for name in ("color_acc", "shape_acc", "size_acc", "texture_acc", "point_error"):
        assert name in line, line


def test_token_readout_refuses_a_missing_model(tmp_path):
    done = run(str(tmp_path / "nothing"), "--frames", "32", "--steps", "1")
    assert done.returncode != 0
    assert "cannot load" in done.stderr and "Traceback" not in done.stderr
