"""Deepen a trained model's LLM without changing what it computes.

Why: the project's small model stops improving near point F1 0.65 whatever its recipe (issue 4,
sessions 17-22), and its LLM (4 Qwen2 blocks) was a suspect: it has to compose a query with what
it sees ("the star left of the red square"). Growing it in place keeps the training already
done. (Measured in the twenty-third session: 4 more blocks and 1,500 steps scored level with the
4-block model, 0.661 against 0.661; its errors are shapes misread, not relations.) The new
blocks are copies of the block before them with their two output projections (attention
``o_proj``, MLP ``down_proj``) at zero, so each adds nothing to the residual stream at first
and the grown model scores exactly what it did; the copies' other weights give the new blocks
attention patterns and features that already mean something
(block expansion, as in LLaMA Pro: Wu et al. 2024, arXiv:2401.02415). Not in the VideoMolmo
paper; no library provides it for Qwen2 blocks, hence this module.
"""
from __future__ import annotations

import copy

import torch

from videomolmo_ros.model.videomolmo import VideoMolmoModel

# The projections that write a block's output into the residual stream.
ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def expansion_plan(layers: int, extra: int) -> list[tuple[int, bool]]:
    """Per block of the grown LLM: (index of the block it is taken from, whether it is new).

    The new blocks are spread evenly, each after the block it copies: 4 blocks + 2 ->
    [0, 1, 1*, 2, 3, 3*]; 4 + 4 -> [0, 0*, 1, 1*, 2, 2*, 3, 3*]."""
    if layers < 1:
        raise ValueError(f"an LLM to grow has at least one block, not {layers}")
    if not 1 <= extra <= layers:
        raise ValueError(f"extra blocks must be in 1..{layers} (at most one after each "
                         f"block), not {extra}")
    after = {(j + 1) * layers // extra - 1 for j in range(extra)}
    plan: list[tuple[int, bool]] = []
    for index in range(layers):
        plan.append((index, False))
        if index in after:
            plan.append((index, True))
    return plan


@torch.no_grad()
def deepen_llm(model: VideoMolmoModel, extra: int) -> VideoMolmoModel:
    """A new model whose LLM has ``extra`` more blocks (``expansion_plan``), every other weight
    the same, computing the same outputs as ``model`` (up to float rounding)."""
    old_layers = model.config.num_hidden_layers
    plan = expansion_plan(old_layers, extra)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = old_layers + extra
    config.validate()
    grown = VideoMolmoModel(config)
    prefix = "llm.layers."
    state = model.state_dict()
    new_state = {name: value for name, value in state.items() if not name.startswith(prefix)}
    for target, (source, fresh) in enumerate(plan):
        source_prefix = f"{prefix}{source}."
        for name, value in state.items():
            if not name.startswith(source_prefix):
                continue
            suffix = name[len(source_prefix):]
            tensor = value.clone()
            if fresh and suffix in ZEROED:
                tensor.zero_()
            new_state[f"{prefix}{target}.{suffix}"] = tensor
    grown.load_state_dict(new_state, strict=True)
    reference = next(model.parameters())
    return grown.to(device=reference.device, dtype=reference.dtype).train(model.training)
