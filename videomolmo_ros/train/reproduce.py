"""``python -m videomolmo_ros.train.reproduce RECIPE``: the shell commands that re-run a model's
training, every stage of its curriculum, from the recipe ``train.ship`` saved with it.

A shipped model is the end of a chain (stage-0 vision pre-training, then pointing stages each
started from the previous one, some stopped before the end of their schedule); typing that chain
by hand from five JSON configs is how a model card's "exact command" goes wrong. Here each
recorded config becomes the command line whose parsed config is that config (tested as a round
trip), and each ``--init-from`` names where the previous command leaves its model (its run
directory, or its checkpoint when it stopped early). An averaged model (``train.average``)
branches the chain: the commands of each source, then the averaging. A run resumed with a
changed schedule (``resumed`` in its recipe) is its commands up to each resume, then
``--resume`` with the new settings. Runs are seeded: the
commands re-run the same steps, with the code of the commit that trained the model (see the
model card).
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from videomolmo_ros.train.average import AVERAGE, is_average
from videomolmo_ros.train.dataset import DataConfig
from videomolmo_ros.train.trainer import CHECKPOINTS, TrainConfig

TRAIN = "python -m videomolmo_ros.train"
VISION_PRETRAIN = "python -m videomolmo_ros.train.vision_pretrain"
AVERAGE_COMMAND = "python -m videomolmo_ros.train.average"


class RecipeError(ValueError):
    """A recipe that no command line can express."""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def train_arguments(config: dict[str, Any], stop_after: int | None = None) -> list[str]:
    """The ``python -m videomolmo_ros.train`` arguments that parse to ``config`` (a saved
    ``TrainConfig``)."""
    defaults = TrainConfig(output_dir="")
    if tuple(config.get("betas", defaults.betas)) != tuple(defaults.betas) or \
            config.get("eps", defaults.eps) != defaults.eps:  # the paper's; no flag sets them
        raise RecipeError(f"betas/eps {config.get('betas')}/{config.get('eps')} have no "
                          "command-line flag")
    data = {**DataConfig().__dict__, **config.get("data", {})}
    args = ["--out", config["output_dir"], "--preset", config.get("preset", defaults.preset)]
    if config.get("model_overrides"):
        args += ["--model-overrides", _json(config["model_overrides"])]
    if not config.get("temporal", True):
        args.append("--no-temporal")
    for flag, key in (("--steps", "steps"), ("--batch-frames", "batch_frames"),
                      ("--grad-accum", "grad_accum"), ("--lr-llm", "lr_llm"),
                      ("--lr-vision", "lr_vision"), ("--weight-decay", "weight_decay"),
                      ("--warmup-steps", "warmup_steps"), ("--min-lr-ratio", "min_lr_ratio"),
                      ("--max-grad-norm", "max_grad_norm"), ("--seed", "seed"),
                      ("--save-every", "save_every"), ("--keep-checkpoints", "keep_checkpoints"),
                      ("--monitor-every", "monitor_every"), ("--query-recall", "query_recall"),
                      ("--keep-readouts", "keep_readouts")):
        args += [flag, repr(config.get(key, getattr(defaults, key)))]
    # Recorded before --clip-by existed: clipped all together (the flag's default is "side").
    args += ["--clip-by", config.get("clip_by", "all")]
    if config.get("motion_readout", 0.0):  # newer than the shipped recipe: only when used
        args += ["--motion-readout", repr(config["motion_readout"])]
    if config.get("referent_map", 0.0):  # newer than the shipped recipe: only when used
        args += ["--referent-map", repr(config["referent_map"]),
                 "--referent-layer", repr(config.get("referent_layer", -1))]
    if config.get("add_conv_stem"):  # newer than the shipped recipe: only when used
        args.append("--add-conv-stem")
    if config.get("conv_stem_at", defaults.conv_stem_at) != defaults.conv_stem_at:
        args += ["--conv-stem-at", config["conv_stem_at"]]
    if config.get("lr_stem") is not None:
        args += ["--lr-stem", repr(config["lr_stem"])]
    if config.get("stem_output_scale", defaults.stem_output_scale) != defaults.stem_output_scale:
        args += ["--stem-output-scale", repr(config["stem_output_scale"])]
    if config.get("readout_weights"):
        args += ["--readout-weights", _json(config["readout_weights"])]
    if config.get("head_warmup", 0):  # newer than the shipped recipe: only when used
        args += ["--head-warmup", repr(config["head_warmup"])]
    if config.get("grow_llm", 0):  # newer than the shipped recipe: only when used
        args += ["--grow-llm", repr(config["grow_llm"])]
    for flag, key in (("--data-seed", "seed"), ("--queries-per-frame", "queries_per_frame"),
                      ("--frames-per-scene", "frames_per_scene"), ("--interleave", "interleave"),
                      ("--history-frames", "history_frames"), ("--captions", "captions")):
        args += [flag, repr(data[key])]
    if data.get("history_stride", 1) != 1:  # newer than the shipped recipe: only when used
        args += ["--history-stride", repr(data["history_stride"])]
    if data.get("pool_size") is not None:
        args += ["--pool-size", repr(data["pool_size"])]
    args += ["--kinds", ",".join(data["kinds"])]
    if data.get("kind_weights"):
        args += ["--kind-weights", _json(data["kind_weights"])]
    args += ["--scene", _json(data.get("scene", {}))]
    for flag, key in (("--tokenizer", "tokenizer"), ("--threads", "threads"),
                      ("--init-from", "init_from"), ("--init-vision-from", "init_vision_from")):
        if config.get(key) is not None:
            args += [flag, str(config[key])]
    if not config.get("init_connector", True):
        args.append("--no-init-connector")
    if not config.get("init_positions", True):
        args.append("--no-init-positions")
    if stop_after is not None:
        args += ["--stop-after", str(stop_after)]
    return args


def vision_pretrain_arguments(config: dict[str, Any]) -> list[str]:
    """The ``python -m videomolmo_ros.train.vision_pretrain`` arguments that parse to
    ``config`` (a saved ``PretrainConfig``)."""
    from videomolmo_ros.train.vision_pretrain import PretrainConfig

    defaults = PretrainConfig(output_dir="")
    for key in ("weight_decay", "held_out_scenes"):
        if config.get(key, getattr(defaults, key)) != getattr(defaults, key):
            raise RecipeError(f"{key}={config[key]} has no command-line flag")
    args = ["--out", config["output_dir"], "--preset", config.get("preset", defaults.preset)]
    if config.get("model_overrides"):
        args += ["--model-overrides", _json(config["model_overrides"])]
    if config.get("scene"):
        args += ["--scene", _json(config["scene"])]
    for flag, key in (("--steps", "steps"), ("--frames-per-step", "frames_per_step"),
                      ("--frames-per-scene", "frames_per_scene"), ("--lr", "lr"),
                      ("--warmup-steps", "warmup_steps"), ("--seed", "seed")):
        args += [flag, repr(config.get(key, getattr(defaults, key)))]
    if config.get("threads") is not None:
        args += ["--threads", str(config["threads"])]
    if config.get("object_attributes"):
        args.append("--object-attributes")
    if config.get("attribute_weights"):
        args += ["--attribute-weights", _json(config["attribute_weights"])]
    if config.get("curriculum_steps"):
        args += ["--curriculum-scene", _json(config.get("curriculum_scene", {})),
                 "--curriculum-steps", str(config["curriculum_steps"])]
    if config.get("geometry_weight", 1.0) != 1.0:
        args += ["--geometry-weight", repr(config["geometry_weight"])]
    if config.get("schedule", defaults.schedule) != defaults.schedule:
        args += ["--schedule", config["schedule"]]
    if config.get("init_from"):
        args += ["--init-from", config["init_from"]]
    if config.get("add_conv_stem"):
        args.append("--add-conv-stem")
    if config.get("conv_stem_at", defaults.conv_stem_at) != defaults.conv_stem_at:
        args += ["--conv-stem-at", config["conv_stem_at"]]
    if config.get("trainable", defaults.trainable) != defaults.trainable:
        args += ["--trainable", config["trainable"]]
    if config.get("keep_tokens"):
        args += ["--keep-tokens", repr(config["keep_tokens"])]
    return args


def _stages(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """A recipe's stages, oldest first, its own last (an averaged model is one stage)."""
    if is_average(recipe):
        return [recipe]
    return list(recipe.get("stages", [])) + [
        {"stage": "train", "config": recipe["config"], "step": recipe.get("step"),
         "resumed": recipe.get("resumed", [])}]


