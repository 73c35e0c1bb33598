"""The temporal module M: 2x2 windows, window-local cross-attention, f^ = f + M(f, f*)."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.temporal import TemporalModule, context_mean, to_windows  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def config() -> VideoMolmoConfig:
    return VideoMolmoConfig.tiny()


@pytest.fixture(scope="module")
def module(config: VideoMolmoConfig) -> TemporalModule:
    torch.manual_seed(0)
    return TemporalModule(config).eval()


def test_windows_group_2x2_patches_per_crop() -> None:
    b, t, rows, cols, c = 1, 2, 4, 6, 3
    features = torch.arange(b * t * rows * cols * c, dtype=torch.float32)
    features = features.reshape(b, t, rows * cols, c)
    windows = to_windows(features, (rows, cols))
    assert windows.shape == (b * t * (rows // 2) * (cols // 2), 4, c)
    grid = features.reshape(b, t, rows, cols, c)
    index = 0
    for crop in range(t):
        for r in range(rows // 2):
            for col in range(cols // 2):
                expected = grid[0, crop, 2 * r:2 * r + 2, 2 * col:2 * col + 2].reshape(4, c)
                assert torch.equal(windows[index], expected)
                index += 1


def test_odd_grids_are_zero_padded_like_molmo() -> None:
    features = torch.ones(1, 1, 3 * 3, 2)
    windows = to_windows(features, (3, 3))
    assert windows.shape == (4, 4, 2)
    assert windows[3].sum() == 2  # bottom-right window: one real patch, three padded ones


def test_context_is_the_running_mean_of_the_history() -> None:
    torch.manual_seed(1)
    history = [torch.randn(3, 16, 8) for _ in range(4)]
    torch.testing.assert_close(context_mean(history), torch.stack(history).mean(0))
    assert torch.equal(context_mean(history[:1]), history[0])
    with pytest.raises(ValueError):
        context_mean([])


def test_shapes_and_no_biases_at_release_size() -> None:
    module = TemporalModule(VideoMolmoConfig())
    assert module.wq.weight.shape == (1024, 2048) and module.wo.weight.shape == (2048, 1024)
    assert all(linear.bias is None for linear in (module.wq, module.wk, module.wv, module.wo))
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out)).
    expected = math.sqrt(2.0 / (2048 + 1024))
    for linear in (module.wq, module.wk, module.wv, module.wo):
        assert abs(linear.weight.std().item() - expected) / expected < 0.02
        assert abs(linear.weight.mean().item()) < 1e-3


def test_zero_output_projection_gives_identity(config: VideoMolmoConfig) -> None:
    module = TemporalModule(config)
    torch.nn.init.zeros_(module.wo.weight)
    current, context = torch.randn(10, 4, config.image_feature_dim), torch.randn(10, 4, 64)
    assert torch.equal(module.fuse(current, context), current)


def test_matches_a_direct_cross_attention(module: TemporalModule, config: VideoMolmoConfig) -> None:
    torch.manual_seed(2)
    current, context = torch.randn(5, 4, 64), torch.randn(5, 4, 64)
    heads, dim = config.temporal_heads, config.temporal_head_dim
    q = (current @ module.wq.weight.T).view(5, 4, heads, dim)
    k = (context @ module.wk.weight.T).view(5, 4, heads, dim)
    v = (context @ module.wv.weight.T).view(5, 4, heads, dim)
    weights = torch.softmax(torch.einsum("wqhd,wkhd->whqk", q, k) / math.sqrt(dim), dim=-1)
    out = torch.einsum("whqk,wkhd->wqhd", weights, v).reshape(5, 4, heads * dim)
    torch.testing.assert_close(module(current, context), out @ module.wo.weight.T)


def test_a_context_change_in_one_window_changes_only_that_window(
        module: TemporalModule, config: VideoMolmoConfig) -> None:
    torch.manual_seed(3)
    grid = config.vision_backbone.image_num_patch  # 8 x 8 patches -> 16 windows per crop
    features = torch.randn(1, 2, grid[0] * grid[1], 64)
    history = torch.randn(1, 2, grid[0] * grid[1], 64)
    perturbed = history.clone().reshape(1, 2, grid[0], grid[1], 64)
    perturbed[0, 1, 2:4, 4:6] += 5.0  # crop 1, window row 1, window col 2
    perturbed = perturbed.reshape(history.shape)
    with torch.no_grad():
        base = module.fuse(to_windows(features, grid), to_windows(history, grid))
        changed = module.fuse(to_windows(features, grid), to_windows(perturbed, grid))
    differs = (base != changed).any(dim=-1).any(dim=-1)
    target = 16 + 1 * 4 + 2  # windows of crop 0 come first, then row-major windows of crop 1
    assert differs.nonzero().flatten().tolist() == [target]


def test_model_temporal_enabled_disabled_and_identity(config: VideoMolmoConfig) -> None:
    torch.manual_seed(4)
    model = VideoMolmoModel(config).eval()
    off = VideoMolmoModel(VideoMolmoConfig.tiny(temporal={"enabled": False})).eval()
    assert off.vision_backbone.adapter is None
    assert not any("adapter" in name for name, _ in off.named_parameters())
    features = torch.randn(1, 3, 64, 64)
    history = [torch.randn(1, 3, 64, 64) for _ in range(4)]
    with torch.no_grad():
        plain = model.image_embeddings(features)
        temporal = model.image_embeddings(features, history)
        assert plain.shape == temporal.shape == (1, 3, 16, config.hidden_size)
        assert not torch.allclose(plain, temporal)
        # Disabled: history is ignored (the model is Molmo).
        off.load_state_dict({k: v for k, v in model.state_dict().items() if "adapter" not in k})
        torch.testing.assert_close(off.image_embeddings(features, history), plain)
        # Zero wo: M contributes nothing, with or without history.
        torch.nn.init.zeros_(model.vision_backbone.adapter.wo.weight)
        torch.testing.assert_close(model.image_embeddings(features, history), plain)
