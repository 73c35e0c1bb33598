"""Cheap held-out signals of grounding during training (teacher-forced, no generation).

A model trained from scratch first learns the answer format, which lowers the loss a lot while
it still ignores the image; these numbers say whether it has started to look:

* ``first_digit``: accuracy of the first digit of every coordinate (x="3..", y="7..") on
  held-out keyframes; chance is about 0.1-0.15 (the marginal of the tens of a percentage);
* ``second_digit``: the same for the units digit (given the true first one);
* ``none_recall``: of the answers that are "There are none.", the fraction whose first token
  the model gets right; a model blind to the image never does (it always predicts a point).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from videomolmo_ros.train.dataset import IGNORE_INDEX, DataConfig, PointingDataset, collate

HELD_OUT_DATA_SEED = 777  # a data seed no run trains on by default (scenes differ per seed)


class GroundingMonitor:
    """Scores a model on a fixed set of held-out samples drawn like the training ones."""

    def __init__(self, data: DataConfig, model_config: Any, tokenizer: Any,
                 samples: int = 40, batch: int = 4) -> None:
        held_out = dataclasses.replace(data, seed=HELD_OUT_DATA_SEED, pool_size=None,
                                       captions=0)
        dataset = PointingDataset(held_out, model_config, tokenizer)
        self.samples = [dataset[7 * i] for i in range(samples)]
        self.batch = batch
        self.pad_id = int(tokenizer.pad_token_id)
        tokens = [tokenizer.convert_ids_to_tokens(i) or "" for i in range(len(tokenizer))]
        self.is_digit = torch.tensor([len(t) == 1 and t.isdigit() for t in tokens])
        self.opens_value = torch.tensor([t.endswith('"') for t in tokens])
        self.none_id = tokenizer.encode(" There", add_special_tokens=False)[0]

    @torch.no_grad()
    def __call__(self, model: Any) -> dict[str, float]:
        from videomolmo_ros.train.trainer import packed_hidden

        was_training = model.training
        model.eval()
        hits = {"first_digit": [0, 0], "second_digit": [0, 0], "none_recall": [0, 0]}
        for start in range(0, len(self.samples), self.batch):
            batch = collate(self.samples[start:start + self.batch], self.pad_id)
            predicted = model.lm_head(packed_hidden(model, batch)[:, :-1]).argmax(-1)
            targets, inputs = batch.labels[:, 1:], batch.input_ids[:, :-1]
            answer = targets != IGNORE_INDEX
            digit = answer & self.is_digit[targets.clamp(min=0)]
            first = digit & self.opens_value[inputs]
            second = digit & self.is_digit[inputs] & torch.roll(first, 1, dims=1)
            starts = answer & (batch.labels[:, :-1] == IGNORE_INDEX)
            none = starts & (targets == self.none_id)
            correct = predicted == targets
            for name, where in (("first_digit", first), ("second_digit", second),
                                ("none_recall", none)):
                hits[name][0] += int((correct & where).sum())
                hits[name][1] += int(where.sum())
        if was_training:
            model.train()
        return {name: right / total if total else float("nan")
                for name, (right, total) in hits.items()}
