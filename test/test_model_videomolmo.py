"""VideoMolmoModel: shapes through every stage, image-token insertion, KV cache, and agreement
with an independent re-statement of the release's forward pass written on the release's own
parameter names (fused att_proj, [x | gate] ff_proj, rotate-half RoPE, attention-meanq ...)."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
F = torch.nn.functional

from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.loading import to_release_state_dict  # noqa: E402
from videomolmo_ros.model.preprocessing import ImageTokenIds, MultiCropPreprocessor  # noqa: E402
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> VideoMolmoModel:
    torch.manual_seed(0)
    return VideoMolmoModel(VideoMolmoConfig.tiny()).eval()


@pytest.fixture(scope="module")
def inputs(model: VideoMolmoModel) -> dict:
    """A 100 x 150 frame, four history frames and a prompt, pre-processed."""
    rng = np.random.default_rng(0)
    tokenizer = tiny_tokenizer()
    pre = MultiCropPreprocessor(model.config, ImageTokenIds.from_tokenizer(tokenizer))
    frames = [rng.integers(0, 256, (100, 150, 3), dtype=np.uint8) for _ in range(5)]
    keyframe = pre.frame(frames[0])
    history = [pre.frame(f, keyframe.layout) for f in frames[1:]]
    text = tokenizer.encode(" User: Point to the mug Assistant:", add_special_tokens=False)
    input_ids, index = pre.prompt(keyframe.layout, text, tokenizer.eos_token_id)
    return dict(crops=keyframe.crops, history=[h.crops for h in history], input_ids=input_ids,
                index=index, masks=keyframe.masks)


def test_shapes_through_every_stage(model: VideoMolmoModel, inputs: dict) -> None:
    config = model.config
    crops = inputs["crops"]
    t, p = crops.shape[:2]
    assert (t, p) == (3, 64) and crops.shape[2] == 14 * 14 * 3
    with torch.no_grad():
        hidden = model.vision_backbone.image_vit(crops)
        assert len(hidden) == 3 and hidden[0].shape == (t, 1 + p, 32)  # blocks 0..2 of 4 run
        features = model.encode_frame(crops)
        assert features.shape == (t, p, config.image_feature_dim)
        history = [model.encode_frame(h)[None] for h in inputs["history"]]
        image = model.image_embeddings(features[None], history)
        assert image.shape == (1, t, 16, config.hidden_size)
        embeds = model.embed_inputs(inputs["input_ids"][None], image, inputs["index"][None])
        assert embeds.shape == (1, len(inputs["input_ids"]), config.hidden_size)
        out = model(inputs["input_ids"][None], features[None], inputs["index"][None], history)
        assert out.logits.shape == (1, len(inputs["input_ids"]), config.embedding_size)
        last = model(inputs["input_ids"][None], features, inputs["index"], [h[0] for h in history],
                     logits_to_keep=1)
        torch.testing.assert_close(last.logits[:, -1], out.logits[:, -1])


def test_patch_features_concat_the_configured_layers_without_cls(model: VideoMolmoModel,
                                                                 inputs: dict) -> None:
    crops = inputs["crops"]
    with torch.no_grad():
        hidden = model.vision_backbone.image_vit(crops)
        expected = torch.cat([hidden[2], hidden[0]], dim=-1)[:, 1:]  # vit_layers (-2, -4) of 4
        torch.testing.assert_close(model.encode_frame(crops), expected)


def test_padding_crops_get_zero_features(model: VideoMolmoModel, inputs: dict) -> None:
    crops = inputs["crops"].clone()
    crops[1] = -1.0
    with torch.no_grad():
        features = model.encode_frame(crops)
    assert torch.all(features[1] == 0) and not torch.all(features[0] == 0)


def test_batch_encoding_equals_frame_by_frame(model: VideoMolmoModel, inputs: dict) -> None:
    batch = torch.stack([inputs["crops"], inputs["history"][0]])
    with torch.no_grad():
        together = model.encode_frame(batch)
        torch.testing.assert_close(together[0], model.encode_frame(inputs["crops"]))
        torch.testing.assert_close(together[1], model.encode_frame(inputs["history"][0]))


def test_image_features_are_added_at_patch_tokens_only(model: VideoMolmoModel,
                                                        inputs: dict) -> None:
    ids = inputs["input_ids"][None]
    with torch.no_grad():
        image = model.image_embeddings(model.encode_frame(inputs["crops"])[None])
        delta = model.embed_inputs(ids, image, inputs["index"][None]) - model.embed_inputs(ids)
    changed = set(delta[0].abs().sum(-1).nonzero().flatten().tolist())
    index = inputs["index"]
    assert changed == set(index[index >= 0].tolist())
    first = int(index[0, 0])
    torch.testing.assert_close(delta[0, first], image[0, 0, 0])


def test_kv_cache_continuation_matches_a_full_pass(model: VideoMolmoModel, inputs: dict) -> None:
    ids = inputs["input_ids"][None]
    with torch.no_grad():
        image = model.image_embeddings(model.encode_frame(inputs["crops"])[None])
        full = model.decode(model.embed_inputs(ids, image, inputs["index"][None])).logits
        split = ids.shape[1] - 8  # image and part of the text, then the rest of the text
        prefix = model.decode(model.embed_inputs(ids[:, :split], image, inputs["index"][None]),
                              use_cache=True, compute_logits=False)
        assert prefix.logits is None
        rest = model.decode(model.embed_inputs(ids[:, split:]), cache=prefix.cache, use_cache=True)
    torch.testing.assert_close(rest.logits, full[:, split:], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------- the release's formulation
def _release_logits(release: dict, config: VideoMolmoConfig, crops: torch.Tensor,
                    history: list[torch.Tensor], input_ids: torch.Tensor,
                    index: torch.Tensor) -> torch.Tensor:
    """The release's forward pass (memory.py), restated from its equations and parameter names."""
    def w(name: str) -> torch.Tensor:
        return release["model." + name]

    vision = config.vision_backbone
    dim, heads, hd = vision.image_emb_dim, vision.image_num_heads, vision.image_head_dim

    def attention(q_in, kv_in, prefix, biases, n_heads, head_dim):
        def proj(x, name):
            return F.linear(x, w(prefix + name + ".weight"),
                            w(prefix + name + ".bias") if biases else None)
        n = q_in.shape[0]
        q = proj(q_in, "wq").view(n, -1, n_heads, head_dim).transpose(1, 2)
        k = proj(kv_in, "wk").view(n, -1, n_heads, head_dim).transpose(1, 2)
        v = proj(kv_in, "wv").view(n, -1, n_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, q_in.shape[1], -1)
        return proj(out, "wo")

    def vit(patches: torch.Tensor) -> torch.Tensor:
        base = "vision_backbone.image_vit."
        x = patches @ w(base + "patch_embedding.weight").T
        x = torch.cat([w(base + "class_embedding").expand(x.shape[0], 1, -1), x], dim=1)
        x = x + w(base + "positional_embedding")[None]
        x = F.layer_norm(x, (dim,), w(base + "pre_ln.weight"), w(base + "pre_ln.bias"),
                         vision.image_norm_eps)
        states = []
        for i in range(vision.image_num_layers):
            p = f"{base}transformer.resblocks.{i}."
            h = F.layer_norm(x, (dim,), w(p + "attention_norm.weight"),
                             w(p + "attention_norm.bias"), vision.image_norm_eps)
            x = x + attention(h, h, p + "attention.", True, heads, hd)
            h = F.layer_norm(x, (dim,), w(p + "ffn_norm.weight"), w(p + "ffn_norm.bias"),
                             vision.image_norm_eps)
            h = F.linear(h, w(p + "feed_forward.w1.weight"), w(p + "feed_forward.w1.bias"))
            h = h * torch.sigmoid(1.702 * h)  # quick GELU
            x = x + F.linear(h, w(p + "feed_forward.w2.weight"), w(p + "feed_forward.w2.bias"))
            states.append(x)
        return torch.cat([states[layer] for layer in config.vit_layers], dim=-1)[:, 1:]

    def windows(features: torch.Tensor) -> torch.Tensor:  # 'n (h dh) (w dw) c -> (n h w) (dh dw) c'
        n, _, c = features.shape
        side = vision.image_num_patch[0]
        x = features.reshape(n, side // 2, 2, side // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, 4, c)

    features = windows(vit(crops))
    if history:
        context = torch.stack([vit(h) for h in history]).mean(0)
        features = features + attention(features, windows(context), "vision_backbone.adapter.",
                                        False, config.temporal_heads, config.temporal_head_dim)
    pooled = attention(features.mean(1, keepdim=True), features,
                       "vision_backbone.image_pooling_2d.", True, heads, hd)
    p = "vision_backbone.image_projector."
    hidden = F.silu(F.linear(pooled, w(p + "w1.weight"))) * F.linear(pooled, w(p + "w3.weight"))
    image = F.linear(hidden, w(p + "w2.weight")).reshape(-1, config.hidden_size)

    table = torch.cat([w("transformer.wte.embedding"), w("transformer.wte.new_embedding")])
    x = table[input_ids].clone()
    flat = index.reshape(-1)
    x[flat[flat >= 0]] += image[flat >= 0]

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.layer_norm_eps))

    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.head_dim
    length = x.shape[0]
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(length).float()[:, None] * inv_freq[None]
    sin, cos = torch.cat([angles, angles], -1).sin(), torch.cat([angles, angles], -1).cos()

    def rope(t):  # (heads, L, hd), rotate-half ("llama") variant
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat([-t2, t1], dim=-1) * sin

    for i in range(config.num_hidden_layers):
        b = f"transformer.blocks.{i}."
        qkv = F.linear(rms(x, w(b + "attn_norm.weight")), w(b + "att_proj.weight"),
                       w(b + "att_proj.bias"))
        q, k, v = qkv.split([n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
        q = rope(q.view(length, n_heads, head_dim).transpose(0, 1))
        k = rope(k.view(length, n_kv, head_dim).transpose(0, 1))
        k = k.repeat_interleave(n_heads // n_kv, 0)
        v = v.view(length, n_kv, head_dim).transpose(0, 1).repeat_interleave(n_heads // n_kv, 0)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        att = att.transpose(0, 1).reshape(length, -1)
        x = x + F.linear(att, w(b + "attn_out.weight"))
        fused = F.linear(rms(x, w(b + "ff_norm.weight")), w(b + "ff_proj.weight"))
        up, gate = fused.chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w(b + "ff_out.weight"))
    return F.linear(rms(x, w("transformer.ln_f.weight")), w("transformer.ff_out.weight"))


@pytest.mark.parametrize("with_history", [False, True])
def test_matches_the_release_formulation(model: VideoMolmoModel, inputs: dict,
                                         with_history: bool) -> None:
    release = {k: v.float() for k, v in to_release_state_dict(model).items()}
    history = inputs["history"] if with_history else []
    with torch.no_grad():
        expected = _release_logits(release, model.config, inputs["crops"], history,
                                   inputs["input_ids"], inputs["index"])
        got = model(inputs["input_ids"][None], model.encode_frame(inputs["crops"]), inputs["index"],
                    [model.encode_frame(h) for h in history]).logits[0]
    assert math.isfinite(got.abs().max().item())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
