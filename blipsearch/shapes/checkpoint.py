"""The shapes-world checkpoints' vocabulary, tokenizer, BLIP config and image preprocessing, and how a
trained model is saved in the Hugging Face hub layout."""


from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipImageProcessorPil,
    BlipTextConfig,
    BlipVisionConfig,
)

from blipsearch.shapes import evaluate, world
from blipsearch.shapes.recipe import Sizes

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Punctuation the BERT basic tokenizer splits off; in the vocab so that user
# queries with it do not turn into [UNK].
_PUNCTUATION = ["?", ",", ".", "!", "'", "-"]



# ----------------------------------------------------------------------------- vocabulary


def world_vocabulary() -> list[str]:
    """Special tokens, then every word and punctuation mark the world's texts use."""
    texts: list[str] = [evaluate.CAPTION_PROMPT, "yes no"]
    rng = np.random.default_rng(0)
    for left, right in world.all_pairs():
        texts += [world.canonical_caption(left, right), *world.alternative_captions(left, right)]
        texts += [qa.question + " " + qa.answer for qa in world.questions(left, right, rng)]
    words: set[str] = set()
    for t in texts:
        words.update(re.findall(r"\w+|[^\w\s]", t.lower()))
    return SPECIAL_TOKENS + sorted(words | set(_PUNCTUATION))


def build_tokenizer(directory: Path) -> BertTokenizer:
    """A WordPiece BertTokenizer over the world's vocabulary, with BLIP's [DEC] bos and [ENC] tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(world_vocabulary()) + "\n", encoding="utf-8")
    return BertTokenizer(
        str(vocab),
        do_lower_case=True,
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
        model_max_length=512,
    )


# ----------------------------------------------------------------------------- config and I/O


def make_config(tokenizer: BertTokenizer, sizes: Sizes) -> BlipConfig:
    sep = tokenizer.sep_token_id
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.text_hidden,
        encoder_hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=sizes.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=sep,
        eos_token_id=sep,
    )
    vision = BlipVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=world.IMAGE_SIZE,
        patch_size=sizes.patch_size,
        layer_norm_eps=1e-6,
        # The class default (1e-10) would start position embeddings at zero.
        initializer_range=0.02,
    )
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=256)


def preprocessor_config() -> dict[str, Any]:
    """BlipImageProcessor settings: square bicubic resize to the model size, CLIP normalization."""
    return {
        "image_processor_type": "BlipImageProcessor",
        "processor_class": "BlipProcessor",
        "do_resize": True,
        "size": {"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }


def image_processor() -> BlipImageProcessorPil:
    """The processor that ``preprocessor_config()`` describes, for evaluation."""
    return BlipImageProcessorPil(**{k: v for k, v in preprocessor_config().items() if k not in ("image_processor_type", "processor_class")})


def save_checkpoint(model: torch.nn.Module, tokenizer: BertTokenizer, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2) + "\n")
