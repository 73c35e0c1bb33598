"""benchmarks/shape_learning.py trains both learners for real (tiny preset, a few steps) and
prints their held-out accuracy; a bad configuration is a clear error."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shape_learning.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


def test_shape_learning_trains_a_vit_and_a_cnn_side_by_side():
    done = run("--preset", "tiny", "--steps", "2", "--every", "1", "--held-out", "8")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("step")]
    assert len(rows) == 2
    for row in rows:
        accuracies = re.findall(r"(vit|vit-max|vit-conv|cnn) ([01]\.\d{3}) \(", row)
        assert [name for name, _ in accuracies] == ["vit", "vit-max", "vit-conv", "cnn"], row


def test_shape_learning_refuses_a_bad_configuration():
    done = run("--preset", "tiny", "--model-overrides", '{"no_such_field": 1}', "--steps", "1")
    assert done.returncode != 0
    assert "bad model configuration" in done.stderr and "Traceback" not in done.stderr
