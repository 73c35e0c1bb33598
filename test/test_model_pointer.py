"""VideoMolmoPointer: prompts, greedy decoding with a KV cache, parsing, and encode-once.

The answers come from a test-only LM head that emits scripted token sequences; the pointer
itself never knows them.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.core.frame import Frame  # noqa: E402
from videomolmo_ros.core.points import Point  # noqa: E402
from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.pointer import (FrameFeatures, VideoMolmoPointer,  # noqa: E402
                                          pointing_instruction, user_message)
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402
from videomolmo_ros.pointers.base import Pointer  # noqa: E402

torch.set_num_threads(1)
HEIGHT, WIDTH = 90, 120


class ScriptedHead(torch.nn.Module):
    """Stands in for the LM head: its argmax follows ``scripts`` one token per call, moving to
    the next script after each end-of-text. Records how many logit rows it was asked for."""

    def __init__(self, scripts: list[list[int]], vocab: int, eos: int) -> None:
        super().__init__()
        self.scripts, self.vocab, self.eos = scripts, vocab, eos
        self.script, self.step, self.calls = 0, 0, []
        self.weight = torch.nn.Parameter(torch.zeros(1))  # model.device / dtype read it

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls.append(hidden.shape[1])
        script = self.scripts[self.script % len(self.scripts)]
        token = script[self.step] if self.step < len(script) else self.eos
        self.step += 1
        if token == self.eos:
            self.script, self.step = self.script + 1, 0
        logits = torch.zeros(hidden.shape[0], hidden.shape[1], self.vocab)
        logits[..., token] = 10.0
        return logits


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture()
def model() -> VideoMolmoModel:
    torch.manual_seed(0)
    return VideoMolmoModel(VideoMolmoConfig.tiny()).eval()


def frames(count: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [Frame("cam", i, 1_000 * i, rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
            for i in range(count)]


def rig(model: VideoMolmoModel, tokenizer, answers: list[str]) -> ScriptedHead:
    eos = tokenizer.eos_token_id
    scripts = [tokenizer.encode(a, add_special_tokens=False) + [eos] for a in answers]
    head = ScriptedHead(scripts, model.config.embedding_size, eos)
    model.lm_head = head
    return head


def count_encodes(model: VideoMolmoModel) -> list[int]:
    """Wrap the vision encoder so that every call is recorded (number of crops)."""
    calls: list[int] = []
    encode = model.vision_backbone.encode

    def counted(crops):
        calls.append(crops.shape[1])
        return encode(crops)

    model.vision_backbone.encode = counted
    return calls


def test_prompt_text() -> None:
    assert pointing_instruction("the red mug") == "Point to the red mug"
    assert pointing_instruction("  the   red mug ") == "Point to the red mug"
    assert pointing_instruction("Point to the left hand") == "Point to the left hand"
    assert pointing_instruction("where is the cat?") == "where is the cat?"
    assert pointing_instruction("mugs", "Point to all {query}.") == "Point to all mugs."
    assert user_message("Point to the mug") == " User: Point to the mug Assistant:"


def test_points_parsed_from_the_generated_text(model, tokenizer) -> None:
    answers = ['<point x="25.0" y="50.0" alt="mug">mug</point>',
               '<points x1="10.0" y1="20.0" x2="90.0" y2="80.0" alt="cups">cups</points>',
               "There are none."]
    rig(model, tokenizer, answers)
    pointer = VideoMolmoPointer(model, tokenizer)
    assert isinstance(pointer, Pointer)
    video = frames(3)
    history = [pointer.encode(f) for f in video[:2]][::-1]
    result = pointer.point(video[2], pointer.encode(video[2]), history, ["mug", "cups", "dog"])
    assert pointer.last_texts == answers
    assert result == [[Point(30.0, 45.0, "mug")],
                      [Point(12.0, 18.0, "cups"), Point(108.0, 72.0, "cups")],
                      []]


def test_each_frame_is_encoded_once_for_all_queries(model, tokenizer) -> None:
    rig(model, tokenizer, ['<point x="50" y="50" alt="a">a</point>'])
    pointer = VideoMolmoPointer(model, tokenizer)
    calls = count_encodes(model)
    video = frames(6)
    features = [pointer.encode(f) for f in video]  # what the engine does, once per frame
    assert len(calls) == 6
    queries = ["a", "b", "c", "d"]
    # A full history (l = 4): nothing else is encoded, whatever the number of queries.
    answers = pointer.point(video[5], features[5], features[4:0:-1], queries)
    assert len(calls) == 6 and len(answers) == 4 and all(len(a) == 1 for a in answers)
    # At the stream start: the black padding frame is encoded once per crop layout, then reused.
    pointer.point(video[1], features[1], features[:1], queries)
    assert len(calls) == 7
    pointer.point(video[2], features[2], features[1::-1], queries)
    assert len(calls) == 7
    # The temporal module, pooling and projector run once per keyframe, not once per query.
    adapter_calls = []
    model.vision_backbone.adapter.register_forward_hook(lambda *args: adapter_calls.append(1))
    pointer.point(video[5], features[5], features[4:0:-1], queries)
    assert len(adapter_calls) == 1


def test_history_padding_and_order_follow_the_release(model, tokenizer) -> None:
    pointer = VideoMolmoPointer(model, tokenizer)
    video = frames(3)
    features = [pointer.encode(f) for f in video]
    context = pointer.temporal_context(features[2], [features[1], features[0]])
    black = pointer.padding_features(features[2].layout).features
    assert len(context) == 4
    assert torch.equal(context[0], black) and torch.equal(context[1], black)
    assert torch.equal(context[2], features[1].features)
    assert torch.equal(context[3], features[0].features)
    assert not black.eq(features[0].features).all()
    # A history frame of another size (a resolution change) counts as missing.
    other = pointer.encode(Frame("cam", 9, 9, np.zeros((40, 300, 3), dtype=np.uint8)))
    assert other.layout != features[2].layout
    context = pointer.temporal_context(features[2], [other, features[1]])
    assert [torch.equal(c, black) for c in context] == [True, True, True, False]
    assert pointer.temporal_context(features[2], features[:2] * 3) == [
        f.features for f in features[:2] * 2]  # at most l frames, most recent first
    assert VideoMolmoPointer(model, tokenizer, history_frames=0).temporal_context(
        features[2], features[:2]) == []


def test_history_changes_the_answer_input(model, tokenizer) -> None:
    pointer = VideoMolmoPointer(model, tokenizer, max_new_tokens=4)
    video = frames(5, seed=3)
    features = [pointer.encode(f) for f in video]
    with torch.no_grad():
        context = [c[None] for c in pointer.temporal_context(features[4], features[:4])]
        with_history = model.image_embeddings(features[4].features[None], context)
        without = model.image_embeddings(features[4].features[None])
    assert not torch.allclose(with_history, without)


def test_greedy_decoding_stops_at_eos_or_the_token_budget(model, tokenizer) -> None:
    head = rig(model, tokenizer, ["abcdef"])
    video = frames(1)
    pointer = VideoMolmoPointer(model, tokenizer, max_new_tokens=4)
    features = pointer.encode(video[0])
    assert pointer.generate_text(video[0], features, [], ["x"]) == ["abcd"]
    # One logit row per call: the query prefill's last position, then one per new token; the
    # shared image prefix is prefilled without logits.
    assert head.calls == [1, 1, 1, 1]
    head.script, head.step, head.calls = 0, 0, []
    pointer.max_new_tokens = 50
    assert pointer.generate_text(video[0], features, [], ["x", "y"]) == ["abcdef", "abcdef"]
    assert len(head.calls) == 2 * 7


def test_shared_image_prefix_gives_the_same_text(model, tokenizer) -> None:
    video = frames(5, seed=1)
    shared = VideoMolmoPointer(model, tokenizer, max_new_tokens=12)
    separate = VideoMolmoPointer(model, tokenizer, max_new_tokens=12, share_image_prefix=False)
    features = [shared.encode(f) for f in video]
    queries = ["the mug", "the cup", "Point to the left hand"]
    args = (video[4], features[4], features[3::-1], queries)
    texts = shared.generate_text(*args)
    assert texts == separate.generate_text(*args)
    assert all(len(t) > 0 for t in texts)  # random weights: some text, no EOS right away


def test_encode_returns_features_on_the_model(model, tokenizer) -> None:
    pointer = VideoMolmoPointer(model, tokenizer)
    features = pointer.encode(frames(1)[0])
    assert isinstance(features, FrameFeatures)
    assert features.features.shape == (features.layout.num_crops, 64, 64)
    assert features.features.dtype == model.dtype and not features.features.requires_grad
    # Features not made by this pointer (e.g. none cached) are recomputed from the frame.
    rig(model, tokenizer, ['<point x="50" y="50" alt="a">a</point>'])
    assert pointer.point(frames(1)[0], None, [], ["a"]) == [[Point(60.0, 45.0, "a")]]


def test_runs_in_bfloat16(tokenizer) -> None:
    torch.manual_seed(0)
    model = VideoMolmoModel(VideoMolmoConfig.tiny()).to(torch.bfloat16).eval()
    pointer = VideoMolmoPointer(model, tokenizer, max_new_tokens=3)
    video = frames(3)
    features = [pointer.encode(f) for f in video]
    assert features[0].features.dtype == torch.bfloat16
    tokens = pointer.generate_tokens(video[2], features[2], features[1::-1], ["the mug"])
    assert len(tokens) == 1 and 1 <= len(tokens[0]) <= 3


def test_in_the_streaming_engine(model, tokenizer) -> None:
    """The engine encodes each needed frame once and hands back l features, most recent first."""
    from videomolmo_ros.segment.classical import ClassicalSegmenter
    from videomolmo_ros.stream import EngineConfig, KeyframePoints, StreamingEngine

    rig(model, tokenizer, ['<point x="50.0" y="25.0" alt="mug">mug</point>'])
    pointer = VideoMolmoPointer(model, tokenizer)
    calls = count_encodes(model)
    seen_history: list[int] = []
    point = pointer.point

    def spy(frame, features, history, queries):
        seen_history.append(len(history))
        assert all(isinstance(h, FrameFeatures) for h in history)
        return point(frame, features, history, queries)

    pointer.point = spy
    engine = StreamingEngine(pointer, ClassicalSegmenter(), EngineConfig(k=5, l=4))
    engine.add_query("mug", "cam", track=False)
    events = []
    for frame in frames(11):
        if frame.index == 6:
            engine.add_query("mug", "cam", track=False)
        events += engine.push("cam", frame.image, frame.stamp_ns)
    keyframes = [e for e in events if isinstance(e, KeyframePoints)]
    assert [e.frame_index for e in keyframes] == [0, 10]
    assert all(e.points == (Point(60.0, 22.0, "mug"),) for e in keyframes)
    assert seen_history == [0, 4]  # stream start (black padding), then frames 9, 8, 7, 6
    # Frames 0 and 6..10 encoded, each once; plus the black padding frame, once.
    assert len(calls) == engine.stats["cam"].encodes + 1 == 7
