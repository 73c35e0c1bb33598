"""Training samples: shapes, history order and padding, loss only on answers, and the packed
sequence computing exactly what the pointer computes at inference."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.core.points import NO_POINTS_TEXT, parse_points  # noqa: E402
from videomolmo_ros.model.pointer import (VideoMolmoPointer, pointing_instruction,  # noqa: E402
                                          user_message)
from videomolmo_ros.model.preprocessing import black_frame  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402
from videomolmo_ros.train.dataset import (IGNORE_INDEX, TRAIN_SEED_OFFSET,  # noqa: E402
                                          PointingDataset, answer_text, collate,
                                          segment_attention_mask)
from videomolmo_ros.train.presets import tiny  # noqa: E402
from videomolmo_ros.train.testing import small_tokenizer, tiny_data  # noqa: E402
from videomolmo_ros.train.trainer import packed_hidden  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


@pytest.fixture(scope="module")
def dataset(tokenizer):
    return PointingDataset(tiny_data(), tiny(), tokenizer)


def first_index(dataset, condition, limit=64):
    for index in range(limit):
        sample = dataset[index]
        if condition(sample):
            return index, sample
    raise AssertionError("no such sample")


def test_sample_shapes_and_determinism(dataset):
    sample = dataset[0]
    config = dataset.model_config
    t, p = sample.crops.shape[:2]
    assert sample.crops.shape == (t, config.vision_backbone.image_num_patch[0] ** 2, 14 * 14 * 3)
    assert sample.history.shape == (4,) + tuple(sample.crops.shape)
    assert sample.image_input_idx.shape == (t, 16)
    length = len(sample.input_ids)
    for name in ("labels", "position_ids", "segments"):
        assert getattr(sample, name).shape == (length,)
    assert 1 <= len(sample.queries) <= 3 and len(sample.answers) == len(sample.queries)
    assert sample.scene_seed >= TRAIN_SEED_OFFSET
    again = dataset[0]
    assert torch.equal(again.input_ids, sample.input_ids) and torch.equal(again.crops, sample.crops)
    other = PointingDataset(tiny_data(seed=1), dataset.model_config, dataset.tokenizer)[0]
    assert other.scene_seed != sample.scene_seed


def test_interleaved_scenes():
    data = tiny_data(frames_per_scene=2, interleave=3)
    scenes = [data.scene_index(i) for i in range(12)]
    assert scenes == [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert [tiny_data(pool_size=2).scene_index(i) for i in range(8)] == [0, 1, 0, 1, 0, 1, 0, 1]


def test_only_answer_tokens_carry_loss(dataset, tokenizer):
    sample = dataset[1]
    prefix = int((sample.segments == 0).sum())
    assert (sample.labels[:prefix] == IGNORE_INDEX).all()
    assert torch.equal(sample.position_ids[:prefix], torch.arange(prefix))
    eos = tokenizer.eos_token_id
    for j, (query, answer) in enumerate(zip(sample.queries, sample.answers), start=1):
        where = sample.segments == j
        ids, labels = sample.input_ids[where], sample.labels[where]
        prompt = tokenizer.encode(user_message(pointing_instruction(query)),
                                  add_special_tokens=False)
        target = tokenizer.encode(answer, add_special_tokens=False) + [eos]
        assert ids.tolist() == prompt + target
        assert labels.tolist() == [IGNORE_INDEX] * len(prompt) + target
        # each query restarts right after the image prefix, as at inference
        assert sample.position_ids[where].tolist() == list(range(prefix, prefix + len(ids)))
    assert sample.num_answer_tokens == int((sample.labels != IGNORE_INDEX).sum())


def test_answers_are_the_ground_truth_points(dataset):
    sample = dataset[2]
    scene = dataset.scene_for(2)
    t = sample.frame_index
    for query, answer in zip(sample.queries, sample.answers):
        expression = scene.find_expression(query)
        truth = scene.points_for(expression.object_ids, t)
        assert answer == answer_text(truth, scene.width, scene.height, query)
        if not truth:
            assert answer == " " + NO_POINTS_TEXT
        parsed = parse_points(answer, scene.width, scene.height)
        assert len(parsed) == len(truth)
        assert [p.x for p in parsed] == sorted(p.x for p in parsed)  # left to right
        for point in parsed:  # every point lands on a referent
            assert any(scene.masks[t, oid, int(point.y), int(point.x)]
                       for oid in expression.object_ids)


def test_history_order_and_black_padding(dataset):
    index, sample = first_index(dataset, lambda s: s.frame_index == 2)
    scene = dataset.scene_for(index)
    pre = dataset.preprocessor
    layout = pre.frame(scene.frames[2]).layout
    black = pre.frame(black_frame(layout), layout).crops
    expected = [black, black, pre.frame(scene.frames[1], layout).crops,
                pre.frame(scene.frames[0], layout).crops]
    for got, want in zip(sample.history, expected):
        assert torch.equal(got, want)


def test_strided_history_reads_every_sth_frame(tokenizer):
    strided = PointingDataset(tiny_data(history_stride=3), tiny(), tokenizer)
    index, sample = first_index(strided, lambda s: 4 <= s.frame_index < 12)
    t = sample.frame_index
    scene = strided.scene_for(index)
    pre = strided.preprocessor
    layout = pre.frame(scene.frames[t]).layout
    black = pre.frame(black_frame(layout), layout).crops
    shown = [i for i in (t - 3, t - 6, t - 9, t - 12) if i >= 0]  # most recent first
    expected = [black] * (4 - len(shown)) + [pre.frame(scene.frames[i], layout).crops
                                             for i in shown]
    assert len(sample.history) == 4
    for got, want in zip(sample.history, expected):
        assert torch.equal(got, want)


def test_collate_pads_and_masks(dataset, tokenizer):
    samples = [dataset[0], dataset[1]]
    batch = collate(samples, tokenizer.pad_token_id)
    length = max(len(s.input_ids) for s in samples)
    assert batch.input_ids.shape == (2, length) and batch.attention_mask.shape == (2, 1, length,
                                                                                  length)
    assert batch.crops.shape[0] == 2 and batch.history.shape[:2] == (2, 4)
    assert batch.num_answer_tokens == sum(s.num_answer_tokens for s in samples)
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    mask = segment_attention_mask(segments)[0, 0]
    assert mask[3].tolist() == [True, True, True, True, False, False, False]
    assert mask[5].tolist() == [True, True, False, False, True, True, False]
    assert mask[6].tolist() == [False] * 6 + [True]  # padding sees only itself


def test_packed_sequence_equals_the_pointer_at_inference(dataset, tokenizer):
    """The logits that predict each answer's first token are the pointer's first-step logits:
    same prompt, same image prefix, same history (black padding included), same positions."""
    torch.manual_seed(0)
    model = VideoMolmoModel(dataset.model_config).eval()
    index, sample = first_index(dataset, lambda s: s.frame_index < 4 and len(s.queries) >= 2)
    scene = dataset.scene_for(index)
    t = sample.frame_index
    with torch.no_grad():
        hidden = packed_hidden(model, collate([sample], tokenizer.pad_token_id))[0]
    pointer = VideoMolmoPointer(model, tokenizer, max_new_tokens=1)
    features = pointer.encode_image(scene.frames[t])
    history = [pointer.encode_image(scene.frames[i], features.layout)
               for i in range(t - 1, -1, -1)]
    captured = []
    pointer._decode_greedy = lambda logits, cache: captured.append(logits[0, -1]) or []
    pointer.generate_tokens(scene.frame(t), features, history, sample.queries)
    assert len(captured) == len(sample.queries) >= 2
    for j, logits in enumerate(captured, start=1):
        where = torch.nonzero(sample.segments == j).flatten()
        prompt_len = int((sample.labels[where] == IGNORE_INDEX).sum())
        last_prompt = int(where[prompt_len - 1])
        with torch.no_grad():
            packed = model.lm_head(hidden[last_prompt])
        np.testing.assert_allclose(packed.numpy(), logits.numpy(), atol=2e-4, rtol=1e-4)


def test_caption_describes_the_visible_objects_left_to_right(tokenizer):
    from videomolmo_ros.data.synthetic import ObjectSpec, SceneConfig, make_scene
    from videomolmo_ros.train.dataset import CAPTION_PROMPT, caption_text

    specs = [ObjectSpec("red", "circle", "small", "plain", "right", (200.0, 60.0), speed=2.0),
             ObjectSpec("blue", "star", "large", "striped", "static", (80.0, 150.0)),
             ObjectSpec("green", "square", "small", "dotted", "static", (-200.0, 100.0))]
    scene = make_scene(SceneConfig(seed=4, num_frames=3), objects=specs)
    assert caption_text(scene, 0) == (" A large striped blue star and a small plain red circle "
                                      "moving right.")  # the green square is off the image
    data = tiny_data(captions=1, queries_per_frame=1)
    sample = PointingDataset(data, tiny(), tokenizer)[0]
    assert sample.queries[-1] == CAPTION_PROMPT and len(sample.queries) == 2
    caption = tokenizer.decode(sample.labels[sample.labels != IGNORE_INDEX].tolist())
    assert caption.endswith(sample.answers[-1] + tokenizer.eos_token)
    assert sample.answers[-1].startswith(" A ") or sample.answers[-1] == " Nothing."


def test_a_frame_without_queries_still_makes_a_sample_with_referent_maps(tokenizer,
                                                                         monkeypatch):
    """Two identical objects leave a scene without attribute expressions: such a keyframe
    has no query, and the referent-map targets must still be built (it once crashed a run)."""
    dataset = PointingDataset(tiny_data(), tiny(), tokenizer, referent_maps=True)
    monkeypatch.setattr(dataset, "choose_queries", lambda scene, rng: [])
    sample = dataset[0]
    assert sample.queries == [] and sample.referent_maps.shape[0] == 0
    batch = collate([sample, sample], pad_id=0)
    assert batch.referent_maps.shape[:2] == (2, 1) and not batch.referent_maps.any()


def first_kinds(data, tokenizer, draws=240):
    """The kind of the first query chosen on each of ``draws`` keyframe draws (a few scenes)."""
    pointing = PointingDataset(data, tiny(), tokenizer)
    scenes = [pointing.scene_for(i) for i in range(4)]
    kinds = []
    for draw in range(draws):
        scene = scenes[draw % len(scenes)]
        kinds.append(pointing.choose_queries(scene, np.random.default_rng([5, draw]))[0].kind)
    return kinds


def test_kind_weights_tilt_the_draw_toward_a_kind_without_dropping_the_others(tokenizer):
    uniform = first_kinds(tiny_data(), tokenizer)
    tilted = first_kinds(tiny_data(kind_weights={"spatial": 6.0}), tokenizer)
    assert set(tilted) == set(uniform)  # every kind still comes up
    share = {name: kinds.count("spatial") / len(kinds)
             for name, kinds in (("uniform", uniform), ("tilted", tilted))}
    # With all four kinds present the odds are 1/4 against 6/9.
    assert share["uniform"] < 0.4 < 0.55 < share["tilted"], share


@pytest.mark.parametrize("weights, reason", [
    ({"motion": 2.0}, "not trained on"),
    ({"spatial": 0.0}, "numbers > 0"),
    ({"spatial": -1.0}, "numbers > 0"),
    ({"spatial": float("nan")}, "numbers > 0"),
    ({"spatial": True}, "numbers > 0"),
])
def test_bad_kind_weights_are_refused_with_a_reason(weights, reason):
    with pytest.raises(ValueError, match=reason):
        tiny_data(kinds=("attribute", "spatial"), kind_weights=weights)
