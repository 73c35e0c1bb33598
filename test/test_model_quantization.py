"""4-bit loading through bitsandbytes (fp4, the release's, and nf4) on a tiny random model.

Which layers become ``Linear4bit``, logits against the fp32 model (quantisation noise) and
against an fp32 model holding bitsandbytes' own dequantised weights (wiring), the pointer end to
end, the memory saved, and the error when bitsandbytes is missing. Runs on the CPU
(bitsandbytes >= 0.50 has a CPU backend); skipped where bitsandbytes is not installed, except
the missing-package test.
"""
from __future__ import annotations

import copy
import sys
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from videomolmo_ros.core.frame import Frame  # noqa: E402
from videomolmo_ros.core.points import Point  # noqa: E402
from videomolmo_ros.model import quantization as quant  # noqa: E402
from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.loading import (check_quantization_available,  # noqa: E402
                                          load_videomolmo, save_release_layout)
from videomolmo_ros.model.testing import fixed_input_logits as logits  # noqa: E402
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402

torch.set_num_threads(1)

try:
    bnb = quant.import_bitsandbytes()
except RuntimeError:  # only the missing-package test runs then
    bnb = None
needs_bnb = pytest.mark.skipif(bnb is None, reason=f"needs {quant.BITSANDBYTES_REQUIREMENT}")

# Every Linear of the network but the LM head, by part (tiny config: 4 ViT blocks, 2 LLM layers).
EXPECTED_PARTS = {
    "vision_backbone.image_vit.patch_embedding": 1,
    "vision_backbone.image_vit.blocks.": 4 * 6,  # q, k, v, out, fc1, fc2
    "vision_backbone.image_pooling_2d.": 4,  # wq, wk, wv, wo
    "vision_backbone.adapter.": 4,  # the temporal module: wq, wk, wv, wo
    "vision_backbone.image_projector.": 3,  # w1, w2, w3
    "llm.layers.": 2 * 7,  # q, k, v, o, gate, up, down (the release's blocks.N.ff_out)
}


@pytest.fixture(scope="module")
def model() -> VideoMolmoModel:
    torch.manual_seed(0)
    return VideoMolmoModel(VideoMolmoConfig.tiny()).eval()


@pytest.fixture(scope="module")
def checkpoint(model: VideoMolmoModel):
    with tempfile.TemporaryDirectory() as directory:
        save_release_layout(model, directory)
        tiny_tokenizer().save_pretrained(directory)
        yield directory


class ScriptedBonus(torch.nn.Module):
    """Wraps the LM head and adds 1e3 to the logit of the next scripted token at each call."""

    def __init__(self, head: torch.nn.Linear, tokens: list[int]) -> None:
        super().__init__()
        self.head, self.tokens = head, iter(tokens)
        self.weight = head.weight  # model.device / model.dtype read it

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.head(hidden)
        out[..., next(self.tokens)] += 1e3
        return out


def agreement(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max abs error, relative L2 error and cosine similarity of two logit tensors."""
    return {"max_abs": (out - ref).abs().max().item(),
            "rel_l2": ((out - ref).norm() / ref.norm()).item(),
            "cosine": torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(),
                                                            dim=0).item()}


@needs_bnb
@pytest.mark.parametrize("kind", ["fp4", "nf4"])
def test_every_linear_but_the_head_becomes_4bit(checkpoint: str, kind: str) -> None:
    loaded = load_videomolmo(checkpoint, quantization=kind)
    layers = quant.quantized_modules(loaded)
    assert set(layers.values()) == {kind}
    for prefix, count in EXPECTED_PARTS.items():
        assert sum(name.startswith(prefix) for name in layers) == count, prefix
    assert len(layers) == sum(EXPECTED_PARTS.values())
    assert "lm_head" not in layers and type(loaded.lm_head) is torch.nn.Linear
    assert loaded.lm_head.weight.dtype == torch.float32
    assert not any(type(m) is torch.nn.Linear for n, m in loaded.named_modules() if n != "lm_head")
    for name in layers:
        layer = loaded.get_submodule(name)
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.compute_dtype == torch.bfloat16
        assert isinstance(layer.weight, bnb.nn.Params4bit) and layer.weight.bnb_quantized
        assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.blocksize == 64
        assert not layer.weight.quant_state.nested  # no double quantisation, as the release
    pooling = loaded.vision_backbone.image_pooling_2d.wq
    assert pooling.bias is not None and pooling.bias.dtype == torch.float32  # biases kept
    assert not loaded.training


@needs_bnb
@pytest.mark.parametrize("kind, min_cosine", [("fp4", 0.99), ("nf4", 0.995)])
def test_logits_close_to_the_fp32_model(model: VideoMolmoModel, checkpoint: str, kind: str,
                                        min_cosine: float) -> None:
    """Quantisation noise only: observed on this tiny random model (std 0.02 weights) fp4
    cosine 0.9930, rel L2 0.119, max abs 0.069 of logits up to 0.54; nf4 0.9968, 0.080, 0.062."""
    ref = logits(model)
    for dtype in ("fp32", "bf16"):
        stats = agreement(logits(load_videomolmo(checkpoint, dtype=dtype, quantization=kind)), ref)
        print(kind, dtype, {k: round(v, 5) for k, v in stats.items()})
        assert stats["cosine"] > min_cosine - (0.002 if dtype == "bf16" else 0.0), stats
        assert stats["rel_l2"] < 0.2 and stats["max_abs"] < 0.15, stats


@needs_bnb
@pytest.mark.parametrize("kind", ["fp4", "nf4"])
def test_4bit_model_computes_with_bitsandbytes_dequantised_weights(
        model: VideoMolmoModel, checkpoint: str, kind: str) -> None:
    """Wiring: the 4-bit model (fp32 compute) matches an fp32 model whose Linear weights are
    replaced by bitsandbytes' own quantise -> dequantise of them (head untouched)."""
    import bitsandbytes.functional as bnb_functional

    fake = copy.deepcopy(model)
    with torch.no_grad():
        for name in quant.linears_to_quantize(fake):
            weight = fake.get_submodule(name).weight
            packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, quant_type=kind,
                                                         compress_statistics=False)
            weight.copy_(bnb_functional.dequantize_4bit(packed, state))
    loaded = load_videomolmo(checkpoint, quantization=kind, compute_dtype="fp32")
    stats = agreement(logits(loaded), logits(fake))
    print(kind, {k: round(v, 6) for k, v in stats.items()})
    # AVX512-BF16 CPUs run the fast 4-bit kernel in bf16 whatever the compute dtype: not 1e-6.
    assert stats["cosine"] > 0.9999 and stats["rel_l2"] < 0.01, stats