def chain_commands(recipe: dict[str, Any]) -> list[str]:
    """One shell command per stage, oldest first, for a recipe written by ``train.ship``
    (``stages`` then the final run's own ``config`` and ``step``) or by ``train.average``
    (the chains of its sources, then the averaging; stages the sources share appear once)."""
    commands: list[str] = []
    _append_chain(_stages(recipe), commands)
    return commands


def _append_chain(stages: list[dict[str, Any]], commands: list[str]) -> str | None:
    """Append the commands of ``stages`` not in ``commands`` yet; return where the last
    stage leaves its model."""
    previous_model: str | None = None  # where the last train command leaves its model
    previous_vision: str | None = None
    for stage in stages:
        if stage["stage"] == AVERAGE:
            sources = [_append_chain(_stages(source), commands) for source in stage["sources"]]
            _append_once(commands, [AVERAGE_COMMAND, "--out", stage["output_dir"], *sources])
            previous_model = stage["output_dir"]
            continue
        config = dict(stage["config"])
        if stage["stage"] == "vision_pretrain":
            if config.get("init_from"):  # a stage 0 started from the chain's model so far
                if previous_model is None:
                    raise RecipeError(f"the stage 0 {config['output_dir']} starts from "
                                      f"{config['init_from']}, whose recipe is not in the chain")
                config["init_from"] = previous_model
            previous_vision = config["output_dir"]
            _append_once(commands, [VISION_PRETRAIN, *vision_pretrain_arguments(config)])
            continue
        if config.get("init_from"):
            if previous_model is None:
                raise RecipeError(f"{config['output_dir']} starts from {config['init_from']}, "
                                  "whose recipe is not in the chain")
            config["init_from"] = previous_model
        if config.get("init_vision_from"):
            if previous_vision is None:
                raise RecipeError(f"{config['output_dir']} starts from the stage 0 "
                                  f"{config['init_vision_from']}, not in the chain")
            config["init_vision_from"] = previous_vision
        step, steps = stage.get("step"), config["steps"]
        stop_after = step if step is not None and step < steps else None
        for arguments in _resumed_run(config, stage.get("resumed", []), stop_after):
            _append_once(commands, [TRAIN, *arguments])
        previous_model = (config["output_dir"] if stop_after is None else
                          str(Path(config["output_dir"]) / CHECKPOINTS / f"step-{step:06d}"))
    return previous_model


