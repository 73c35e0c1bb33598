"""Shipping a run: fp16 release layout that loads back, the tokenizer, and a recipe that names
every stage it came from without any path of this machine."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model import loading  # noqa: E402
from videomolmo_ros.train.ship import portable_path, portable_resumes, ship  # noqa: E402
from videomolmo_ros.train.testing import TINY_SCENE, small_tokenizer, tiny_data  # noqa: E402
from videomolmo_ros.train.trainer import TrainConfig, Trainer  # noqa: E402
from videomolmo_ros.train.vision_pretrain import PretrainConfig, pretrain  # noqa: E402

torch.set_num_threads(1)


def test_ship_a_two_stage_run(tmp_path):
    vision = tmp_path / "vision"
    pretrain(PretrainConfig(output_dir=str(vision), preset="tiny", scene=dict(TINY_SCENE),
                            steps=1, frames_per_step=2, frames_per_scene=2, held_out_scenes=1),
             progress=False)
    tokenizer_dir = tmp_path / "tokenizer"
    small_tokenizer().save_pretrained(str(tokenizer_dir))
    common = dict(preset="tiny", data=tiny_data(), steps=1, batch_frames=1, grad_accum=1,
                  save_every=1)
    first = tmp_path / "stage1"
    Trainer(TrainConfig(output_dir=str(first), tokenizer=str(tokenizer_dir),
                        init_vision_from=str(vision), **common)).train(progress=False)
    second = tmp_path / "stage2"
    Trainer(TrainConfig(output_dir=str(second), init_from=str(first), **common)).train(
        progress=False)

    shipped = ship(second, tmp_path / "shipped")
    (shipped / "README.md").write_text("card")
    shipped = ship(second, tmp_path / "shipped")  # a re-ship keeps the hand-written card
    assert (shipped / "README.md").read_text() == "card"
    assert (shipped / "tokenizer.json").is_file()

    text = (shipped / "training.json").read_text()
    assert str(tmp_path) not in text
    recipe = json.loads(text)
    assert recipe["config"]["output_dir"] == "out/stage2"
    assert recipe["config"]["init_from"] == "out/stage1"
    assert [s["stage"] for s in recipe["stages"]] == ["vision_pretrain", "train"]
    assert recipe["stages"][1]["config"]["init_vision_from"] == "out/vision"

    from safetensors import safe_open

    files = list(shipped.glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    original = loading.load_videomolmo(str(second))
    loaded = loading.load_videomolmo(str(shipped))
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == torch.float32, name
        torch.testing.assert_close(a.half().float(), b, msg=name)

    # A run started from the shipped copy inherits the shipped chain: reproduce names every
    # stage, the new one starting where the shipped run left its model.
    third = tmp_path / "stage3"
    Trainer(TrainConfig(output_dir=str(third), init_from=str(shipped), **common)).train(
        progress=False)
    # Re-shipping another model into the folder stage3 started from must not rewrite stage3's
    # history: the run recorded its ancestry when it started.
    ship(first, tmp_path / "shipped")
    reshipped = json.loads((ship(third, tmp_path / "shipped2") / "training.json").read_text())
    assert [s["stage"] for s in reshipped["stages"]] == ["vision_pretrain", "train", "train"]
    assert [s["config"]["output_dir"] for s in reshipped["stages"][1:]] == ["out/stage1",
                                                                           "out/stage2"]
    from videomolmo_ros.train.reproduce import chain_commands

    # (the tiny stage 0 holds out 1 scene, which no flag sets: give it the default)
    reshipped["stages"][0]["config"]["held_out_scenes"] = PretrainConfig(
        output_dir="").held_out_scenes
    commands = chain_commands(reshipped)
    assert len(commands) == 4 and "--out out/stage3" in commands[-1]
    assert "--init-from out/stage2 " in commands[-1] + " "


def test_portable_paths_keep_the_run_and_checkpoint_names(tmp_path):
    assert portable_path(str(tmp_path / "G2")) == "out/G2"
    assert (portable_path(str(tmp_path / "G2" / "checkpoints" / "step-001000"))
            == "out/G2/checkpoints/step-001000")


def test_a_resume_record_names_its_paths_portably():
    record = [{"step": 3, "changed": {"tokenizer": ["/home/me/runs/tok", "/srv/x/tok2"],
                                      "steps": [10, 6]}}]
    assert portable_resumes(record) == [{"step": 3, "changed": {
        "tokenizer": ["out/tok", "out/tok2"], "steps": [10, 6]}}]


def test_a_resumed_runs_record_travels_with_the_chain(tmp_path):
    """A stage resumed with a changed schedule keeps its ``resumed`` record when it ships and
    when a later stage starts from it, so reproduce gives its two commands."""
    from videomolmo_ros.train.reproduce import chain_commands

    tokenizer_dir = tmp_path / "tokenizer"
    small_tokenizer().save_pretrained(str(tokenizer_dir))
    common = dict(preset="tiny", data=tiny_data(), batch_frames=1, grad_accum=1, save_every=1,
                  tokenizer=str(tokenizer_dir))
    first = tmp_path / "stage1"
    Trainer(TrainConfig(output_dir=str(first), steps=4, **common)).train(steps=1,
                                                                          progress=False)
    Trainer(TrainConfig(output_dir=str(first), steps=2, **common), resume=True).train(
        progress=False)
    record = [{"step": 1, "changed": {"steps": [4, 2]}}]
    assert json.loads(ship(first, tmp_path / "shipped1").joinpath(
        "training.json").read_text())["resumed"] == record
    second = tmp_path / "stage2"
    Trainer(TrainConfig(output_dir=str(second), init_from=str(first), steps=1,
                        **common)).train(progress=False)
    recipe = json.loads((ship(second, tmp_path / "shipped2") / "training.json").read_text())
    assert recipe["stages"][-1]["resumed"] == record and "resumed" not in recipe
    commands = chain_commands(recipe)
    assert len(commands) == 3
    assert "--steps 4" in commands[0] and "--stop-after 1" in commands[0]
    assert "--steps 2" in commands[1] and commands[1].endswith("--resume")
    assert "--init-from out/stage1" in commands[2]
