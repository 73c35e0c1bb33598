"""Checkpoints in the release layout: strict key mapping, round trips, variants, dtypes, errors."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from videomolmo_ros.model import loading  # noqa: E402
from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.loading import (CheckpointMismatchError,  # noqa: E402
                                          expected_release_shapes, load_videomolmo,
                                          save_release_layout, to_release_state_dict)
from videomolmo_ros.model.testing import fixed_input_logits as logits  # noqa: E402
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402
from videomolmo_ros.model.vision import ConvPatchEmbedding, add_conv_stem  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> VideoMolmoModel:
    torch.manual_seed(0)
    return VideoMolmoModel(VideoMolmoConfig.tiny()).eval()


@pytest.fixture()
def checkpoint(model: VideoMolmoModel):
    with tempfile.TemporaryDirectory() as directory:
        save_release_layout(model, directory, max_shard_bytes=200_000)
        yield directory


def rewrite(directory: str, edit) -> None:
    """Apply ``edit(tensors) -> tensors`` to the checkpoint in place (as one shard)."""
    tensors = loading.read_tensors(directory)
    for name in os.listdir(directory):
        if name.endswith(".safetensors") or name == loading.WEIGHTS_INDEX_NAME:
            os.remove(os.path.join(directory, name))
    safetensors_torch.save_file(edit(tensors), os.path.join(directory, loading.WEIGHTS_NAME))


def test_full_size_release_names_and_shapes() -> None:
    shapes = expected_release_shapes(VideoMolmoConfig())
    assert len(shapes) == 4 + 28 * 7 + (5 + 23 * 16) + 8 + 4 + 3
    assert shapes["model.transformer.wte.embedding"] == (152064, 3584)
    assert shapes["model.transformer.wte.new_embedding"] == (128, 3584)
    assert shapes["model.transformer.blocks.0.att_proj.weight"] == (3584 + 2 * 512, 3584)
    assert shapes["model.transformer.blocks.27.att_proj.bias"] == (4608,)
    assert shapes["model.transformer.blocks.0.ff_proj.weight"] == (37888, 3584)
    assert shapes["model.transformer.blocks.0.ff_out.weight"] == (3584, 18944)
    assert shapes["model.transformer.ff_out.weight"] == (152064, 3584)
    vb = "model.vision_backbone."
    assert shapes[vb + "image_vit.patch_embedding.weight"] == (1024, 588)
    assert shapes[vb + "image_vit.positional_embedding"] == (577, 1024)
    assert shapes[vb + "image_vit.transformer.resblocks.22.feed_forward.w1.weight"] == (4096, 1024)
    assert shapes[vb + "image_pooling_2d.wq.weight"] == (1024, 2048)
    assert shapes[vb + "image_pooling_2d.wo.weight"] == (1024, 1024)
    assert shapes[vb + "adapter.wq.weight"] == (1024, 2048)
    assert shapes[vb + "adapter.wo.weight"] == (2048, 1024)
    assert vb + "adapter.wq.bias" not in shapes
    assert shapes[vb + "image_projector.w1.weight"] == (18944, 1024)
    assert shapes[vb + "image_projector.w2.weight"] == (3584, 18944)


def test_round_trip_gives_identical_outputs(model: VideoMolmoModel, checkpoint: str) -> None:
    files = os.listdir(checkpoint)
    assert "config.json" in files and loading.WEIGHTS_INDEX_NAME in files
    assert sum(name.endswith(".safetensors") for name in files) > 1
    loaded = load_videomolmo(checkpoint)
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert torch.equal(logits(model), logits(loaded))


def test_fused_projections_split_in_release_order(model: VideoMolmoModel) -> None:
    release = to_release_state_dict(model)
    layer = model.llm.layers[1]
    att_proj = release["model.transformer.blocks.1.att_proj.weight"]
    assert torch.equal(att_proj[:64], layer.self_attn.q_proj.weight)
    assert torch.equal(att_proj[64:96], layer.self_attn.k_proj.weight)
    assert torch.equal(att_proj[96:], layer.self_attn.v_proj.weight)
    ff_proj = release["model.transformer.blocks.1.ff_proj.weight"]
    assert torch.equal(ff_proj[:64], layer.mlp.up_proj.weight)  # x
    assert torch.equal(ff_proj[64:], layer.mlp.gate_proj.weight)  # gate


def test_single_file_checkpoint(model: VideoMolmoModel, checkpoint: str) -> None:
    rewrite(checkpoint, lambda tensors: tensors)
    assert torch.equal(logits(load_videomolmo(checkpoint)), logits(model))


def test_mismatch_lists_missing_unexpected_and_wrong_shapes(checkpoint: str) -> None:
    def edit(tensors: dict) -> dict:
        del tensors["model.transformer.blocks.1.ff_proj.weight"]
        del tensors["model.vision_backbone.adapter.wk.weight"]
        tensors["model.vision_backbone.image_vit.extra.weight"] = torch.zeros(2)
        tensors["model.transformer.ln_f.weight"] = torch.zeros(7)
        return tensors

    rewrite(checkpoint, edit)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_videomolmo(checkpoint)
    error = caught.value
    assert error.missing == ["model.transformer.blocks.1.ff_proj.weight",
                             "model.vision_backbone.adapter.wk.weight"]
    assert error.unexpected == ["model.vision_backbone.image_vit.extra.weight"]
    assert error.wrong_shapes == {"model.transformer.ln_f.weight": ((7,), (64,))}
    message = str(error)
    for name in error.missing + error.unexpected + list(error.wrong_shapes):
        assert name in message


def test_checkpoint_without_temporal_module_loads_as_molmo(model: VideoMolmoModel,
                                                           checkpoint: str) -> None:
    rewrite(checkpoint, lambda t: {k: v for k, v in t.items() if ".adapter." not in k})
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    del config["temporal"]  # a release-style config.json says nothing about the module
    with open(os.path.join(checkpoint, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    loaded = load_videomolmo(checkpoint)
    assert loaded.vision_backbone.adapter is None and not loaded.config.temporal.enabled


def test_explicit_config_wins_over_inference(checkpoint: str) -> None:
    rewrite(checkpoint, lambda t: {k: v for k, v in t.items() if ".adapter." not in k})
    with pytest.raises(CheckpointMismatchError, match="adapter"):
        load_videomolmo(checkpoint)  # config.json still says temporal.enabled = true


def test_padding_embeddings_variant_round_trips() -> None:
    torch.manual_seed(1)
    molmo = VideoMolmoModel(VideoMolmoConfig.tiny(image_padding_embed="pad_and_partial_pad",
                                                  temporal={"enabled": False})).eval()
    torch.nn.init.normal_(molmo.vision_backbone.pad_embed)
    with tempfile.TemporaryDirectory() as directory:
        save_release_layout(molmo, directory)
        loaded = load_videomolmo(directory)
    assert loaded.config.image_padding_embed == "pad_and_partial_pad"
    assert torch.equal(loaded.vision_backbone.pad_embed, molmo.vision_backbone.pad_embed)


def saved_and_loaded(model: VideoMolmoModel, embedding: str
                     ) -> tuple[dict[str, torch.Tensor], VideoMolmoModel]:
    """Save ``model`` in the release layout, check that its config.json names ``embedding``
    as the patch embedding, and return the saved tensors and the model loaded back."""
    with tempfile.TemporaryDirectory() as directory:
        save_release_layout(model, directory)
        assert json.loads(open(os.path.join(directory, "config.json")).read())[
            "vision_backbone"]["image_patch_embedding"] == embedding
        return loading.read_tensors(directory), load_videomolmo(directory)


def test_conv_patch_embedding_variant_round_trips() -> None:
    """image_patch_embedding "conv" (not in the release): its stem is saved under the vision
    backbone's names and loads back to the same outputs; the config says which embedding."""
    torch.manual_seed(2)
    config = VideoMolmoConfig.tiny(vision_backbone={
        **dataclasses.asdict(VideoMolmoConfig.tiny().vision_backbone),
        "image_patch_embedding": "conv"})
    conv = VideoMolmoModel(config).eval()
    assert isinstance(conv.vision_backbone.image_vit.patch_embedding, ConvPatchEmbedding)
    names, loaded = saved_and_loaded(conv, "conv")
    assert any(".patch_embedding.stem." in name for name in names)
    assert torch.equal(logits(conv), logits(loaded))
    with pytest.raises(ValueError, match="image_patch_embedding"):
        VideoMolmoConfig.tiny(vision_backbone={"image_patch_embedding": "cnn"})


