"""4-bit weights through bitsandbytes, as the VideoMolmo release runs its model.

The release loads with ``BitsAndBytesConfig(load_in_4bit=True)`` and transformers' defaults:
bnb **fp4** (not nf4), blocks of 64, no double quantisation, uint8 storage, and every
``nn.Linear`` replaced by ``bnb.nn.Linear4bit`` except the output embedding (the untied LM head,
``transformer.ff_out``; the blocks' own ``ff_out`` = our ``mlp.down_proj`` *is* quantised). It
then runs under bf16 autocast (transformers' default compute dtype is fp32, but autocast runs
the matmuls in bf16), hence bf16 compute by default here. Otherwise the same: once the fp
weights are loaded, every Linear of the ViT (patch embedding, attention, MLP), the 2x2 pooling,
the projector, the temporal module and the LLM (q/k/v/o, gate/up/down) becomes a ``Linear4bit``
whose weight is a quantised ``bnb.nn.Params4bit``; biases stay in the loading dtype; ``lm_head``
is left alone. Embeddings and norms are not Linear and stay as loaded. The quantisation is
bitsandbytes' own.

bitsandbytes 0.50.2 runs this on CUDA and on the CPU. On CPUs with AVX512-BF16 it repacks a
layer's weight for a fast kernel on the first forward; that repacking needs
``in_features % 64 == 0`` and ``out_features % 32 == 0`` and crashes otherwise (the ViT's
588-wide patch embedding, most layers of tiny test models), so such layers are kept on the
generic dequantise-and-matmul path.
"""
from __future__ import annotations

import logging
from types import ModuleType
from typing import Iterable

import torch
from torch import nn

QUANT_TYPES = ("fp4", "nf4")  # fp4: the release's (transformers' default); nf4: the option
BITSANDBYTES_REQUIREMENT = "bitsandbytes==0.50.2"  # the version this was tested with
SKIPPED_MODULES = ("lm_head",)  # the release's transformer.ff_out (output embedding)
BLOCKSIZE = 64  # bitsandbytes' 4-bit default, as transformers uses it
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")
_CPU_PACK_BLOCK_N = 32  # bitsandbytes' AVX512-BF16 packing: out_features must be a multiple


class QuantizationUnavailableError(RuntimeError):
    """4-bit loading cannot run here (bitsandbytes missing, or an unusable device)."""


