"""Parity with the released VideoMolmo code (tiny configuration, fixed weights, fp32).

``fixtures/make_model_reference.py`` ran the release's ``memory.py`` / ``memory_preprocessor.py``
(transformers 4.47, outside the project) and stored small results in ``model_reference.json``.
Here the same weights are rebuilt, written in the release layout, loaded through the real loader
(strict key mapping) and run through the project's pre-processing, model and pointer:

* tokens, patch index, masks and crop pixels equal the release pre-processor's;
* logits match within 1e-4 with the temporal module (full history and black-frame padding at the
  start of a video) and without it (Molmo);
* greedy decoding with the KV cache gives the release's ``generate_from_batch`` tokens.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from videomolmo_ros.core.frame import Frame  # noqa: E402
from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.loading import load_videomolmo  # noqa: E402
from videomolmo_ros.model.pointer import (VideoMolmoPointer, pointing_instruction,  # noqa: E402
                                          user_message)
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402

torch.set_num_threads(1)
FIXTURES = Path(__file__).parent / "fixtures"
CASES = ("temporal", "start", "molmo")


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "make_model_reference", FIXTURES / "make_model_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_script()
REFERENCE = json.loads((FIXTURES / "model_reference.json").read_text())


@pytest.fixture(scope="module")
def pointer() -> VideoMolmoPointer:
    weights = script.reference_weights(REFERENCE["config"])
    assert script.weights_digest(weights) == pytest.approx(REFERENCE["weights_digest"], rel=1e-9), (
        "the weight generator drifted; rerun fixtures/make_model_reference.py")
    with tempfile.TemporaryDirectory() as directory:
        safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in weights.items()},
                                    os.path.join(directory, "model.safetensors"))
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(REFERENCE["config"], handle)
        model = load_videomolmo(directory)
    return VideoMolmoPointer(model, tiny_tokenizer(), max_new_tokens=script.GREEDY_TOKENS)


def frames() -> list[Frame]:
    return [Frame("cam", i, i, image) for i, image in enumerate(script.reference_frames())]


def history_for(case: str, pointer: VideoMolmoPointer, video: list[Frame]) -> list:
    """The engine's history (most recent first) for each reference case (for "molmo" the
    pointer runs with l = 0, i.e. without the temporal module)."""
    if case == "start":
        return [pointer.encode(video[1])]  # the pointer pads with 3 black frames
    if case == "molmo":
        return []
    return [pointer.encode(f) for f in video[1:5]]


def test_reference_config_is_the_tiny_config() -> None:
    assert VideoMolmoConfig.from_dict(REFERENCE["config"]) == VideoMolmoConfig.tiny()
    assert REFERENCE["prompt"] == "Point to the mug"


@pytest.mark.parametrize("case", CASES)
def test_preprocessing_matches_the_release(pointer: VideoMolmoPointer, case: str) -> None:
    expected = REFERENCE["cases"][case]
    video = frames()
    pre = pointer.preprocessor
    keyframe = pre.frame(video[0].image)
    text = pointer.tokenizer.encode(user_message(pointing_instruction(REFERENCE["prompt"])),
                                    add_special_tokens=False)
    input_ids, index = pre.prompt(keyframe.layout, text, pointer.bos_id)
    assert input_ids.tolist() == expected["input_ids"]
    release_index = np.asarray(expected["image_input_idx"])
    np.testing.assert_array_equal(np.where(release_index < 0, -1, release_index), index.numpy())
    np.testing.assert_allclose(keyframe.masks.numpy(), expected["image_masks"], atol=1e-6)
    digest = script.crops_digest(keyframe.crops.numpy())
    assert digest["shape"] == expected["crops"]["shape"]
    for key in ("sum", "sum_sq", "sample"):
        np.testing.assert_allclose(digest[key], expected["crops"][key], rtol=1e-5, atol=1e-3)
    # The release's prev_frames: black padding first, then f-1, f-2, ..., in the keyframe layout.
    black = np.zeros_like(video[0].image)
    previous = ([black, black, black, video[1].image] if case == "start"
                else [f.image for f in video[1:5]])
    crops = np.concatenate([pre.frame(p, keyframe.layout).crops.numpy() for p in previous])
    digest = script.crops_digest(crops)
    for key in ("sum", "sum_sq", "sample"):
        np.testing.assert_allclose(digest[key], expected["prev_frames"][key], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_logits_match_the_release(pointer: VideoMolmoPointer, case: str) -> None:
    expected = REFERENCE["cases"][case]
    video = frames()
    model = pointer.model
    keyframe = pointer.encode(video[0])
    context = ([] if case == "molmo"  # no temporal module: Molmo
               else pointer.temporal_context(keyframe, history_for(case, pointer, video)))
    input_ids = torch.tensor([expected["input_ids"]])
    _, index = pointer.preprocessor.prompt(keyframe.layout, [], pointer.bos_id)
    with torch.no_grad():
        logits = model(input_ids, keyframe.features, index, context or None).logits[0]
    last = np.asarray(expected["last_logits"])
    np.testing.assert_allclose(logits[-len(last):].numpy(), last, atol=1e-4, rtol=0)
    # Argmax everywhere, except where the top two logits are too close to call.
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    assert clear.float().mean() > 0.9
    ours, theirs = logits.argmax(-1), torch.tensor(expected["argmax"])
    assert torch.equal(ours[clear], theirs[clear])


@pytest.mark.parametrize("case", CASES)
def test_greedy_decoding_matches_the_release(pointer: VideoMolmoPointer, case: str) -> None:
    expected = REFERENCE["cases"][case]["greedy"]
    if pointer.eos_id in expected:
        expected = expected[: expected.index(pointer.eos_id)]
    video = frames()
    history = history_for(case, pointer, video)
    saved = pointer.history_frames
    pointer.history_frames = 0 if case == "molmo" else saved
    try:
        tokens = pointer.generate_tokens(video[0], pointer.encode(video[0]), history,
                                         [REFERENCE["prompt"]])
    finally:
        pointer.history_frames = saved
    assert tokens == [expected]
