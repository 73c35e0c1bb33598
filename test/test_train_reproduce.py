"""The commands of a model card: each recorded stage config becomes a command line that parses
back to exactly that config, chained where the previous command leaves its model."""
from __future__ import annotations

import dataclasses
import json
import shlex

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.train import reproduce  # noqa: E402
from videomolmo_ros.train import vision_pretrain  # noqa: E402
from videomolmo_ros.train.__main__ import parse_args as parse_train_args  # noqa: E402
from videomolmo_ros.train.dataset import DataConfig  # noqa: E402
from videomolmo_ros.train.trainer import TrainConfig  # noqa: E402


def as_saved(config) -> dict:
    """A config the way training.json / vision_pretrain.json hold it."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def parsed_train(command: str) -> dict:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "videomolmo_ros.train"]
    config, _ = parse_train_args(words[3:])
    return as_saved(config)


def parsed_vision(command: str) -> dict:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "videomolmo_ros.train.vision_pretrain"]
    config, _ = vision_pretrain.parse_args(words[3:])
    return as_saved(config)


UNUSUAL_TRAIN = TrainConfig(
    output_dir="out/b", preset="tiny", model_overrides={"hidden_size": 64}, temporal=False,
    data=DataConfig(seed=7, scene={"num_objects": [1, 6], "width": 160}, pool_size=12,
                    frames_per_scene=3, interleave=5, queries_per_frame=6,
                    kinds=("spatial", "counting"), kind_weights={"spatial": 2.5}, captions=1),
    steps=1234, batch_frames=16, grad_accum=3, lr_llm=3.5e-4, lr_vision=1e-5,
    weight_decay=0.01, warmup_steps=7, min_lr_ratio=0.25, max_grad_norm=0.5, seed=9,
    save_every=11, keep_checkpoints=4, tokenizer="out/tok", threads=1, init_connector=False,
    init_positions=False, init_from="out/a", monitor_every=50, query_recall=1.0,
    keep_readouts=0.5, referent_map=2.0, referent_layer=1, clip_by="all")


TEMPORAL_TRAIN = TrainConfig(output_dir="out/m", data=DataConfig(history_frames=2,
                                                                history_stride=3),
                             keep_readouts=0.1, motion_readout=0.5)

STEM_TRAIN = TrainConfig(output_dir="out/c", init_from="out/b", add_conv_stem=True, lr_stem=3e-4,
                         keep_readouts=0.1, readout_weights={"shape": 5.0, "color": 0.5},
                         query_recall=1.0, head_warmup=20, grow_llm=2)


@pytest.mark.parametrize("config", [TrainConfig(output_dir="out/plain"), UNUSUAL_TRAIN,
                                    TEMPORAL_TRAIN, STEM_TRAIN,
                                    dataclasses.replace(STEM_TRAIN, conv_stem_at="features"),
                                    dataclasses.replace(STEM_TRAIN, init_vision_from="out/s",
                                                        stem_output_scale=0.0)])
def test_train_command_parses_back_to_its_config(config):
    saved = as_saved(config)
    command = " ".join([reproduce.TRAIN] + [shlex.quote(a) for a in
                                            reproduce.train_arguments(saved)])
    assert parsed_train(command) == saved


@pytest.mark.parametrize("config", [
    vision_pretrain.PretrainConfig(output_dir="out/v"),
    vision_pretrain.PretrainConfig(output_dir="out/v", preset="tiny", scene={"width": 96},
                                   model_overrides={"hidden_size": 64}, steps=5,
                                   frames_per_step=3, frames_per_scene=2, lr=3e-4,
                                   warmup_steps=1, seed=4, threads=2, object_attributes=True,
                                   attribute_weights={"shape": 5.0},
                                   curriculum_scene={"num_objects": [1, 1]},
                                   curriculum_steps=2, geometry_weight=0.0,
                                   schedule="constant"),
    vision_pretrain.PretrainConfig(output_dir="out/s", init_from="out/model", add_conv_stem=True,
                                   trainable="stem", keep_tokens=2.5),
    vision_pretrain.PretrainConfig(output_dir="out/s", init_from="out/model", add_conv_stem=True,
                                   conv_stem_at="features", trainable="stem")])
def test_vision_pretrain_command_parses_back_to_its_config(config):
    saved = as_saved(config)
    command = " ".join([reproduce.VISION_PRETRAIN] + [shlex.quote(a) for a in
                                                      reproduce.vision_pretrain_arguments(saved)])
    assert parsed_vision(command) == saved


def test_a_recipe_recorded_before_clip_by_is_reproduced_clipping_all_together():
    old = as_saved(TrainConfig(output_dir="out/old"))
    del old["clip_by"]
    arguments = reproduce.train_arguments(old)
    assert arguments[arguments.index("--clip-by") + 1] == "all"
    command = " ".join([reproduce.TRAIN] + [shlex.quote(a) for a in arguments])
    assert parsed_train(command)["clip_by"] == "all"


def test_a_chain_starts_each_stage_where_the_previous_command_leaves_its_model():
    stage0 = as_saved(vision_pretrain.PretrainConfig(output_dir="out/vision", steps=9))
    first = as_saved(TrainConfig(output_dir="out/one", steps=2000, init_vision_from="out/v0"))
    # the second stage was started from a hand copy of the first one's step-1000 checkpoint
    second = as_saved(TrainConfig(output_dir="out/two", steps=500, init_from="out/one_1000"))
    final = as_saved(TrainConfig(output_dir="out/final", steps=300, init_from="out/two"))
    recipe = {"config": final, "step": 300, "stages": [
        {"stage": "vision_pretrain", "config": stage0},
        {"stage": "train", "config": first, "step": 1000},
        {"stage": "train", "config": second, "step": 500}]}
    commands = reproduce.chain_commands(recipe)
    assert len(commands) == 4
    assert parsed_vision(commands[0]) == stage0
    one = parsed_train(commands[1])
    assert one["init_vision_from"] == "out/vision"
    assert " --stop-after 1000" in commands[1]  # stopped early: its schedule is still 2000
    assert one["steps"] == 2000
    assert parsed_train(commands[2])["init_from"] == "out/one/checkpoints/step-001000"
    assert "--stop-after" not in commands[2]
    assert parsed_train(commands[3])["init_from"] == "out/two"


def test_a_stage_0_started_from_the_chains_model_gives_its_vision_to_the_next_stage():
    first = as_saved(TrainConfig(output_dir="out/one", steps=100))
    stem = as_saved(vision_pretrain.PretrainConfig(output_dir="out/stem", init_from="out/one_copy",
                                                   add_conv_stem=True, trainable="stem"))
    final = as_saved(TrainConfig(output_dir="out/two", steps=50, init_from="out/one_copy",
                                 init_vision_from="out/stem", add_conv_stem=True))
    commands = reproduce.chain_commands({"config": final, "step": 50, "stages": [
        {"stage": "train", "config": first, "step": 100},
        {"stage": "vision_pretrain", "config": stem}]})
    assert len(commands) == 3
    assert parsed_vision(commands[1]) == {**stem, "init_from": "out/one"}
    two = parsed_train(commands[2])
    assert (two["init_from"], two["init_vision_from"]) == ("out/one", "out/stem")
    with pytest.raises(reproduce.RecipeError, match="stage 0 out/stem starts from"):
        reproduce.chain_commands({"config": final, "step": 50, "stages": [
            {"stage": "vision_pretrain", "config": stem}]})


def test_a_stage_whose_start_is_missing_is_refused():
    lost = as_saved(TrainConfig(output_dir="out/x", init_from="out/gone"))
    with pytest.raises(reproduce.RecipeError, match="not in the chain"):
        reproduce.chain_commands({"config": lost, "step": 1000, "stages": []})


def test_a_setting_without_a_flag_is_refused():
    odd = as_saved(TrainConfig(output_dir="out/x", betas=(0.9, 0.999)))
    with pytest.raises(reproduce.RecipeError, match="no command-line flag"):
        reproduce.train_arguments(odd)


def test_the_cli_refuses_a_missing_recipe(tmp_path, capsys):
    with pytest.raises(SystemExit, match="cannot read a recipe"):
        reproduce.main([str(tmp_path / "missing.json")])
