"""Building SAM2 for the backend: config names, input size, checkpoint loading and its errors."""
from __future__ import annotations

import os
import tempfile

import pytest

pytest.importorskip("sam2", reason="sam2 is not installed (pip install --no-deps sam2==1.1.0)")
import torch  # noqa: E402
from hydra import compose  # noqa: E402

from videomolmo_ros.segment.sam2_backend import Sam2Segmenter  # noqa: E402
from videomolmo_ros.segment.sam2_build import (Sam2BuildError, build_model,  # noqa: E402
                                               config_file, size_overrides)

SMALL = 64  # px: fastest input size that every hiera config accepts


@pytest.mark.parametrize("name, expected", [
    ("sam2.1_hiera_t", "configs/sam2.1/sam2.1_hiera_t.yaml"),
    ("sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml"),
    ("SAM2.1-Hiera-Small", "configs/sam2.1/sam2.1_hiera_s.yaml"),
    ("sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml"),
    ("sam2_hiera_b+", "configs/sam2/sam2_hiera_b+.yaml"),
    ("sam2_hiera_large", "configs/sam2/sam2_hiera_l.yaml"),
    ("configs/sam2.1/sam2.1_hiera_l.yaml", "configs/sam2.1/sam2.1_hiera_l.yaml"),
    ("sam2.1_hiera_t.yaml", "configs/sam2.1/sam2.1_hiera_t.yaml"),
])
def test_config_names(name: str, expected: str) -> None:
    assert config_file(name) == expected


@pytest.mark.parametrize("name", ["sam3_hiera_t", "sam2.1_hiera_huge", "hiera_t", ""])
def test_unknown_config_names(name: str) -> None:
    with pytest.raises(Sam2BuildError, match="unknown SAM2 config"):
        config_file(name)


def test_names_agree_with_the_package_table() -> None:
    """Every Hugging Face id the package knows maps to the config the package pairs it with."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    assert len(HF_MODEL_ID_TO_FILENAMES) == 8
    for model_id, (cfg, _) in HF_MODEL_ID_TO_FILENAMES.items():
        assert config_file(model_id) == cfg


@pytest.mark.parametrize("version", ["sam2", "sam2.1"])
@pytest.mark.parametrize("size", ["t", "s", "b+", "l"])
def test_every_config_composes_with_a_size_override(version: str, size: str) -> None:
    cfg = compose(config_name=config_file(f"{version}_hiera_{size}"),
                  overrides=size_overrides(256))
    assert cfg.model.image_size == 256
    assert list(cfg.model.memory_attention.layer.cross_attention.feat_sizes) == [16, 16]


def test_image_size_must_be_a_multiple_of_32() -> None:
    with pytest.raises(Sam2BuildError, match="multiple of 32"):
        build_model("sam2.1_hiera_t", random_weights=True, image_size=100)


def test_checkpoint_is_required_unless_random_weights() -> None:
    with pytest.raises(Sam2BuildError, match="random_weights=True"):
        Sam2Segmenter("sam2.1_hiera_t")


def test_missing_and_unreadable_checkpoints() -> None:
    with tempfile.TemporaryDirectory() as folder:
        with pytest.raises(Sam2BuildError, match="not found"):
            Sam2Segmenter("sam2.1_hiera_t", os.path.join(folder, "absent.pt"))
        junk = os.path.join(folder, "junk.pt")
        with open(junk, "w") as f:
            f.write("not a checkpoint")
        with pytest.raises(Sam2BuildError, match="cannot read"):
            Sam2Segmenter("sam2.1_hiera_t", junk)


def test_checkpoint_round_trip_and_mismatches() -> None:
    donor = build_model("sam2.1_hiera_t", random_weights=True, seed=3, image_size=SMALL)
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        good = os.path.join(folder, "good.pt")
        torch.save({"model": state}, good)  # the released layout
        seg = Sam2Segmenter("sam2.1_hiera_t", good, image_size=SMALL, seed=99)
        loaded = seg.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())

        bad = dict(state)
        dropped = sorted(bad)[0]
        del bad[dropped]
        bad["extra.weight"] = torch.zeros(1)
        bad["no_mem_embed"] = torch.zeros(1, 1, 7)
        path = os.path.join(folder, "bad.pt")
        torch.save(bad, path)  # a bare state dict is accepted too
        with pytest.raises(Sam2BuildError) as err:
            Sam2Segmenter("sam2.1_hiera_t", path, image_size=SMALL)
        text = str(err.value)
        assert f"missing keys (1): {dropped}" in text
        assert "unexpected keys (1): extra.weight" in text
        assert "no_mem_embed: checkpoint (1, 1, 7) vs model (1, 1, 256)" in text

        # A SAM 2.1 checkpoint under a SAM 2 config: wrong version, listed keys.
        with pytest.raises(Sam2BuildError, match=r"unexpected keys \(\d+\): .*no_obj_embed"):
            Sam2Segmenter("sam2_hiera_t", good, image_size=SMALL)


def test_dtype_names() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        Sam2Segmenter("sam2.1_hiera_t", random_weights=True, dtype="int8")