@needs_bnb
def test_quantised_weights_take_less_memory(model: VideoMolmoModel, checkpoint: str) -> None:
    full = quant.weight_bytes(model)
    for kind in ("fp4", "nf4"):
        loaded = load_videomolmo(checkpoint, quantization=kind)
        total = quant.weight_bytes(loaded)  # before any forward (CPU kernels repack lazily)
        names = list(quant.quantized_modules(loaded))
        fp_layers = sum(p.numel() * 4 for n in names for p in model.get_submodule(n).parameters())
        q_layers = sum(quant.weight_bytes(loaded.get_submodule(n)) for n in names)
        print(kind, f"model {full} -> {total} bytes; 4-bit layers {fp_layers} -> {q_layers}")
        # 4 bits + one fp32 absmax per 64 weights (+ fp32 biases, a 16-entry code table per
        # layer) against 32 bits: 0.14 for big layers, a little more for the tiny ones here.
        assert q_layers < 0.2 * fp_layers
        assert total < 0.4 * full
        assert full - total == pytest.approx(fp_layers - q_layers)


@needs_bnb
def test_pointer_end_to_end_in_fp4(checkpoint: str) -> None:
    from videomolmo_ros.model.pointer import VideoMolmoPointer

    pointer = VideoMolmoPointer.from_pretrained(checkpoint, quantization="fp4", max_new_tokens=4)
    assert quant.quantized_modules(pointer.model)["vision_backbone.adapter.wq"] == "fp4"
    rng = np.random.default_rng(1)
    video = [Frame("cam", i, 1_000 * i, rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
             for i in range(3)]
    history = [pointer.encode(f) for f in video[:2]][::-1]
    features = pointer.encode(video[2])
    assert features.features.dtype == torch.float32 and torch.isfinite(features.features).all()
    # The real (random) head: runs the whole 4-bit network, answers are noise.
    result = pointer.point(video[2], features, history, ["the mug", "the cup"])
    assert len(result) == 2 and all(isinstance(points, list) for points in result)
    assert len(pointer.last_texts) == 2
    # A parseable answer through the same 4-bit network: the real head's logits plus a large
    # bonus on the scripted token of each step.
    answer = pointer.tokenizer.encode('<point x="25.0" y="50.0" alt="mug">mug</point>',
                                      add_special_tokens=False) + [pointer.eos_id]
    pointer.model.lm_head = ScriptedBonus(pointer.model.lm_head, answer)
    pointer.max_new_tokens = len(answer)
    assert pointer.point(video[2], features, history, ["mug"]) == [[Point(30.0, 45.0, "mug")]]


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                               checkpoint: str) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    for call in (lambda: check_quantization_available("fp4"),
                 lambda: load_videomolmo(checkpoint, quantization="nf4"),
                 lambda: quant.quantize_model(torch.nn.Sequential(torch.nn.Linear(64, 64)))):
        with pytest.raises(RuntimeError, match=r"pip install bitsandbytes==0\.50\.2") as info:
            call()
        assert isinstance(info.value, quant.QuantizationUnavailableError)
        assert info.value.__suppress_context__ and "\n" not in str(info.value)


def test_quantization_argument_checks() -> None:
    check_quantization_available(None)
    with pytest.raises(ValueError, match="quantization"):
        check_quantization_available("int3")
    if bnb is None:
        return
    check_quantization_available("fp4", "cpu")
    with pytest.raises(RuntimeError, match="meta"):
        check_quantization_available("nf4", "meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            check_quantization_available("fp4", "cuda")


@needs_bnb
def test_a_4bit_model_is_not_saved_as_a_release_checkpoint(checkpoint: str) -> None:
    loaded = load_videomolmo(checkpoint, quantization="fp4")
    with tempfile.TemporaryDirectory() as directory, pytest.raises(ValueError, match="4-bit"):
        save_release_layout(loaded, directory)
