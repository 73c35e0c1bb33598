"""A small tokenizer for the small VideoMolmo, laid out like Molmo's vocabulary.

Molmo (Qwen2's byte-level BPE) puts its regular tokens first, then ``<|endoftext|>`` and unused
special tokens up to the end of the base vocabulary (152064 rows), then the image markers
``<im_start> <im_end> <im_patch> <im_col> <|image|>`` in the extra embedding rows right after it
(152064-152068). This tokenizer has the same structure at a small size (``base_vocab_size`` =
the model's ``embedding_size``, 512 by default):

* ids 0 .. V-1: a byte-level BPE trained with the ``tokenizers`` library on the synthetic
  referring expressions, Molmo's prompt words (" User:", " Assistant:", "Point to") and Molmo
  point text (``<point x=".." y=".." alt="..">..</point>``, ``<points x1=..>``,
  "There are none."). Byte-level: every string encodes and decodes exactly. Digits are split one
  per token, as Qwen2 does, so coordinates are spelled digit by digit.
* id V: ``<|endoftext|>`` (end of text, also Molmo's BOS stand-in); V+1 .. base-1: spare
  special tokens ``|<EXTRA_TOKENS_i>|``.
* ids base .. base+4: the image markers, where ``VideoMolmoModel`` adds image features (the
  rows of ``new_embedding``); the LM head (``embedding_size`` logits) can never emit them.

``build_tokenizer()`` trains it; ``save_pretrained(dir)`` writes it so that
``videomolmo_ros.model.loading.load_tokenizer(dir)`` (``AutoTokenizer``) loads it back.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from videomolmo_ros.model.preprocessing import IMAGE_SPECIAL_TOKENS

END_OF_TEXT = "<|endoftext|>"
DEFAULT_BASE_VOCAB = 512
MIN_SPARES = 8  # unused special tokens kept after <|endoftext|>, like Qwen2's reserved ids
CORPUS_SCENES = 64


def _grammar_phrases() -> list[str]:
    """Every word of the synthetic grammar in the phrases it appears in (coverage)."""
    from videomolmo_ros.data import synthetic as syn

    nouns = list(syn.SHAPES) + ["object"]
    adjectives = list(syn.COLORS) + list(syn.SIZES) + list(syn.TEXTURES) + ["static", "moving"]
    phrases = []
    for adjective, noun in itertools.product(adjectives, nouns):
        phrases += [f"the {adjective} {noun}", f"all the {adjective} {noun}s",
                    f"every {adjective} {noun}"]
    for noun, motion in itertools.product(nouns, ("left", "right", "up", "down")):
        phrases += [f"the {noun} moving {motion}", f"all the {noun}s moving {motion}"]
    for word, noun in itertools.product(("leftmost", "rightmost", "topmost", "bottommost"), nouns):
        phrases.append(f"the {word} {noun}")
    for relation, a, b in itertools.product(("left of", "right of", "above", "below"),
                                            nouns, nouns):
        phrases.append(f"the {a} {relation} the {b}")
    return phrases


def _scene_expressions(num_scenes: int) -> list[str]:
    """Expressions of training-range synthetic scenes (realistic word frequencies)."""
    from videomolmo_ros.data.synthetic import generate_scene
    from videomolmo_ros.train.dataset import TRAIN_SEED_OFFSET

    texts = []
    for i in range(num_scenes):
        scene = generate_scene(TRAIN_SEED_OFFSET + i, num_frames=12)
        texts += [e.text for e in scene.expressions]
    return texts


def _point_texts(labels: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    """Molmo answers with random coordinates for the given labels (0, 1 or several points)."""
    from videomolmo_ros.core.points import Point, format_points

    for label in labels:
        count = int(rng.choice([0, 1, 1, 1, 2, 3, 4]))
        points = [Point(float(rng.uniform(0, 100)), float(rng.uniform(0, 100)))
                  for _ in range(count)]
        yield " " + format_points(points, 100, 100, label)


def training_corpus(num_scenes: int = CORPUS_SCENES, seed: int = 0) -> list[str]:
    """Prompts and answers as the trainer and the pointer write them, over the synthetic
    grammar and expressions (deterministic in ``num_scenes`` and ``seed``)."""
    from videomolmo_ros.model.pointer import pointing_instruction, user_message

    rng = np.random.default_rng(seed)
    queries = _grammar_phrases() + _scene_expressions(num_scenes)
    corpus = [user_message(pointing_instruction(q)) for q in queries]
    corpus += list(_point_texts(queries, rng))
    corpus += [" User: Point to the object Assistant:", " There are none.",
               " User: Where is the red circle? Assistant:", " How many objects are there?"]
    return corpus


def build_tokenizer(corpus: Iterable[str] | None = None,
                    base_vocab_size: int = DEFAULT_BASE_VOCAB) -> Any:
    """Train the BPE on ``corpus`` (default ``training_corpus()``) and lay out the specials.

    Returns a ``transformers.PreTrainedTokenizerFast`` (eos = pad = ``<|endoftext|>``, no BOS,
    no special tokens added on encode). Raises ValueError if the layout does not fit.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if base_vocab_size < 256 + 1 + MIN_SPARES:
        raise ValueError(f"base_vocab_size must be at least {256 + 1 + MIN_SPARES}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base_vocab_size - 1 - MIN_SPARES, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    backend.train_from_iterator(list(corpus if corpus is not None else training_corpus()),
                                trainer=trainer)
    regular = backend.get_vocab_size()
    spares = [f"|<EXTRA_TOKENS_{i}>|" for i in range(base_vocab_size - regular - 1)]
    backend.add_special_tokens([END_OF_TEXT] + spares + list(IMAGE_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_OF_TEXT,
                                        pad_token=END_OF_TEXT, clean_up_tokenization_spaces=False,
                                        model_max_length=4096)
    check_layout(tokenizer, base_vocab_size)
    return tokenizer


def check_layout(tokenizer: Any, base_vocab_size: int) -> None:
    """Raise ValueError unless the specials sit where ``VideoMolmoModel`` expects them:
    ``<|endoftext|>`` inside the base vocabulary (the LM head can emit it) and the image markers
    at ``base_vocab_size + 0..4`` (the extra embedding rows), in Molmo's order."""
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if eos is None or not 0 <= eos < base_vocab_size or eos != tokenizer.eos_token_id:
        raise ValueError(f"{END_OF_TEXT} must be the eos token inside the base vocabulary "
                         f"(< {base_vocab_size}), got {eos}")
    for offset, token in enumerate(IMAGE_SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != base_vocab_size + offset:
            raise ValueError(f"{token} must have id {base_vocab_size + offset}, got {got}")
    if len(tokenizer) != base_vocab_size + len(IMAGE_SPECIAL_TOKENS):
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, expected "
                         f"{base_vocab_size + len(IMAGE_SPECIAL_TOKENS)}")


def main() -> int:
    """Build the default tokenizer and print its size and a sample encoding."""
    import argparse

    parser = argparse.ArgumentParser(description="build the small VideoMolmo tokenizer")
    parser.add_argument("--out", required=True, help="directory for save_pretrained")
    parser.add_argument("--base-vocab", type=int, default=DEFAULT_BASE_VOCAB)
    args = parser.parse_args()
    tokenizer = build_tokenizer(base_vocab_size=args.base_vocab)
    tokenizer.save_pretrained(args.out)
    sample = ' User: Point to the red circle Assistant: <point x="61.5" y="40.4" alt="a">a</point>'
    print(len(tokenizer), tokenizer.convert_ids_to_tokens(tokenizer.encode(sample)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
