"""``python -m videomolmo_ros.train.ship RUN_DIR``: make a trained model the shipped one.

Writes the model of RUN_DIR (the output of ``python -m videomolmo_ros.train``) into the package's
``weights/videomolmo-small`` (``model.shipped``): release layout with the tensors in float16 (half
the size; the loader casts them back to float32), the tokenizer and the recipe
(``training.json``) with the recipes of every stage it started from (``stages``: the stage-0
vision pre-training, earlier curriculum stages), the paths of this machine replaced by
``out/NAME``. RUN_DIR may also be an average written by ``train.average`` (its recipe holds
the chains of its sources). The model card (``README.md`` there) is written by hand and kept.
Evaluate the shipped copy, not the run's, since the fp16 rounding is part of what ships.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from videomolmo_ros.model import loading
from videomolmo_ros.model.shipped import shipped_model_dir
from videomolmo_ros.train.average import is_average
from videomolmo_ros.train.trainer import CHECKPOINTS, RECIPE_NAME
from videomolmo_ros.train.vision_pretrain import RECIPE_NAME as VISION_RECIPE_NAME

KEEP = ("README.md",)  # hand-written files of the destination that survive a re-ship
PATH_KEYS = ("output_dir", "init_from", "init_vision_from", "tokenizer")


def portable_path(path: str) -> str:
    """``out/NAME`` for a run directory, ``out/NAME/checkpoints/step-N`` for a checkpoint."""
    path = Path(path)
    if path.parent.name == CHECKPOINTS:
        return f"out/{path.parent.parent.name}/{CHECKPOINTS}/{path.name}"
    return f"out/{path.name}"


def portable(config: dict[str, Any]) -> dict[str, Any]:
    """A run config with its directories named as in ``portable_path`` (no path of this
    machine)."""
    return {k: (portable_path(v) if k in PATH_KEYS and isinstance(v, str) and v else v)
            for k, v in config.items()}


def portable_resumes(resumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's ``resumed`` record (``Trainer._load_state``) with paths as in ``portable``."""
    portable_entries = []
    for entry in resumes:
        before = portable({k: pair[0] for k, pair in entry["changed"].items()})
        after = portable({k: pair[1] for k, pair in entry["changed"].items()})
        portable_entries.append({**entry, "changed": {k: [before[k], after[k]] for k in before}})
    return portable_entries


def ancestry(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipes (portable) of the runs a run with ``config`` starts from, oldest first, as
    far as their directories exist; a parent whose recipe carries ``stages`` (a shipped model,
    or a run that recorded its own) ends the walk with those, and an averaged parent
    (``train.average``) with its own recipe, which holds its sources' chains. ``Trainer``
    records this when a run starts, since a parent folder, the shipped model's above all, may
    change later."""
    stages: list[dict[str, Any]] = []
    while True:
        vision = config.get("init_vision_from")
        vision_recipe = Path(vision) / VISION_RECIPE_NAME if vision else None
        if vision_recipe is not None and vision_recipe.is_file():
            stage = json.loads(vision_recipe.read_text())
            stage["config"] = portable(stage["config"])
            stages.insert(0, {"stage": "vision_pretrain", **stage})
        parent = config.get("init_from")
        if not parent or not (Path(parent) / RECIPE_NAME).is_file():
            break
        earlier = json.loads((Path(parent) / RECIPE_NAME).read_text())
        if is_average(earlier):  # an averaged model records the chains of its sources
            stages.insert(0, earlier)
            break
        stages.insert(0, {"stage": "train", "config": portable(earlier["config"]),
                          "step": earlier.get("step"), "final_loss": earlier.get("final_loss")})
        if earlier.get("resumed"):
            stages[0]["resumed"] = portable_resumes(earlier["resumed"])
        if "stages" in earlier:  # its own chain is recorded with it
            stages[:0] = earlier["stages"]
            break
        config = earlier["config"]
    return stages


def recipe_chain(run_dir: Path) -> dict[str, Any]:
    """The run's ``training.json`` (portable), with ``stages``: the recipes of the runs it
    started from, oldest first; as the run recorded them when it started, else as found now
    (``ancestry``). A run started from a shipped model inherits that model's whole chain."""
    recipe = json.loads((run_dir / RECIPE_NAME).read_text())
    if is_average(recipe):  # written portable by train.average, its sources' chains inside
        return recipe
    stages = recipe["stages"] if "stages" in recipe else ancestry(recipe["config"])
    chain = {**recipe, "config": portable(recipe["config"]), "stages": stages}
    if recipe.get("resumed"):
        chain["resumed"] = portable_resumes(recipe["resumed"])
    return chain


def ship(run_dir: str | Path, destination: str | Path | None = None,
         dtype: torch.dtype = torch.float16) -> Path:
    """Copy the model of ``run_dir`` into ``destination`` (default: the shipped model's
    folder), replacing everything there but ``KEEP``. Returns the destination."""
    run_dir = Path(run_dir)
    destination = Path(destination) if destination is not None else shipped_model_dir()
    model = loading.load_videomolmo(str(run_dir))
    tokenizer = loading.load_tokenizer(str(run_dir))
    recipe = recipe_chain(run_dir)
    if destination.exists():
        for path in destination.iterdir():
            if path.name not in KEEP:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    loading.save_release_layout(model, destination, dtype=dtype)
    tokenizer.save_pretrained(str(destination))
    (destination / RECIPE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished training run (its final model)")
    parser.add_argument("--out", default=None, help="destination (default: the shipped model)")
    args = parser.parse_args(argv)
    destination = ship(args.run_dir, args.out)
    size = sum(p.stat().st_size for p in destination.iterdir() if p.is_file())
    print(f"shipped {args.run_dir} -> {destination} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