class _NoKernelsHubNote(logging.Filter):
    """Drops bitsandbytes' import-time note that the optional ``kernels`` package (a kernel
    fetched from the Hugging Face Hub) is missing: its own CPU kernels are used instead, and this
    project never downloads code at run time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


def import_bitsandbytes() -> ModuleType:
    """``bitsandbytes``, or a one-line error that says what to install (no chained traceback)."""
    cpu_ops_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    note_filter = _NoKernelsHubNote()
    cpu_ops_logger.addFilter(note_filter)
    try:
        import bitsandbytes
    except ImportError as error:
        raise QuantizationUnavailableError(
            f"4-bit loading (fp4/nf4) needs the bitsandbytes package, which is not importable "
            f"here ({error}); install it with `pip install {BITSANDBYTES_REQUIREMENT}` (it runs "
            "on CUDA and on the CPU), or load without quantization") from None
    finally:
        cpu_ops_logger.removeFilter(note_filter)
    return bitsandbytes


def check_quant_type(quant_type: str) -> str:
    """Validate a 4-bit type name ("fp4" or "nf4")."""
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quantization must be one of {QUANT_TYPES} or None, got {quant_type!r}")
    return quant_type


def check_device(device: str | torch.device) -> torch.device:
    """The device 4-bit layers will live on; CPU or an available CUDA device."""
    device = torch.device(device)
    if device.type not in SUPPORTED_DEVICE_TYPES:
        raise QuantizationUnavailableError(
            f"4-bit loading runs on {' or '.join(SUPPORTED_DEVICE_TYPES)} here, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QuantizationUnavailableError(
            "4-bit loading on cuda was asked for but torch sees no CUDA device; use device='cpu' "
            "(bitsandbytes runs 4-bit on the CPU too) or fix the CUDA setup")
    return device


def linears_to_quantize(model: nn.Module,
                        skip: Iterable[str] = SKIPPED_MODULES) -> list[str]:
    """Names of the plain ``nn.Linear`` modules ``quantize_model`` replaces (all but ``skip``)."""
    skip = tuple(skip)
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and name not in skip]


def quantize_model(model: nn.Module, quant_type: str = "fp4", *,
                   compute_dtype: torch.dtype = torch.bfloat16,
                   device: str | torch.device | None = None, double_quant: bool = False,
                   skip: Iterable[str] = SKIPPED_MODULES) -> list[str]:
    """Replace, in place, every ``nn.Linear`` but ``skip`` with a 4-bit ``bnb.nn.Linear4bit``.

    The weights must already be loaded (real tensors, not meta). Each layer is quantised on
    ``device`` (default: where its weight is) as soon as it is replaced, so the fp weight can be
    freed layer by layer. compute_dtype: what the 4-bit matmuls run in (bf16 = the release's
    autocast); double_quant: bitsandbytes' nested statistics (off in the release). Returns the
    names of the replaced modules.
    """
    bnb = import_bitsandbytes()
    check_quant_type(quant_type)
    names = linears_to_quantize(model, skip)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old: nn.Linear = getattr(parent, child)
        target = check_device(device if device is not None else old.weight.device)
        new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None,
                                compute_dtype=compute_dtype, compress_statistics=double_quant,
                                quant_type=quant_type, quant_storage=torch.uint8, device="meta")
        weight = bnb.nn.Params4bit(old.weight.detach(), requires_grad=False,
                                   blocksize=BLOCKSIZE, compress_statistics=double_quant,
                                   quant_type=quant_type, quant_storage=torch.uint8, module=new)
        try:
            new.weight = weight.to(target)  # Params4bit quantises when it is moved to a device
        except Exception as error:  # an old bitsandbytes without this device's backend
            raise QuantizationUnavailableError(
                f"bitsandbytes {getattr(bnb, '__version__', '?')} could not quantise {name} "
                f"({quant_type}) on {target}: {error}; tested with {BITSANDBYTES_REQUIREMENT}"
            ) from None
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.detach().to(target), requires_grad=False)
        if not _cpu_packing_fits(old.in_features, old.out_features):
            new.support_avx512bf16_for_cpu = False  # see the module docstring
        new.train(old.training)
        setattr(parent, child, new)
        del old, weight
    return names


def _cpu_packing_fits(in_features: int, out_features: int) -> bool:
    """Whether bitsandbytes' AVX512-BF16 CPU repacking can handle a layer of this shape."""
    return in_features % BLOCKSIZE == 0 and out_features % _CPU_PACK_BLOCK_N == 0


def quantized_modules(model: nn.Module) -> dict[str, str]:
    """Name -> 4-bit type of every ``Linear4bit`` in ``model`` (no bitsandbytes import)."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if type(weight).__name__ == "Params4bit":
            out[name] = str(getattr(weight, "quant_type", "?"))
    return out


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of ``model`` holds 4-bit weights."""
    return bool(quantized_modules(model))


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters, buffers and 4-bit quantisation statistics
    (absmax per block, code tables, nested statistics), each tensor counted once."""
    seen: set[int] = set()
    total = 0

    def add(tensor: torch.Tensor | None) -> None:
        nonlocal total
        if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()

    for tensor in list(model.parameters()) + list(model.buffers()):
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        while state is not None:
            add(getattr(state, "absmax", None))
            add(getattr(state, "code", None))
            add(getattr(state, "offset", None))
            state = getattr(state, "state2", None)
    return total
