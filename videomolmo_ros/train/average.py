"""``python -m videomolmo_ros.train.average --out DIR RUN RUN [...]``: the mean of the weights of
several runs fine-tuned from one model (a "model soup", Wortsman et al. 2022, "Model soups:
averaging weights of multiple fine-tuned models improves accuracy without increasing inference
time").

Runs that start from the same model and differ only in their data stay in one basin of the loss,
and their mean often scores above each of them at no cost at inference: from the same start, two
2,800-step stages each left the small model's all-query F1 at 0.65 and their mean reached 0.66
(the README's eighteenth-session notes). No library offers this for our release layout, hence
this module.

DIR gets the release layout (float32), the tokenizer and a ``training.json`` that records the
recipe of every source (``{"stage": "average", "output_dir": ..., "sources": [...]}``), so that
``train.ship`` and ``train.reproduce`` can follow the chain through it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from videomolmo_ros.model import loading
from videomolmo_ros.train.trainer import RECIPE_NAME

AVERAGE = "average"  # the ``stage`` of an averaged model's recipe


class AverageError(ValueError):
    """Sources that cannot be averaged (with the reason)."""


def is_average(recipe: dict[str, Any]) -> bool:
    """Whether a ``training.json`` is an averaged model's (no single run config of its own)."""
    return recipe.get("stage") == AVERAGE


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes (summed in float64,
    returned in the first one's dtypes)."""
    if len(states) < 2:
        raise AverageError(f"averaging needs at least two models, got {len(states)}")
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            raise AverageError(f"model {i} has other tensors than model 0: "
                               f"{sorted(keys ^ set(state))[:5]}")
        for name in keys:
            if state[name].shape != states[0][name].shape:
                raise AverageError(f"{name}: shape {tuple(state[name].shape)} in model {i}, "
                                   f"{tuple(states[0][name].shape)} in model 0")
    return {name: (sum(state[name].double() for state in states) / len(states))
            .to(states[0][name].dtype) for name in states[0]}


def average(sources: Sequence[str | Path], out: str | Path) -> Path:
    """Write the mean of the models in ``sources`` (run directories, checkpoints, or earlier
    averages) into ``out`` with their tokenizer and recipes. They must share the model config
    and the tokenizer's vocabulary. Returns ``out``."""
    from videomolmo_ros.train.ship import portable_path, recipe_chain

    sources = [Path(s) for s in sources]
    if len(sources) < 2:
        raise AverageError(f"averaging needs at least two models, got {len(sources)}")
    for source in sources:
        if not (source / RECIPE_NAME).is_file():
            raise AverageError(f"{source} is not a trained model (no {RECIPE_NAME}): its recipe "
                               "could not be recorded")
    out = Path(out)
    if out.resolve() in {s.resolve() for s in sources}:
        raise AverageError(f"{out} is one of the sources; write the average elsewhere")
    models = [loading.load_videomolmo(str(s)) for s in sources]
    for source, model in zip(sources[1:], models[1:]):
        if model.config != models[0].config:
            raise AverageError(f"{source} has another model config than {sources[0]}")
    tokenizers = [loading.load_tokenizer(str(s)) for s in sources]
    for source, tokenizer in zip(sources[1:], tokenizers[1:]):
        if tokenizer.get_vocab() != tokenizers[0].get_vocab():
            raise AverageError(f"{source} has another tokenizer than {sources[0]}")
    recipe = {"stage": AVERAGE, "output_dir": portable_path(str(out)),
              "sources": [recipe_chain(s) for s in sources]}
    mean = average_state_dicts([m.state_dict() for m in models])
    models[0].load_state_dict(mean, strict=True)
    loading.save_release_layout(models[0], out)
    tokenizers[0].save_pretrained(str(out))
    (out / RECIPE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where the averaged model goes")
    parser.add_argument("sources", nargs="+", help="trained models (run directories, "
                        "checkpoints or earlier averages) of one architecture and tokenizer")
    args = parser.parse_args(argv)
    try:
        out = average(args.sources, args.out)
    except (AverageError, OSError, loading.CheckpointMismatchError) as error:
        parser.exit(2, f"cannot average: {error}\n")
    print(f"averaged {len(args.sources)} models -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
