"""Checkpoints in the release layout: ``config.json`` + safetensors shards (+ index).

The VideoMolmo release (``ghazishazan/VideoMolmo``) and Molmo-7B-D-0924 store Molmo's parameter
names under ``model.``; this module maps them, strictly, onto ``VideoMolmoModel``:

=================================================  ============================================
release name (``model.`` prefix omitted)            here
=================================================  ============================================
transformer.wte.embedding / .new_embedding          llm.embed_tokens.weight (rows concatenated)
transformer.blocks.N.att_proj.{weight,bias}         llm.layers.N.self_attn.{q,k,v}_proj (split
                                                    [q | k | v] along the output rows)
transformer.blocks.N.attn_out.weight                llm.layers.N.self_attn.o_proj.weight
transformer.blocks.N.attn_norm / ff_norm .weight    llm.layers.N.input_ / post_attention_layernorm
transformer.blocks.N.ff_proj.weight                 llm.layers.N.mlp.{up,gate}_proj ([x | gate])
transformer.blocks.N.ff_out.weight                  llm.layers.N.mlp.down_proj.weight
transformer.ln_f.weight / transformer.ff_out.weight llm.norm.weight / lm_head.weight
vision_backbone.image_vit.transformer.resblocks.N.  vision_backbone.image_vit.blocks.N.
  attention.{wq,wk,wv,wo} / feed_forward.{w1,w2}      self_attn.{q,k,v,out}_proj / mlp.{fc1,fc2}
  attention_norm / ffn_norm                           layer_norm1 / layer_norm2
vision_backbone.{image_vit.*, image_pooling_2d.*,   same names
  adapter.* (temporal), image_projector.*, pad_embed}
=================================================  ============================================

Every checkpoint tensor must be used and every model parameter filled, with the right shape; a
``CheckpointMismatchError`` lists what is missing and what is unexpected (release names). No code
from the checkpoint is ever run (``trust_remote_code`` is never used); ``.bin`` pickles are not
read. 4-bit loading (``quantization="fp4"``, the release's, or ``"nf4"``) replaces every Linear
but the LM head with bitsandbytes' ``Linear4bit`` after the fp weights are loaded (see
``videomolmo_ros.model.quantization``); it runs on CUDA and on the CPU, and without bitsandbytes
it stops with a message that says what to install.
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from typing import Any, Iterable, Mapping

import torch

from videomolmo_ros.model import quantization as quant
from videomolmo_ros.model.config import VideoMolmoConfig
from videomolmo_ros.model.videomolmo import VideoMolmoModel

PREFIX = "model."
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
MOLMO_TOKENIZER = "allenai/Molmo-7B-D-0924"  # the tokenizer VideoMolmo's release uses
QUANTIZATION_TYPES = quant.QUANT_TYPES  # bitsandbytes 4-bit; the release's default is fp4

# ViT block: release suffix -> CLIPEncoderLayer suffix.
_VIT_BLOCK_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.out_proj",
    "feed_forward.w1": "mlp.fc1",
    "feed_forward.w2": "mlp.fc2",
    "attention_norm": "layer_norm1",
    "ffn_norm": "layer_norm2",
}
_VIT_BLOCK_NAMES_BACK = {ours: theirs for theirs, ours in _VIT_BLOCK_NAMES.items()}
_RELEASE_VIT_BLOCK = re.compile(r"^image_vit\.transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_LOCAL_VIT_BLOCK = re.compile(r"^image_vit\.blocks\.(\d+)\.(.+)\.(weight|bias)$")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the model built from its config."""

    def __init__(self, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 wrong_shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
                 source: str = "") -> None:
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.wrong_shapes = dict(wrong_shapes or {})
        lines = [f"checkpoint {source} does not match the model".replace("  ", " ")]
        for title, names in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
            if names:
                lines.append(f"{len(names)} {title}:")
                lines += [f"  {name}" for name in names[:50]]
                if len(names) > 50:
                    lines.append(f"  ... and {len(names) - 50} more")
        if self.wrong_shapes:
            lines.append(f"{len(self.wrong_shapes)} keys with wrong shapes (checkpoint vs model):")
            lines += [f"  {name}: {tuple(got)} vs {tuple(want)}"
                      for name, (got, want) in sorted(self.wrong_shapes.items())[:50]]
        super().__init__("\n".join(lines))