@pytest.mark.parametrize("at, embedding", [("embedding", "linear+conv"),
                                           ("features", "linear+conv-features")])
def test_linear_plus_conv_variant_round_trips_and_adds_nothing_at_zero(at: str,
                                                                       embedding: str) -> None:
    """The conv branch (not in the release), at the patch embedding or at the ViT's output
    features: a linear model given it by ``add_conv_stem`` computes what it did; trained, it
    saves and loads back exactly."""
    torch.manual_seed(3)
    model = VideoMolmoModel(VideoMolmoConfig.tiny()).eval()
    before = logits(model)
    assert add_conv_stem(model.vision_backbone.image_vit, at)
    assert not add_conv_stem(model.vision_backbone.image_vit, at)  # already there: unchanged
    assert torch.equal(logits(model), before)
    torch.nn.init.normal_(model.vision_backbone.image_vit.conv_stem.linear.weight, std=0.5)
    changed = logits(model)
    assert not torch.equal(changed, before)
    names, loaded = saved_and_loaded(model, embedding)
    assert any(".conv_stem.stem." in name for name in names)
    assert any(name.endswith("image_vit.patch_embedding.weight") for name in names)
    assert torch.equal(logits(loaded), changed)


def test_a_conv_branch_at_the_features_leaves_the_vits_blocks_as_they_were() -> None:
    """"linear+conv-features" adds the branch after the blocks: every block computes what it
    did, and the features differ from the linear model's by the branch's output alone. The
    branch goes in one place: asking for the other is refused, as is an unknown place."""
    torch.manual_seed(4)
    model = VideoMolmoModel(VideoMolmoConfig.tiny()).eval()
    vit = model.vision_backbone.image_vit
    patches = torch.randn(2, vit.config.vision_backbone.image_num_patch[0] ** 2,
                          vit.config.vision_backbone.image_patch_size ** 2 * 3)
    with torch.no_grad():
        blocks_before, features_before = vit(patches), vit.patch_features(patches)
        add_conv_stem(vit, "features")
        torch.nn.init.normal_(vit.conv_stem.linear.weight, std=0.5)
        for before, after in zip(blocks_before, vit(patches)):
            assert torch.equal(before, after)
        added = vit.patch_features(patches) - features_before
        assert added.abs().max() > 0
        assert torch.allclose(added, vit.conv_stem(patches), atol=1e-5)
    with pytest.raises(ValueError, match="not to 'linear\\+conv-features'"):
        add_conv_stem(vit, "embedding")
    with pytest.raises(ValueError, match="goes at one of embedding, features"):
        add_conv_stem(VideoMolmoModel(VideoMolmoConfig.tiny()).vision_backbone.image_vit,
                      "pooling")


