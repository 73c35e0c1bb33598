"""benchmarks/referent_attention.py runs on the shipped model and prints each head of the last
LLM layer with the two references; a directory without a model is a clear error."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "referent_attention.py"
SHIPPED = ROOT / "videomolmo_ros" / "weights" / "videomolmo-small"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


def test_referent_attention_scores_every_head_against_the_references():
    done = run(str(SHIPPED), "--samples", "4")
    assert done.returncode == 0, done.stderr
    rows = dict(re.findall(r"^\s+(head \d|objects|ideal)\s+loss\s+(\S+)", done.stdout, re.M))
    assert set(rows) == {"head 0", "head 1", "head 2", "head 3", "objects", "ideal"}
    # The ideal attention is the lowest loss there is: no head and no reference goes below it.
    assert all(float(loss) >= float(rows["ideal"]) - 1e-6 for loss in rows.values())
    assert re.search(r"ideal\s+loss\s+\S+\s+top-1 on a referent 1\.000", done.stdout)


def test_referent_attention_refuses_a_missing_model_and_a_missing_layer(tmp_path):
    done = run(str(tmp_path / "nothing"), "--samples", "2")
    assert done.returncode != 0
    assert "cannot load" in done.stderr and "Traceback" not in done.stderr
    done = run(str(SHIPPED), "--samples", "2", "--layer", "4")
    assert done.returncode != 0
    assert "not a layer of its 4-layer LLM" in done.stderr and "Traceback" not in done.stderr
