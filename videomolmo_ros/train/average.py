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
from typing import Any, Iterable, Iterator, Sequence

import torch

from videomolmo_ros.model import loading
from videomolmo_ros.train.trainer import RECIPE_NAME

AVERAGE = "average"  # the ``stage`` of an averaged model's recipe


class AverageError(ValueError):
    """Sources that cannot be averaged (with the reason)."""


def is_average(recipe: dict[str, Any]) -> bool:
    """Whether a ``training.json`` is an averaged model's (no single run config of its own)."""
    return recipe.get("stage") == AVERAGE


def average_state_dicts(states: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes (summed in float64,
    returned in the first one's dtypes). ``states`` is consumed one at a time, so a generator
    that loads each model when asked holds one model besides the sum, not all of them."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    count = 0
    for state in states:
        if count == 0:
            total = {name: t.detach().double().clone() for name, t in state.items()}
            dtypes = {name: t.dtype for name, t in state.items()}
        else:
            if set(state) != set(total):
                raise AverageError(f"model {count} has other tensors than model 0: "
                                   f"{sorted(set(total) ^ set(state))[:5]}")
            for name, tensor in state.items():
                if tensor.shape != total[name].shape:
                    raise AverageError(f"{name}: shape {tuple(tensor.shape)} in model {count}, "
                                       f"{tuple(total[name].shape)} in model 0")
                total[name] += tensor.detach().double()
        count += 1
    if count < 2:
        raise AverageError(f"averaging needs at least two models, got {count}")
    return {name: (t / count).to(dtypes[name]) for name, t in total.items()}


def average(sources: Sequence[str | Path], out: str | Path) -> Path:
    """Write the mean of the models in ``sources`` (run directories, checkpoints, or earlier
    averages) into ``out`` with their tokenizer and recipes. They must share the model config
    and the tokenizer's vocabulary. Returns ``out``."""
    from videomolmo_ros.train.ship import portable_path, recipe_chain

    sources = [Path(s) for s in sources]
    if len(sources) < 2:  # before any model is read
        raise AverageError(f"averaging needs at least two models, got {len(sources)}")
    for source in sources:
        if not (source / RECIPE_NAME).is_file():
            raise AverageError(f"{source} is not a trained model (no {RECIPE_NAME}): its recipe "
                               "could not be recorded")
    out = Path(out)
    if out.resolve() in {s.resolve() for s in sources}:
        raise AverageError(f"{out} is one of the sources; write the average elsewhere")
    chains = []
    for source in sources:
        try:
            chains.append(recipe_chain(source))
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSON or fields
            raise AverageError(f"{source / RECIPE_NAME} is not a readable recipe "
                               f"({type(error).__name__}: {error})") from error
    recipe = {"stage": AVERAGE, "output_dir": portable_path(str(out)), "sources": chains}
    first = loading.load_videomolmo(str(sources[0]))
    tokenizer = loading.load_tokenizer(str(sources[0]))
    vocab = tokenizer.get_vocab()

    def states() -> Iterator[dict[str, torch.Tensor]]:
        yield first.state_dict()
        for source in sources[1:]:
            model = loading.load_videomolmo(str(source))
            if model.config != first.config:
                raise AverageError(f"{source} has another model config than {sources[0]}")
            if loading.load_tokenizer(str(source)).get_vocab() != vocab:
                raise AverageError(f"{source} has another tokenizer than {sources[0]}")
            yield model.state_dict()

    first.load_state_dict(average_state_dicts(states()), strict=True)
    loading.save_release_layout(first, out)
    tokenizer.save_pretrained(str(out))
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
