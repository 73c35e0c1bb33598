"""VideoMolmoConfig: release defaults, reading a release config.json, round trips, validation."""
from __future__ import annotations

import json
import tempfile
import warnings

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model.config import (CropConfig, TemporalConfig,  # noqa: E402
                                         VideoMolmoConfig, VisionBackboneConfig)

# Molmo-7B-D-0924's config.json (the VideoMolmo release is a Molmo-7B-D fine-tune).
MOLMO_7B_D_CONFIG = {
    "architectures": ["MolmoForCausalLM"],
    "attention_layer_norm": False,
    "auto_map": {"AutoConfig": "config_molmo.MolmoConfig",
                 "AutoModelForCausalLM": "modeling_molmo.MolmoForCausalLM"},
    "clip_qkv": None,
    "embedding_size": 152064,
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 37888,
    "layer_norm_eps": 1e-06,
    "layer_norm_type": "rms",
    "max_position_embeddings": 4096,
    "model_type": "molmo",
    "norm_after": False,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "qkv_bias": True,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.43.3",
    "use_cache": True,
    "use_position_ids": True,
    "vocab_size": 152064,
    "weight_tying": False,
}


def test_defaults_are_the_release_architecture() -> None:
    config = VideoMolmoConfig()
    vision = config.vision_backbone
    assert vision.image_default_input_size == (336, 336) and vision.image_patch_size == 14
    assert vision.image_num_patch == (24, 24)
    assert vision.image_num_layers == 23 and vision.image_mlp_activations == "quick_gelu"
    assert config.vit_layers == (-2, -9)
    assert config.image_feature_dim == 2048
    assert config.llm_patches_per_crop == (12, 12)
    assert config.crops.max_crops == 12 and config.crops.overlap_margins == (4, 4)
    assert (config.temporal_heads, config.temporal_head_dim) == (16, 64)
    assert config.temporal.history_frames == 4
    assert config.mlp_hidden_size == 18944 and config.total_vocab_size == 152064 + 128
    assert config.image_padding_embed is None


def test_reads_a_release_config_json_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = VideoMolmoConfig.from_dict(MOLMO_7B_D_CONFIG)
    assert config == VideoMolmoConfig()


def test_unknown_keys_warn() -> None:
    with pytest.warns(UserWarning, match="something_new"):
        VideoMolmoConfig.from_dict({**MOLMO_7B_D_CONFIG, "something_new": 1})


def test_json_round_trip_and_release_keys() -> None:
    config = VideoMolmoConfig.tiny(image_padding_embed="pad_and_partial_pad")
    config.temporal.history_stride = 3
    with tempfile.TemporaryDirectory() as directory:
        config.save(directory)
        with open(f"{directory}/config.json", encoding="utf-8") as handle:
            data = json.load(handle)
        assert VideoMolmoConfig.from_pretrained(directory) == config
    # What the release's MolmoConfig reads is there, with its names; no auto_map.
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "embedding_size", "rope_theta", "qkv_bias",
                "layer_norm_type", "weight_tying"):
        assert key in data
    assert "auto_map" not in data
    assert data["vision_backbone"]["image_emb_dim"] == 32 and data["vit_layers"] == [-2, -4]


def test_tiny_is_small_and_consistent() -> None:
    config = VideoMolmoConfig.tiny()
    assert config.vision_backbone.image_num_patch == (8, 8)
    assert config.llm_patches_per_crop == (4, 4)
    assert config.image_feature_dim == 64
    assert config.num_hidden_layers <= 4 and config.hidden_size <= 128


def test_nested_sections_from_plain_dicts() -> None:
    config = VideoMolmoConfig.tiny(temporal={"enabled": False},
                                   crops={"max_crops": 2, "overlap_margins": [2, 2]})
    assert isinstance(config.temporal, TemporalConfig) and not config.temporal.enabled
    assert isinstance(config.crops, CropConfig) and config.crops.overlap_margins == (2, 2)


@pytest.mark.parametrize("overrides, message", [
    (dict(layer_norm_type="default"), "layer_norm_type"),
    (dict(norm_after=True), "norm_after"),
    (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(vit_layers=(-9,)), "outside"),
    (dict(crops=CropConfig(overlap_margins=(3, 3))), "multiples of the pooling"),
    (dict(crops=CropConfig(overlap_margins=(4, 4))), "no patches"),
    (dict(image_padding_embed="regress"), "image_padding_embed"),
    (dict(vision_backbone=VisionBackboneConfig(image_num_heads=3)), "image_head_dim"),
    (dict(temporal=TemporalConfig(history_stride=0)), "history_stride"),
])
def test_rejects_what_cannot_be_built(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VideoMolmoConfig.tiny(**overrides)
