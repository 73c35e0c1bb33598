"""Keyframe latency of the VideoMolmo pointer, split by stage, and the saving of encoding once.

    python benchmarks/model_latency.py                      # tiny random model, CPU, 1 thread
    python benchmarks/model_latency.py --size full --device cuda --dtype bf16   # on a GPU
    python benchmarks/model_latency.py --quantization fp4   # 4-bit (bitsandbytes), as released

Random weights, so the answers are noise and decoding always runs the full token budget
(``--new-tokens``); that makes tokens per second well defined. Stages are timed with forward
hooks on the real modules while ``VideoMolmoPointer.point`` runs:

  preprocess  multi-crop tiling, resize, normalise (encode minus the ViT)
  vision      the ViT on all crops of the keyframe (one ``encode``)
  temporal    the temporal module M (once per keyframe)
  pool+proj   2x2 attention pooling and projector (once per keyframe)
  prefill     decoder over the image prefix (once) and each query's text
  decode      one decoder step per generated token

Then the per-keyframe cost for Q = 1, 4, 8 queries of (a) this pointer: each frame encoded once
(the l history frames were encoded when they arrived), image prefix shared by the queries, and
(b) the release's way: every query re-encodes the keyframe and its l history frames and
prefills the whole prompt. Figures only; nothing asserts a speed.

``--quantization fp4|nf4`` replaces every Linear but the LM head with bitsandbytes' 4-bit
``Linear4bit`` (compute in bf16), as ``load_videomolmo(..., quantization=...)`` does; the header
line gives the bytes of the weights (4-bit statistics included) either way.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videomolmo_ros.core.frame import Frame  # noqa: E402
from videomolmo_ros.model import quantization as quant  # noqa: E402
from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.pointer import VideoMolmoPointer  # noqa: E402
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402

STAGES = ("preprocess", "vision", "temporal", "pool+proj", "prefill", "decode")


class StageTimer:
    """Wall time per stage, from forward pre/post hooks on the model's modules."""

    def __init__(self, model: VideoMolmoModel, device: torch.device) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.device = device
        self._start: dict[int, float] = {}
        backbone = model.vision_backbone
        self._watch(backbone.image_vit, lambda args: "vision")
        if backbone.adapter is not None:
            self._watch(backbone.adapter, lambda args: "temporal")
        self._watch(backbone.image_pooling_2d, lambda args: "pool+proj")
        self._watch(backbone.image_projector, lambda args: "pool+proj")
        self._watch(model.llm, lambda kwargs: "decode" if kwargs["inputs_embeds"].shape[1] == 1
                    else "prefill", with_kwargs=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _watch(self, module: torch.nn.Module, stage_of, with_kwargs: bool = False) -> None:
        def before(mod, args, kwargs=None):
            self._sync()
            self._start[id(mod)] = time.perf_counter()
            mod._bench_stage = stage_of(kwargs if with_kwargs else args)

        def after(mod, args, *rest):
            self._sync()
            stage = mod._bench_stage
            self.totals[stage] += time.perf_counter() - self._start.pop(id(mod))
            self.counts[stage] += 1

        module.register_forward_pre_hook(before, with_kwargs=with_kwargs)
        module.register_forward_hook(after, with_kwargs=with_kwargs)

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()


def timed(fn, sync) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--quantization", choices=("", "fp4", "nf4"), default="",
                        help="4-bit weights through bitsandbytes (fp4 = the release's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (shared machines)")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--queries", type=int, nargs="*", default=[1, 4, 8])
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    config = VideoMolmoConfig.tiny() if args.size == "tiny" else VideoMolmoConfig()
    if args.size == "full" and device.type != "cuda":
        parser.error("the full-size model needs a GPU (about 16 GB in bf16)")
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with device:
        model = VideoMolmoModel(config).eval()
    torch.set_default_dtype(previous_dtype)
    n_params = sum(p.numel() for p in model.parameters())
    if args.quantization:
        quant.quantize_model(model, args.quantization, device=device,
                             compute_dtype=torch.bfloat16)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    weight_mib = quant.weight_bytes(model) / 2**20
    tokenizer = tiny_tokenizer()
    if args.size == "full":  # random weights: Molmo's tokenizer is not needed, only its layout
        tokenizer = _ShiftedMarkers(tokenizer, config.embedding_size)
    pointer = VideoMolmoPointer(model, tokenizer, max_new_tokens=args.new_tokens)
    separate = VideoMolmoPointer(model, tokenizer, max_new_tokens=args.new_tokens,
                                 share_image_prefix=False)
    # Never stop early: random weights could emit end-of-text by chance.
    pointer.eos_id = separate.eos_id = -1

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rng = np.random.default_rng(0)
    l = config.temporal.history_frames
    video = [Frame("cam", i, i, rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
             for i in range(l + 1)]
    keyframe = video[-1]
    history = [pointer.encode(f) for f in video[:-1]][::-1]  # encoded when they arrived
    layout = pointer.preprocessor.layout(args.height, args.width)
    prompt_len = 1 + len(pointer.preprocessor.image_tokens(layout).tokens)
    weights = f"{args.dtype} + {args.quantization}" if args.quantization else args.dtype
    print(f"model: {args.size} ({n_params / 1e6:.2f} M parameters, {weight_mib:.2f} MiB of "
          f"weights), {weights}, {device}, "
          f"{args.threads} thread(s); frame {args.height}x{args.width} -> "
          f"{layout.num_crops} crops, {prompt_len} prompt tokens before the text; l = {l}; "
          f"{args.new_tokens} new tokens")

    timer = StageTimer(model, device)
    for _ in range(2):  # warm-up
        pointer.point(keyframe, pointer.encode(keyframe), history, ["the mug"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # ---- stage split for one keyframe, one query
    rows = defaultdict(list)
    for _ in range(args.repeats):
        timer.reset()
        encode_time, features = timed(lambda: pointer.encode(keyframe), sync)
        point_time, _ = timed(lambda: pointer.point(keyframe, features, history, ["the mug"]), sync)
        rows["preprocess"].append(encode_time - timer.totals["vision"])
        for stage in STAGES[1:]:
            rows[stage].append(timer.totals[stage])
        rows["total"].append(encode_time + point_time)
    median = {stage: statistics.median(values) for stage, values in rows.items()}
    print("\nkeyframe latency, 1 query (median of %d)" % args.repeats)
    print(f"{'stage':<12}{'ms':>10}{'share':>9}")
    for stage in STAGES:
        print(f"{stage:<12}{1e3 * median[stage]:>10.2f}{median[stage] / median['total']:>9.1%}")
    other = median["total"] - sum(median[s] for s in STAGES)
    print(f"{'other':<12}{1e3 * other:>10.2f}{other / median['total']:>9.1%}")
    print(f"{'total':<12}{1e3 * median['total']:>10.2f}")
    decode_steps = args.new_tokens - 1  # the first new token comes from the prefill's logits
    print(f"decoding: {decode_steps / median['decode']:.1f} tokens/s "
          f"({1e3 * median['decode'] / decode_steps:.2f} ms/token); "
          f"end to end {args.new_tokens / median['total']:.1f} new tokens/s")

    # ---- encode once vs the release's per-query re-encoding
    print("\nper keyframe, Q queries (median of %d)" % args.repeats)
    print(f"{'Q':>3}{'encode once ms':>17}{'re-encode ms':>15}{'saving':>9}{'ms/query':>10}")
    for q in args.queries:
        queries = [f"object {i}" for i in range(q)]
        ours, naive = [], []
        for _ in range(args.repeats):
            t_ours, _ = timed(lambda: pointer.point(keyframe, pointer.encode(keyframe), history,
                                                    queries), sync)
            ours.append(t_ours)

            def release_way() -> None:
                for query in queries:
                    encoded = [separate.encode(f) for f in video]
                    separate.point(keyframe, encoded[-1], encoded[-2::-1], [query])

            t_naive, _ = timed(release_way, sync)
            naive.append(t_naive)
        a, b = statistics.median(ours), statistics.median(naive)
        print(f"{q:>3}{1e3 * a:>17.1f}{1e3 * b:>15.1f}{1 - a / b:>9.1%}{1e3 * a / q:>10.1f}")
    if device.type == "cuda":
        print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    return 0


class _ShiftedMarkers:
    """The tiny tokenizer with its image markers moved to Molmo's rows (152064+), for timing the
    full-size architecture without Molmo's tokenizer files."""

    def __init__(self, tokenizer, offset: int) -> None:
        self._tokenizer, self._shift = tokenizer, offset - 264
        self.eos_token_id, self.bos_token_id = tokenizer.eos_token_id, None

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._tokenizer.convert_tokens_to_ids(token) + self._shift

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode([i for i in ids if i < 264], skip_special_tokens=True)


if __name__ == "__main__":
    sys.exit(main())