# ------------------------------------------------------------------------------ name mapping
def to_release_state_dict(model: VideoMolmoModel) -> dict[str, torch.Tensor]:
    """The model's parameters under the release's names, with fused att_proj / ff_proj."""
    config = model.config
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    embedding = state["llm.embed_tokens.weight"]
    out[PREFIX + "transformer.wte.embedding"] = embedding[: config.embedding_size]
    out[PREFIX + "transformer.wte.new_embedding"] = embedding[config.embedding_size:]
    for i in range(config.num_hidden_layers):
        ours, theirs = f"llm.layers.{i}.", f"{PREFIX}transformer.blocks.{i}."
        for kind in ("weight", "bias"):
            out[theirs + f"att_proj.{kind}"] = torch.cat(
                [state[ours + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
        out[theirs + "attn_out.weight"] = state[ours + "self_attn.o_proj.weight"]
        out[theirs + "attn_norm.weight"] = state[ours + "input_layernorm.weight"]
        out[theirs + "ff_norm.weight"] = state[ours + "post_attention_layernorm.weight"]
        # Molmo's SwiGLU: x, gate = ff_proj(h).chunk(2) -> silu(gate) * x; x is Qwen2's up_proj.
        out[theirs + "ff_proj.weight"] = torch.cat(
            [state[ours + "mlp.up_proj.weight"], state[ours + "mlp.gate_proj.weight"]], dim=0)
        out[theirs + "ff_out.weight"] = state[ours + "mlp.down_proj.weight"]
    out[PREFIX + "transformer.ln_f.weight"] = state["llm.norm.weight"]
    out[PREFIX + "transformer.ff_out.weight"] = state["lm_head.weight"]
    for name, tensor in state.items():
        if not name.startswith("vision_backbone."):
            continue
        local = name[len("vision_backbone."):]
        block = _LOCAL_VIT_BLOCK.match(local)
        if block:
            index, module, kind = block.groups()
            release_module = _VIT_BLOCK_NAMES_BACK[module]
            local = f"image_vit.transformer.resblocks.{index}.{release_module}.{kind}"
        out[PREFIX + "vision_backbone." + local] = tensor
    return out


def from_release_state_dict(release: Mapping[str, torch.Tensor],
                            config: VideoMolmoConfig) -> dict[str, torch.Tensor]:
    """Release names -> ``VideoMolmoModel`` names (splitting the fused projections).

    Assumes the key set was checked (``check_release_keys``); raises KeyError otherwise.
    """
    out: dict[str, torch.Tensor] = {}
    out["llm.embed_tokens.weight"] = torch.cat(
        [release[PREFIX + "transformer.wte.embedding"],
         release[PREFIX + "transformer.wte.new_embedding"]], dim=0)
    q_size = config.hidden_size
    kv_size = config.num_key_value_heads * config.head_dim
    for i in range(config.num_hidden_layers):
        ours, theirs = f"llm.layers.{i}.", f"{PREFIX}transformer.blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = torch.split(release[theirs + f"att_proj.{kind}"], [q_size, kv_size, kv_size])
            out[ours + f"self_attn.q_proj.{kind}"] = q
            out[ours + f"self_attn.k_proj.{kind}"] = k
            out[ours + f"self_attn.v_proj.{kind}"] = v
        out[ours + "self_attn.o_proj.weight"] = release[theirs + "attn_out.weight"]
        out[ours + "input_layernorm.weight"] = release[theirs + "attn_norm.weight"]
        out[ours + "post_attention_layernorm.weight"] = release[theirs + "ff_norm.weight"]
        up, gate = torch.chunk(release[theirs + "ff_proj.weight"], 2, dim=0)
        out[ours + "mlp.up_proj.weight"] = up
        out[ours + "mlp.gate_proj.weight"] = gate
        out[ours + "mlp.down_proj.weight"] = release[theirs + "ff_out.weight"]
    out["llm.norm.weight"] = release[PREFIX + "transformer.ln_f.weight"]
    out["lm_head.weight"] = release[PREFIX + "transformer.ff_out.weight"]
    vision_prefix = PREFIX + "vision_backbone."
    for name, tensor in release.items():
        if not name.startswith(vision_prefix):
            continue
        local = name[len(vision_prefix):]
        block = _RELEASE_VIT_BLOCK.match(local)
        if block:
            index, module, kind = block.groups()
            if module not in _VIT_BLOCK_NAMES:
                raise KeyError(name)
            local = f"image_vit.blocks.{index}.{_VIT_BLOCK_NAMES[module]}.{kind}"
        out["vision_backbone." + local] = tensor
    return out


def expected_release_shapes(config: VideoMolmoConfig) -> dict[str, tuple[int, ...]]:
    """Release name -> shape of every tensor a checkpoint for ``config`` must hold."""
    with torch.device("meta"):
        model = VideoMolmoModel(config)
    return {name: tuple(t.shape) for name, t in to_release_state_dict(model).items()}


def check_release_keys(shapes: Mapping[str, tuple[int, ...]], config: VideoMolmoConfig,
                       source: str = "") -> None:
    """Raise ``CheckpointMismatchError`` unless ``shapes`` (name -> shape) is exactly what a
    checkpoint for ``config`` holds."""
    expected = expected_release_shapes(config)
    missing = expected.keys() - shapes.keys()
    unexpected = shapes.keys() - expected.keys()
    wrong = {name: (tuple(shapes[name]), expected[name])
             for name in expected.keys() & shapes.keys() if tuple(shapes[name]) != expected[name]}
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(missing, unexpected, wrong, source)


# ----------------------------------------------------------------------------- files on disk
def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """A local directory, or a repository id already in the local Hugging Face cache."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=path, local_files_only=True)
    except Exception as error:  # not a repo id, or not cached: never download from here
        raise FileNotFoundError(
            f"{path!r} is neither a directory nor a repository in the local Hugging Face cache "
            "(this loader never downloads; fetch it first, e.g. with `hf download`)") from error


def checkpoint_files(directory: str) -> dict[str, list[str]]:
    """Shard file -> tensor names, from the index (or the single ``model.safetensors``)."""
    index_path = os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as handle:
            weight_map: dict[str, str] = json.load(handle)["weight_map"]
        files: dict[str, list[str]] = defaultdict(list)
        for name, filename in weight_map.items():
            files[filename].append(name)
        return dict(files)
    single = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return {WEIGHTS_NAME: list(handle.keys())}
    raise FileNotFoundError(f"no {WEIGHTS_INDEX_NAME} or {WEIGHTS_NAME} in {directory} "
                            "(only safetensors checkpoints are read)")


def read_tensor_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape for every tensor of the checkpoint, read from the shard headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for filename, names in checkpoint_files(directory).items():
        with safe_open(os.path.join(directory, filename), framework="pt") as handle:
            stored = set(handle.keys())
            for name in names:
                if name not in stored:
                    raise FileNotFoundError(f"{name} is listed in the index but not in {filename}")
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def read_tensors(directory: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All checkpoint tensors on the CPU, cast to ``dtype`` when given."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for filename, names in checkpoint_files(directory).items():
        with safe_open(os.path.join(directory, filename), framework="pt") as handle:
            for name in names:
                tensor = handle.get_tensor(name)
                tensors[name] = tensor.to(dtype) if dtype is not None else tensor
    return tensors


def _infer_variant(config_dict: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Fill what the release's config.json leaves implicit from the checkpoint's tensor names:
    a temporal module (``adapter``) present or not (Molmo-7B-D has none), and Molmo-7B-D's
    padding embeddings. Explicit config keys always win."""
    names = set(names)
    config_dict = dict(config_dict)
    has_adapter = PREFIX + "vision_backbone.adapter.wq.weight" in names
    temporal = dict(config_dict.get("temporal") or {})
    temporal.setdefault("enabled", has_adapter)
    config_dict["temporal"] = temporal
    if "image_padding_embed" not in config_dict and PREFIX + "vision_backbone.pad_embed" in names:
        config_dict["image_padding_embed"] = "pad_and_partial_pad"
    return config_dict


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    aliases = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
               "bfloat16": torch.bfloat16}
    resolved = aliases.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    return resolved


def check_quantization_available(quantization: str | None,
                                 device: str | torch.device = "cpu") -> None:
    """Raise a clear error unless 4-bit loading can run on ``device``: a known type ("fp4",
    "nf4"; ValueError otherwise), bitsandbytes importable, and a CPU or an available CUDA device
    (``quantization.QuantizationUnavailableError``, a RuntimeError, otherwise)."""
    if quantization is None:
        return
    quant.check_quant_type(quantization)
    quant.import_bitsandbytes()
    quant.check_device(device)


def load_videomolmo(name_or_path: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32,
                    device: str | torch.device = "cpu", quantization: str | None = None,
                    config: VideoMolmoConfig | None = None,
                    compute_dtype: torch.dtype | str | None = None) -> VideoMolmoModel:
    """Load a checkpoint in the release layout into ``VideoMolmoModel`` (eval mode).

    name_or_path: a directory, or a repository id present in the local Hugging Face cache.
    dtype: float32 or bfloat16 (of everything not quantised). quantization: None, or
    "fp4" (the release's) / "nf4": every Linear but the LM head becomes a bitsandbytes
    ``Linear4bit``, quantised on ``device`` (CPU or CUDA). compute_dtype: what the 4-bit layers
    compute in (default bfloat16, the release's autocast). config: used instead of
    ``config.json``; the checkpoint must still match it exactly.
    """
    check_quantization_available(quantization, device)
    directory = resolve_checkpoint(name_or_path)
    dtype = _torch_dtype(dtype)
    shapes = read_tensor_shapes(directory)
    if config is None:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as handle:
            config_dict = json.load(handle)
        config = VideoMolmoConfig.from_dict(_infer_variant(config_dict, shapes))
    check_release_keys(shapes, config, source=directory)

    with torch.device("meta"):
        model = VideoMolmoModel(config)
    state = from_release_state_dict(read_tensors(directory, dtype), config)
    model.load_state_dict(state, strict=True, assign=True)
    del state  # the model holds the tensors now; quantising can free them layer by layer
    _materialize_buffers(model)
    if quantization is not None:
        quant.quantize_model(model, quantization, device=device,
                             compute_dtype=_torch_dtype(compute_dtype or torch.bfloat16))
    return model.to(device=device).eval()


def _materialize_buffers(model: VideoMolmoModel) -> None:
    """Rebuild the non-persistent buffers (RoPE frequencies) a meta-device build left empty."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    model.llm.rotary_emb = Qwen2RotaryEmbedding(model.llm.config)
    leftovers = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
                 if t.is_meta]
    if leftovers:
        raise RuntimeError(f"tensors left on the meta device after loading: {leftovers}")


def save_release_layout(model: VideoMolmoModel, directory: str | os.PathLike,
                        max_shard_bytes: int | None = None,
                        dtype: torch.dtype | None = None) -> str:
    """Write ``config.json``, safetensors shards and ``model.safetensors.index.json`` the way
    the release is stored (for tests and for checkpoints trained here), the tensors in
    ``dtype`` when given (the loader casts them back). Returns the directory."""
    from safetensors.torch import save_file

    if quant.is_quantized(model):
        raise ValueError("a 4-bit model cannot be saved in the release layout (it stores fp "
                         "weights); save the model before quantising it")

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    model.config.save(directory)
    tensors = {name: t.detach().to("cpu", dtype=dtype or t.dtype).contiguous().clone()
               for name, t in to_release_state_dict(model).items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, filename), metadata={"format": "pt"})
        weight_map.update({name: filename for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(directory, WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2,
                  sort_keys=True)
    return directory


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> Any:
    """The tokenizer from a checkpoint directory, or from Molmo-7B-D in the local HF cache
    (VideoMolmo's release ships none and uses Molmo's). Never runs remote code."""
    from transformers import AutoTokenizer

    directory = resolve_checkpoint(name_or_path if name_or_path is not None else MOLMO_TOKENIZER)
    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def has_tokenizer(directory: str) -> bool:
    """Whether a checkpoint directory carries tokenizer files."""
    return any(os.path.isfile(os.path.join(directory, name))
               for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
