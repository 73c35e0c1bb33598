"""How fast the small model's LLM learns to look something up in an image, per learning rate.

    python benchmarks/retrieval_lr.py                       # 2e-4 5e-4 1e-3 2e-3, 600 steps
    python benchmarks/retrieval_lr.py --objects 1 4 --lrs 2e-4   # binding: the text says which
    python benchmarks/retrieval_lr.py --objects 3 --lrs 2e-4 --steps 1500 --recall 1

The bare decoder of ``train.presets.small`` (transformers' Qwen2 blocks, the model's own std-0.02
init, AdamW (0.9, 0.95), clipping 1.0) on the core of pointing, with no vision side: a prefix of
32 "image tokens" (unit-RMS vectors: noise + a fixed code per position, as the image
embeddings reach the LLM), one of which also carries an object vector; after two text tokens
the LLM must name the position of the marked token (32 classes, chance 0.03). Printed: held-out
accuracy every 100 steps, per learning rate, measured side by side in one run. This is why
``TrainConfig`` defaults to 2e-4: at 2e-3 the full model's loss fell smoothly for thousands of
steps (it learned the answer format) while it never learned to use the image.

``--objects K`` marks K tokens with K different object vectors and the text names one of them:
the LLM must bind the word to the token carrying that vector (what "the red object" among
several objects asks, and what the trained models do not do yet). K = 1 is the task above,
where the word can be ignored. Measured (batch 16, 1,200 steps): K = 1 reaches 1.00 by step
400 at 2e-4, while K = 3 stays at 1/K (0.30-0.37 at 2e-4, 0.28-0.30 at 5e-4, 0.19-0.26 at
1e-3): the LLM finds the marked tokens but does not learn which one the word names.

Why, and the fix the trainer uses: the word must first be copied forward to the answering
position, and neither that copy nor the lookup it feeds is rewarded before the other exists.
Putting the text before the image (``--query-first``) does not help (K = 3: 0.30, K = 2: 0.48
at step 1,500, 2e-4).
``--recall W`` adds the trainer's query-recall loss in miniature (the answering position must
also name the word, weight W); see the README for the figures it gives.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from videomolmo_ros.model.videomolmo import qwen2_config
from videomolmo_ros.train.presets import small

TOKENS = 32
CLASSES = 7  # object vectors (think colours)


class Task:
    """Fixed position codes and object vectors; batches of (embeddings, target position)."""

    def __init__(self, llm: torch.nn.Module, width: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.llm, self.width, self.generator = llm, width, generator
        self.positions = torch.randn(TOKENS, width, generator=generator) * 4 / math.sqrt(width)
        self.objects = torch.randn(CLASSES, width, generator=generator) * 12 / math.sqrt(width)

    def batch(self, size: int, objects: int = 1,
              query_first: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``objects`` marked tokens (distinct positions and vectors); the text names the first,
        after the image or (``query_first``) before it, the answer read at the last token.
        Returns (input embeddings, target position, the named object's class)."""
        g = self.generator
        image = torch.randn(size, TOKENS, self.width, generator=g) * 2 / math.sqrt(self.width)
        image = image + self.positions[None]
        places = torch.rand(size, TOKENS, generator=g).argsort(1)[:, :objects]  # (B, K)
        kinds = torch.rand(size, CLASSES, generator=g).argsort(1)[:, :objects]  # (B, K)
        rows = torch.arange(size)[:, None].expand(-1, objects)
        image[rows, places] += self.objects[kinds]
        where, what = places[:, 0], kinds[:, 0]
        image = F.rms_norm(image, (self.width,))
        text = torch.stack([torch.full((size,), 50), 40 + what, torch.full((size,), 51)], 1)
        bos = torch.zeros(size, 1, dtype=torch.long)
        embed = self.llm.embed_tokens
        if query_first:
            answer = torch.full((size, 1), 52)
            return torch.cat([embed(bos), embed(text), image, embed(answer)], 1), where, what
        return torch.cat([embed(bos), image, embed(text)], 1), where, what


def run(lr: float, steps: int, batch: int, seed: int, every: int,
        objects: int = 1, query_first: bool = False, recall: float = 0.0) -> list[float]:
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

    torch.manual_seed(seed)
    config = qwen2_config(small())
    llm = Qwen2Model(config)
    head = torch.nn.Linear(config.hidden_size, TOKENS, bias=False)
    for module in list(llm.modules()) + [head]:
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
    # The trainer's query-recall loss in miniature: the answering position names the word.
    recall_head = torch.nn.Linear(config.hidden_size, CLASSES)
    params = list(llm.parameters()) + list(head.parameters()) + list(recall_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-6)
    task = Task(llm, config.hidden_size, seed)
    accuracies = []
    for step in range(1, steps + 1):
        inputs, target, word = task.batch(batch, objects, query_first)
        hidden = llm(inputs_embeds=inputs).last_hidden_state[:, -1]
        loss = F.cross_entropy(head(hidden), target)
        if recall:
            loss = loss + recall * F.cross_entropy(recall_head(hidden), word)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % every == 0:
            with torch.no_grad():
                inputs, target, _ = task.batch(256, objects, query_first)
                logits = head(llm(inputs_embeds=inputs).last_hidden_state[:, -1])
                accuracies.append(float((logits.argmax(-1) == target).float().mean()))
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-4, 5e-4, 1e-3, 2e-3])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--objects", type=int, nargs="+", default=[1],
                        help="marked tokens per image, the text naming one (1 = no binding)")
    parser.add_argument("--query-first", action="store_true",
                        help="the text before the image tokens (the answer read after them)")
    parser.add_argument("--recall", type=float, default=0.0,
                        help="weight of a query-recall loss (the answering position must name "
                             "the word; train.trainer.query_recall_loss)")
    args = parser.parse_args()
    if not all(1 <= k <= CLASSES for k in args.objects):
        parser.error(f"--objects must be in 1..{CLASSES}")
    torch.set_num_threads(args.threads)
    print(f"held-out accuracy of finding the named token among {TOKENS} (chance "
          f"{1 / TOKENS:.2f}; 1/K once the marked ones are found), small preset's LLM, "
          f"batch {args.batch}")
    print("K lr       " + " ".join(f"{s:>6}" for s in range(args.every, args.steps + 1,
                                                            args.every)) + "   seconds")
    for objects in args.objects:
        for lr in args.lrs:
            started = time.perf_counter()
            accuracies = run(lr, args.steps, args.batch, args.seed, args.every, objects,
                             args.query_first, args.recall)
            print(f"{objects} {lr:<8.0e} " + " ".join(f"{a:>6.2f}" for a in accuracies)
                  + f"   {time.perf_counter() - started:.0f}")


if __name__ == "__main__":
    main()