def _resumed_run(config: dict[str, Any], resumed: list[dict[str, Any]],
                 stop_after: int | None) -> list[list[str]]:
    """The train commands of one run: one, or, for a run resumed with changed settings
    (``resumed``: [before, after] per setting, oldest first), the first settings up to the
    first resume, then ``--resume`` with each change in turn."""
    configs = [config]
    for entry in reversed(resumed):  # undo the changes, newest first
        configs.insert(0, {**configs[0], **{k: pair[0] for k, pair in entry["changed"].items()}})
    stops = [entry["step"] for entry in resumed] + [stop_after]
    commands = []
    for index, (settings, stop) in enumerate(zip(configs, stops)):
        arguments = train_arguments(settings, stop)
        commands.append(arguments + ["--resume"] if index else arguments)
    return commands


def _append_once(commands: list[str], program_and_arguments: list[str]) -> None:
    """Append the command (the program unquoted, its arguments quoted) unless it is there:
    the sources of an average share the stages before they part."""
    program, *arguments = program_and_arguments
    command = " ".join([program] + [shlex.quote(a) for a in arguments])
    if command not in commands:
        commands.append(command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a training.json written by train.ship (or by a run)")
    args = parser.parse_args(argv)
    try:
        recipe = json.loads(Path(args.recipe).read_text())
        commands = chain_commands(recipe)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"cannot read a recipe from {args.recipe}: {error}") from error
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
