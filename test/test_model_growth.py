"""growth.deepen_llm: a deeper LLM that starts exactly where the trained one was, and learns."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.growth import ZEROED, deepen_llm, expansion_plan  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402

torch.set_num_threads(1)


def test_new_blocks_are_spread_evenly_each_after_the_block_it_copies():
    assert expansion_plan(4, 2) == [(0, False), (1, False), (1, True), (2, False), (3, False),
                                    (3, True)]
    assert expansion_plan(4, 4) == [(0, False), (0, True), (1, False), (1, True), (2, False),
                                    (2, True), (3, False), (3, True)]
    assert expansion_plan(2, 1) == [(0, False), (1, False), (1, True)]
    for layers, extra in ((4, 0), (4, 5), (4, -1), (0, 1)):
        with pytest.raises(ValueError):
            expansion_plan(layers, extra)


@pytest.fixture()
def trained() -> tuple[VideoMolmoModel, dict]:
    """A random tiny model whose output projections are not zero, and a frame + prompt."""
    torch.manual_seed(0)
    model = VideoMolmoModel(VideoMolmoConfig.tiny()).eval()
    config = model.config
    patches = config.vision_backbone.image_num_patch[0] * config.vision_backbone.image_num_patch[1]
    crop_width = config.vision_backbone.image_patch_size ** 2 * 3
    crops = torch.rand(3, patches, crop_width)
    with torch.no_grad():
        features = model.encode_frame(crops)
        history = [model.encode_frame(torch.rand(3, patches, crop_width)) for _ in range(2)]
        tokens = model.image_embeddings(features[None], [h[None] for h in history]).shape[2]
    index = torch.arange(3 * tokens).reshape(3, tokens) + 1
    input_ids = torch.randint(0, config.vocab_size, (3 * tokens + 12,))
    return model, dict(input_ids=input_ids[None], image_features=features,
                       image_input_idx=index, history_features=history)


def test_the_grown_model_computes_what_the_trained_one_did(trained):
    model, inputs = trained
    grown = deepen_llm(model, 1)
    assert grown.config.num_hidden_layers == model.config.num_hidden_layers + 1
    assert len(grown.llm.layers) == grown.config.num_hidden_layers
    assert model.config.num_hidden_layers == VideoMolmoConfig.tiny().num_hidden_layers
    assert not grown.training
    with torch.no_grad():
        torch.testing.assert_close(grown(**inputs).logits, model(**inputs).logits)
    old, new = model.state_dict(), grown.state_dict()
    last = model.config.num_hidden_layers - 1
    fresh = f"llm.layers.{last + 1}."
    for name, value in new.items():
        if not name.startswith(fresh):
            assert torch.equal(value, old[name]), name
            continue
        suffix = name[len(fresh):]
        if suffix in ZEROED:
            assert not value.any(), name
        else:  # a copy of the block before it
            assert torch.equal(value, old[f"llm.layers.{last}.{suffix}"]), name
    # the cache of a grown model has a slot per block: generation still works
    with torch.no_grad():
        out = grown(**inputs, use_cache=True)
        step = grown(inputs["input_ids"][:, -1:], cache=out.cache, use_cache=True)
    assert step.logits.shape[1] == 1


def test_the_new_blocks_learn(trained):
    model, inputs = trained
    grown = deepen_llm(model, 1).train()
    block = grown.llm.layers[-1]
    optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-2, weight_decay=0.0)
    query_before = block.self_attn.q_proj.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        grown(**inputs).logits.logsumexp(-1).mean().backward()
        optimizer.step()
    assert block.self_attn.o_proj.weight.any() and block.mlp.down_proj.weight.any()
    assert not torch.equal(block.self_attn.q_proj.weight, query_before)  # gradient, not decay
