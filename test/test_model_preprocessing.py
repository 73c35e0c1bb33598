"""Molmo multi-crop pre-processing: resize/pad, tiling, crops, image tokens and their layout."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.preprocessing import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,  # noqa: E402
                                                ImageTokenIds, MultiCropPreprocessor,
                                                black_frame, crop_frame, image_tokens,
                                                make_crop_layout, patches_to_image,
                                                patchify, resize_and_pad, select_tiling)
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402

IDS = ImageTokenIds(start=152064, end=152065, patch=152066, col=152067)  # Molmo's ids


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ pixels
def test_resize_and_pad_keeps_aspect_and_centres() -> None:
    image = np.full((50, 100, 3), 200, dtype=np.uint8)
    out, mask = resize_and_pad(image, (112, 112))
    assert out.shape == (112, 112, 3) and out.dtype == np.float32
    assert mask.shape == (112, 112) and mask.sum() == 56 * 112
    rows = np.nonzero(mask.any(axis=1))[0]
    assert (rows[0], rows[-1]) == (28, 83)  # centred: 28 rows of padding above, 28 below
    np.testing.assert_allclose(out[mask], 200 / 255, atol=1e-6)
    assert np.all(out[~mask] == 0.0)


def test_resize_is_antialiased_bilinear_in_float32() -> None:
    image = random_image(64, 64)
    out, _ = resize_and_pad(image, (32, 32))
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0, size=(32, 32),
        mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, reference, atol=1e-6)
    same, mask = resize_and_pad(image, (64, 64))  # no resize at all when the size fits
    np.testing.assert_array_equal(same, image.astype(np.float32) / 255.0)
    assert mask.all()


def test_patchify_order_is_row_major_patches_of_y_x_channel() -> None:
    image = np.arange(4 * 4 * 3).reshape(1, 4, 4, 3)
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 12)
    np.testing.assert_array_equal(patches[0, 1], image[0, 0:2, 2:4].reshape(-1))
    np.testing.assert_array_equal(patches[0, 2], image[0, 2:4, 0:2].reshape(-1))


def test_patches_to_image_inverts_patchify_channels_first() -> None:
    images = np.arange(2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3)
    back = patches_to_image(torch.from_numpy(patchify(images, 3)), 3)
    assert back.shape == (2, 3, 6, 6)
    np.testing.assert_array_equal(back.permute(0, 2, 3, 1).numpy(), images)
    with pytest.raises(ValueError, match="not a square crop"):
        patches_to_image(torch.zeros(1, 6, 27), 3)


@pytest.mark.parametrize("height, width, expected", [
    (336, 336, (1, 1)),     # fits one crop window exactly
    (480, 640, (2, 3)),
    (640, 480, (3, 2)),
    (2000, 3000, (3, 4)),   # must shrink: the 12-crop tiling that shrinks least
    (100, 100, (1, 1)),     # smaller than the margins
])
def test_select_tiling_molmo_cases(height: int, width: int, expected: tuple[int, int]) -> None:
    assert select_tiling(height - 112, width - 112, 224, 12) == expected


# ------------------------------------------------------------------------------------- crops
def test_crops_overlap_by_the_margins_and_global_view_first() -> None:
    config = VideoMolmoConfig.tiny()  # 112 px crops, window 56 px (margins 2 + 2 patches)
    image = random_image(100, 150)
    layout = make_crop_layout(100, 150, config)
    assert layout.tiling == (1, 2) and layout.window == 56 and layout.crop_size == 112
    frame = crop_frame(image, layout, config)
    assert frame.crops.shape == (3, 64, 14 * 14 * 3) and frame.masks.shape == (3, 64)
    crops = patches_to_image(frame.crops, 14).permute(0, 2, 3, 1).numpy()  # (T, 112, 112, 3)
    # Global view = the whole frame resized into one crop, normalised.
    global_view, _ = resize_and_pad(image, (112, 112))
    expected = (global_view - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(
        OPENAI_CLIP_STD, np.float32)
    np.testing.assert_allclose(crops[0], expected, atol=1e-6)
    # Neighbouring crops share window..crop_size of the left one = 0..crop_size-window.
    np.testing.assert_array_equal(crops[1][:, 56:], crops[2][:, :56])


def test_masks_follow_molmo_layout() -> None:
    config = VideoMolmoConfig.tiny()
    frame = crop_frame(random_image(100, 180), make_crop_layout(100, 180, config), config)
    masks = frame.masks.numpy()
    assert np.all(masks[-1] == -1)  # Molmo appends one row of -1
    assert np.all((masks[:-1] >= 0) & (masks[:-1] <= 1))
    assert masks[:-1].min() < 1  # a 100 x 180 frame in a 112 x 224 canvas leaves padding


def test_history_frames_use_the_keyframe_layout() -> None:
    config = VideoMolmoConfig.tiny()
    pre = MultiCropPreprocessor(config, IDS)
    keyframe_layout = pre.layout(100, 150)
    other = pre.frame(random_image(60, 200), keyframe_layout)
    assert other.layout == keyframe_layout
    assert other.crops.shape == pre.frame(random_image(100, 150)).crops.shape
    black = black_frame(keyframe_layout)
    assert black.shape == (100, 150, 3) and black.dtype == np.uint8 and not black.any()


# ------------------------------------------------------------------------------------ tokens
def molmo_bookkeeping_index(layout, config, tokens: np.ndarray, patch_id: int) -> np.ndarray:
    """Molmo's own route to the same mapping, re-derived independently: number the kept pooled
    patches crop by crop, transpose that numbering into the left-to-right order of the joint
    grid, and send the k-th patch in that order to the k-th <im_patch> after the global view."""
    th, tw = config.llm_patches_per_crop
    left, right = config.crops.overlap_margins
    crop = config.vision_backbone.image_num_patch[0]
    n_rows, n_cols = layout.tiling
    numbering, counter = [], 0
    for i in range(n_rows):
        for j in range(n_cols):
            y0 = 0 if i == 0 else left // 2
            x0 = 0 if j == 0 else left // 2
            h = crop - left - right + (left if i == 0 else 0) + (right if i == n_rows - 1 else 0)
            w = crop - left - right + (left if j == 0 else 0) + (right if j == n_cols - 1 else 0)
            ph, pw = -(-h // 2), -(-w // 2)
            grid = np.full((th, tw), -1)
            grid[y0:y0 + ph, x0:x0 + pw] = np.arange(counter, counter + ph * pw).reshape(ph, pw)
            counter += ph * pw
            numbering.append(grid)
    crop_major = np.stack(numbering).reshape(-1)
    raster = np.stack(numbering).reshape(n_rows, n_cols, th, tw).transpose(0, 2, 1, 3).reshape(-1)
    rank = np.empty(counter, dtype=np.int64)
    rank[raster[raster >= 0]] = np.arange(counter)
    positions = np.nonzero(tokens == patch_id)[0]
    index = np.full(crop_major.shape, -1)
    valid = crop_major >= 0
    index[valid] = positions[th * tw + rank[crop_major[valid]]]
    return np.concatenate([positions[: th * tw], index]).reshape(-1, th * tw)


@pytest.mark.parametrize("config_name, height, width", [
    ("full", 480, 640), ("full", 640, 480), ("full", 336, 336), ("full", 1080, 1920),
    ("tiny", 100, 150), ("tiny", 300, 120), ("tiny", 40, 40),
])
def test_image_tokens_match_molmo_layout(config_name: str, height: int, width: int) -> None:
    config = VideoMolmoConfig() if config_name == "full" else VideoMolmoConfig.tiny()
    layout = make_crop_layout(height, width, config)
    result = image_tokens(layout, IDS, config)
    tokens, index = result.tokens, result.patch_index
    assert index.shape == (layout.num_crops, config.llm_patches_per_crop[0] *
                           config.llm_patches_per_crop[1])
    # Every <im_patch> gets exactly one pooled patch; nothing else gets one.
    targets = index[index >= 0]
    assert len(set(targets.tolist())) == len(targets)
    assert set(targets.tolist()) == set(np.nonzero(tokens == IDS.patch)[0].tolist())
    # Two grids, each <im_start> ... <im_end>, rows closed by <im_col>.
    assert (tokens == IDS.start).sum() == 2 and (tokens == IDS.end).sum() == 2
    assert tokens[0] == IDS.start and tokens[-1] == IDS.end
    np.testing.assert_array_equal(index, molmo_bookkeeping_index(layout, config, tokens, IDS.patch))


def test_full_size_token_counts() -> None:
    config = VideoMolmoConfig()
    layout = make_crop_layout(480, 640, config)
    result = image_tokens(layout, IDS, config)
    # Global 12 x 12 grid (+12 <im_col> + start/end = 158), crops 20 x 28 (+20 + 2 = 582).
    assert len(result.tokens) == 158 + 582
    assert (result.tokens == IDS.patch).sum() == 144 + 20 * 28
    assert layout.num_crops == 7


def test_prompt_is_bos_image_text_with_shifted_index() -> None:
    config = VideoMolmoConfig.tiny()
    tokenizer = tiny_tokenizer()
    pre = MultiCropPreprocessor(config, ImageTokenIds.from_tokenizer(tokenizer))
    layout = pre.layout(100, 150)
    text = tokenizer.encode(" User: Point to the mug Assistant:", add_special_tokens=False)
    input_ids, index = pre.prompt(layout, text, tokenizer.eos_token_id)
    image = pre.image_tokens(layout)
    assert input_ids[0].item() == tokenizer.eos_token_id  # Qwen2 has no BOS: Molmo uses EOS
    assert input_ids[1:1 + len(image.tokens)].tolist() == image.tokens.tolist()
    assert input_ids[1 + len(image.tokens):].tolist() == text
    valid = index >= 0
    assert torch.all(input_ids[index[valid]] == pre.token_ids.patch)


def test_token_ids_come_from_the_tokenizer() -> None:
    ids = ImageTokenIds.from_tokenizer(tiny_tokenizer())
    assert (ids.start, ids.end, ids.patch, ids.col) == (264, 265, 266, 267)

    class NoMarkers:
        unk_token_id = 0

        def convert_tokens_to_ids(self, token: str) -> int:
            return 0

    with pytest.raises(ValueError, match="im_start"):
        ImageTokenIds.from_tokenizer(NoMarkers())
