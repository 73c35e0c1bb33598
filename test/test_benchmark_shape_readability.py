"""benchmarks/shape_readability.py runs on a real (tiny, random-weight) checkpoint and prints
the pixel reference and both ViT read-outs; a directory without a model is a clear error."""
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
from videomolmo_ros.train.testing import TINY_SCENE  # noqa: E402
from videomolmo_ros.train.vision_pretrain import PretrainConfig, pretrain  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shape_readability.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


def test_shape_readability_probes_pixels_and_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    save_release_layout(VideoMolmoModel(tiny()).eval(), tmp_path)
    done = run(str(tmp_path), "--scenes", "3", "--steps", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[1].startswith("pixels") and "shape accuracy" in lines[1]
    assert [line.split(" at the centre")[0].rsplit(" ", 1)[-1] for line in lines[2:]] == \
        ["patch", "token"]


def test_shape_readability_probes_a_stage_0_of_its_own_preset(tmp_path):
    pretrain(PretrainConfig(output_dir=str(tmp_path), preset="tiny", scene=dict(TINY_SCENE),
                            steps=1, frames_per_step=2, held_out_scenes=1), progress=False)
    done = run(str(tmp_path), "--scenes", "3", "--steps", "2")
    assert done.returncode == 0, done.stderr  # a "small" ViT would not load these weights
    assert len(done.stdout.strip().splitlines()) == 4


def test_shape_readability_probes_a_stage_0_started_from_a_trained_model(tmp_path):
    torch.manual_seed(0)
    save_release_layout(VideoMolmoModel(tiny()).eval(), tmp_path / "model")
    pretrain(PretrainConfig(output_dir=str(tmp_path / "stem"), init_from=str(tmp_path / "model"),
                            add_conv_stem=True, trainable="stem", scene=dict(TINY_SCENE),
                            steps=1, frames_per_step=2, held_out_scenes=1), progress=False)
    done = run(str(tmp_path / "stem"), "--scenes", "3", "--steps", "2")
    assert done.returncode == 0, done.stderr  # its config is the model's, with the branch
    assert len(done.stdout.strip().splitlines()) == 4


def test_shape_readability_refuses_a_missing_model(tmp_path):
    done = run(str(tmp_path / "nothing"), "--scenes", "2", "--steps", "1")
    assert done.returncode != 0
    assert "cannot load" in done.stderr and "Traceback" not in done.stderr
