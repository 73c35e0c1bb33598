"""Small stand-ins for tests and CPU benchmarks: a tokenizer laid out like Molmo's.

Molmo's tokenizer (Qwen2's byte-level BPE + Molmo's extra tokens) is not available offline, so
tests use a byte-level tokenizer with the same structure: one token per byte (ids 0-255), then
``<|endoftext|>`` (256, the end-of-text / BOS stand-in, as in Qwen2), spare special tokens up to
the end of the base vocabulary (263), and the image markers ``<im_start> <im_end> <im_patch>
<im_col> <|image|>`` right after it (264-268), i.e. in the rows of the extra embedding
(``new_embedding``), exactly where Molmo puts them (152064-152068). It pairs with
``VideoMolmoConfig.tiny()`` (embedding_size 264, 8 extra rows).
"""
from __future__ import annotations

from typing import Any

from videomolmo_ros.model.preprocessing import IMAGE_SPECIAL_TOKENS

END_OF_TEXT = "<|endoftext|>"
TINY_BASE_VOCAB = 264


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE alphabet)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def tiny_tokenizer() -> Any:
    """A ``transformers`` fast tokenizer: bytes 0-255, ``<|endoftext|>`` = 256, markers 264-268."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    backend = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    spares = [f"|<EXTRA_TOKENS_{i}>|" for i in range(TINY_BASE_VOCAB - 257)]
    backend.add_special_tokens([END_OF_TEXT] + spares + list(IMAGE_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_OF_TEXT,
                                   pad_token=END_OF_TEXT)


def fixed_input_logits(model: Any) -> Any:
    """Logits of ``model`` for a fixed random frame, two history frames (temporal module on)
    and a short prompt: one reference output for comparing a model with its reloaded,
    converted or quantised copy."""
    import numpy as np
    import torch

    from videomolmo_ros.model.preprocessing import ImageTokenIds, MultiCropPreprocessor

    rng = np.random.default_rng(0)
    pre = MultiCropPreprocessor(model.config, ImageTokenIds.from_tokenizer(tiny_tokenizer()))
    frame = pre.frame(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    history = [pre.frame(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), frame.layout)
               for _ in range(2)]
    input_ids, index = pre.prompt(frame.layout, [70, 71, 72], 256)
    with torch.no_grad():
        crops = frame.crops.to(model.dtype)
        return model(input_ids[None], model.encode_frame(crops), index,
                     [model.encode_frame(h.crops.to(model.dtype)) for h in history]).logits.float()
