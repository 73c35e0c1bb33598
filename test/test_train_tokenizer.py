"""The small BPE tokenizer: Molmo's layout, exact round trips, save/load through the loader."""
from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from videomolmo_ros.core.points import (NO_POINTS_TEXT, Point, format_points,  # noqa: E402
                                        parse_points)
from videomolmo_ros.model.loading import load_tokenizer  # noqa: E402
from videomolmo_ros.model.pointer import pointing_instruction, user_message  # noqa: E402
from videomolmo_ros.model.preprocessing import IMAGE_SPECIAL_TOKENS, ImageTokenIds  # noqa: E402
from videomolmo_ros.train.tokenizer import (DEFAULT_BASE_VOCAB, END_OF_TEXT,  # noqa: E402
                                            build_tokenizer, check_layout, training_corpus)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(training_corpus(num_scenes=2))


PROMPTS = [user_message(pointing_instruction(q)) for q in (
    "the striped purple object right of the circle", "all the small objects",
    "the leftmost yellow object", "every object moving right", "Where is the cup?")]
ANSWERS = [
    ' <point x="61.5" y="40.4" alt="the red circle">the red circle</point>',
    ' <points x1="12.3" y1="45.6" x2="100.0" y2="0.0" alt="all the stars">all the stars</points>',
    " " + NO_POINTS_TEXT,
    "unicode: café ✓ and <odd> & \"quotes\"",
]


def test_layout_matches_molmo(tokenizer):
    base = DEFAULT_BASE_VOCAB
    assert len(tokenizer) == base + len(IMAGE_SPECIAL_TOKENS)
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == eos < base
    assert tokenizer.bos_token_id is None  # Qwen2-style: the pointer starts with end-of-text
    ids = ImageTokenIds.from_tokenizer(tokenizer)
    assert (ids.start, ids.end, ids.patch, ids.col) == (base, base + 1, base + 2, base + 3)
    assert tokenizer.convert_tokens_to_ids("<|image|>") == base + 4
    # every regular token sits below end-of-text, the spares between it and the markers
    vocab = tokenizer.get_vocab()
    regular = [i for t, i in vocab.items() if i < eos]
    assert sorted(regular) == list(range(eos))
    check_layout(tokenizer, base)
    with pytest.raises(ValueError):
        check_layout(tokenizer, base + 1)


@pytest.mark.parametrize("text", PROMPTS + ANSWERS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert all(i < DEFAULT_BASE_VOCAB for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_compact_prompts_and_digit_tokens(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(
        tokenizer.encode(" User: Point to the red circle Assistant:", add_special_tokens=False))
    assert tokens == ["ĠUser", ":", "ĠPoint", "Ġto", "Ġthe", "Ġred", "Ġcircle", "ĠAssistant",
                      ":"]
    digits = tokenizer.convert_ids_to_tokens(tokenizer.encode('x="61.5"', add_special_tokens=False))
    assert ["6", "1", ".", "5"] == [t for t in digits if t in "0123456789."]


def test_special_tokens_are_atomic(tokenizer):
    base = DEFAULT_BASE_VOCAB
    ids = tokenizer.encode("<im_start><im_patch><im_col><im_end>" + END_OF_TEXT,
                           add_special_tokens=False)
    assert ids == [base, base + 2, base + 3, base + 1, tokenizer.eos_token_id]
    answer = tokenizer.encode(ANSWERS[0], add_special_tokens=False) + [tokenizer.eos_token_id]
    assert tokenizer.decode(answer, skip_special_tokens=True) == ANSWERS[0]


def test_save_and_load_with_the_project_loader(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    check_layout(loaded, DEFAULT_BASE_VOCAB)
    for text in PROMPTS + ANSWERS:
        assert loaded.encode(text, add_special_tokens=False) == \
            tokenizer.encode(text, add_special_tokens=False)
    # point text survives tokenisation and parsing
    points = [Point(32.0, 48.0), Point(160.0, 120.0)]
    text = " " + format_points(points, 320, 240, "all the stars")
    decoded = loaded.decode(loaded.encode(text, add_special_tokens=False))
    assert [(p.x, p.y) for p in parse_points(decoded, 320, 240)] == [(32, 48), (160, 120)]


def test_too_small_vocabulary_is_refused():
    with pytest.raises(ValueError):
        build_tokenizer(["a b c"], base_vocab_size=100)