def test_bf16_loading(model: VideoMolmoModel, checkpoint: str) -> None:
    loaded = load_videomolmo(checkpoint, dtype="bf16")
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    reference = logits(model)
    assert torch.isfinite(logits(loaded)).all()
    assert (logits(loaded) - reference).abs().max() < 0.05 * reference.abs().max() + 1e-3
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        load_videomolmo(checkpoint, dtype=torch.float16)


def test_unknown_quantization_and_missing_checkpoint() -> None:
    # 4-bit loading itself (CPU and CUDA) is tested in test_model_quantization.py.
    with pytest.raises(ValueError, match="quantization"):
        loading.check_quantization_available("int3")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_videomolmo("no-such-owner/no-such-videomolmo-checkpoint")
    with tempfile.TemporaryDirectory() as directory, pytest.raises(FileNotFoundError):
        loading.checkpoint_files(directory)


def test_tokenizer_and_pointer_from_a_checkpoint_directory(model: VideoMolmoModel,
                                                           checkpoint: str) -> None:
    from videomolmo_ros.model.pointer import VideoMolmoPointer

    tiny_tokenizer().save_pretrained(checkpoint)
    assert loading.has_tokenizer(checkpoint)
    tokenizer = loading.load_tokenizer(checkpoint)
    assert tokenizer.encode("mug", add_special_tokens=False) == [109, 117, 103]
    pointer = VideoMolmoPointer.from_pretrained(checkpoint, max_new_tokens=3)
    assert pointer.eos_id == 256 and pointer.preprocessor.token_ids.patch == 266
    assert torch.equal(logits(pointer.model), logits(model))
