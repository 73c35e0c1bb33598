"""The shipped small VideoMolmo (``pointer.backend: videomolmo`` without ``model.path``): small,
complete, documented, loadable by the real loader, and pointing far better than chance on
synthetic scenes it never saw (seeds below the training range).

It is below issue 4's targets (its card says so), so the thresholds below guard what it does
(measured on these seeds: all-query F1 0.67, spatial 0.60, error 3 px, 0.96 of the points
near a referent inside its mask; random points 0.004; and on 20 scenes with twins, motion
queries that only motion can answer: F1 0.60 with the real history frames, 0.32 with a still
one), not what it should do; a broken loader, pre-processing, prompt or history
brings the points to chance, or the motion answers to the still history's, and fails them."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model.shipped import shipped_model_dir  # noqa: E402
from videomolmo_ros.train.average import is_average  # noqa: E402
from videomolmo_ros.train.dataset import TRAIN_SEED_OFFSET  # noqa: E402
from videomolmo_ros.train.evaluate import RandomPointer, evaluate_pointer  # noqa: E402
from videomolmo_ros.train.reproduce import chain_commands  # noqa: E402

SHIPPED = shipped_model_dir()
HELD_OUT_SEEDS = range(910_000, 910_003)  # not the model card's evaluation seeds either


def test_shipped_model_is_small_documented_and_reproducible():
    files = {p.name: p for p in SHIPPED.iterdir()}
    assert "config.json" in files and any(n.endswith(".safetensors") for n in files)
    assert "tokenizer.json" in files and "training.json" in files
    size = sum(p.stat().st_size for p in files.values())
    assert size < 12e6, f"{size / 1e6:.1f} MB"
    card = files["README.md"].read_text()
    assert "python -m videomolmo_ros.train " in card and "F1" in card
    recipe = json.loads(files["training.json"].read_text())
    for run in final_runs(recipe):  # finished runs, not checkpoints
        assert run["step"] == run["config"]["steps"], run["config"]["output_dir"]
    for command in chain_commands(recipe):  # the card quotes every stage's exact command
        assert command in card, command
    assert max(HELD_OUT_SEEDS) < TRAIN_SEED_OFFSET


def final_runs(recipe: dict) -> list[dict]:
    """The runs whose models went into the shipped one: the run itself, or the sources of
    an average (``train.average``)."""
    if is_average(recipe):
        return [run for source in recipe["sources"] for run in final_runs(source)]
    return [recipe]


@pytest.fixture(scope="module")
def shipped_pointer(torch_one_thread):
    from videomolmo_ros.model.pointer import VideoMolmoPointer

    return VideoMolmoPointer.from_pretrained(str(SHIPPED), max_new_tokens=120)


def test_shipped_model_points_far_above_chance_on_held_out_scenes(shipped_pointer):
    kinds = ("attribute", "spatial", "counting")
    model = evaluate_pointer(shipped_pointer, HELD_OUT_SEEDS, keyframes_per_scene=2, kinds=kinds)
    chance = evaluate_pointer(RandomPointer(), HELD_OUT_SEEDS, keyframes_per_scene=2,
                              kinds=kinds)
    assert model["all"]["queries"] > 150
    assert model["all"]["f1"] >= chance["all"]["f1"] + 0.5, (model["all"], chance["all"])
    assert model["spatial"]["f1"] >= chance["spatial"]["f1"] + 0.4, model["spatial"]
    # when it picks a right object it lands near its centre (random points: ~70 px away),
    # inside the object's mask
    assert model["all"]["error_px"] < 10, model["all"]
    assert model["all"]["inside_given_nr"] >= 0.8, model["all"]
    assert chance["all"]["error_px"] >= 20, chance["all"]


def test_shipped_model_reads_motion_through_its_temporal_module(shipped_pointer):
    """Scenes with twins (same colour and shape, unlike motion): only the history frames can
    pick the referent. With every history frame replaced by the keyframe, those answers drop."""
    assert shipped_pointer.history_stride == 4  # t-4, t-8, t-12, t-16, as it was trained
    seeds = range(910_000, 910_020)
    scene = {"num_objects": [2, 6], "twin_prob": 0.5}
    video, still = (evaluate_pointer(shipped_pointer, seeds, keyframes_per_scene=3, scene=scene,
                                     kinds=("motion",), history=history)["motion"]
                    for history in ("video", "still"))
    assert video["needs_motion"]["queries"] > 150
    assert video["needs_motion"]["f1"] >= still["needs_motion"]["f1"] + 0.05, (video, still)
