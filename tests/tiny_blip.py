"""Tiny random BLIP checkpoints in the hub layout, made by the tests themselves.

The default init (std 0.02) makes every image and text embed almost the same,
so every ranking would be a tie and parity tests could not fail. The weights
are re-drawn wider (std 1/sqrt(fan_in)) so scores depend on content.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

WORDS = (
    "a an the of on in with and left right photo picture dog cat car tree house beach sea sky "
    "red green blue yellow purple orange black white circle square triangle running sitting "
    "small big two one person people street night day snow rain mountain river boat bird flower"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
IMAGE_SIZE = 32


def write_tokenizer(path: Path) -> BertTokenizer:
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    pieces = ["##" + c for c in letters]
    vocab = list(dict.fromkeys(SPECIAL + WORDS + letters + pieces + ["[DEC]", "[ENC]"]))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(path)
    return tokenizer


def tiny_config(vocab_size: int, bos: int, image_size: int = IMAGE_SIZE, vision_hidden: int = 48) -> BlipConfig:
    return BlipConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "encoder_hidden_size": vision_hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": bos,
            "pad_token_id": 0,
            "sep_token_id": 3,
        },
        vision_config={
            "hidden_size": vision_hidden,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": 8,
            "layer_norm_eps": 1e-6,
        },
        image_text_hidden_size=256,
    )


@torch.no_grad()
def widen(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            fan_in = module.weight.shape[1]
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        elif isinstance(module, torch.nn.Embedding):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
        elif isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
    vision = model.vision_model.embeddings
    vision.class_embedding.copy_(torch.randn(vision.class_embedding.shape, generator=gen))
    vision.position_embedding.copy_(torch.randn(vision.position_embedding.shape, generator=gen) * 0.5)


def write_image_processor(path: Path, image_size: int, nested: bool = False) -> None:
    from blipsearch.models.convert import image_processor_config

    cfg = image_processor_config(image_size)
    if nested:
        (path / "processor_config.json").write_text(
            json.dumps({"processor_class": "BlipProcessor", "image_processor": cfg}, indent=2)
        )
    else:
        (path / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))


def make_tiny_retrieval(path: Path, seed: int = 0, nested_processor_config: bool = False) -> Path:
    tokenizer = write_tokenizer(path)
    config = tiny_config(len(tokenizer), tokenizer.convert_tokens_to_ids("[DEC]"))
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config).eval()
    widen(model, seed)
    model.save_pretrained(path)
    write_image_processor(path, config.vision_config.image_size, nested=nested_processor_config)
    return path


def make_tiny_generator(path: Path, kind: str, seed: int = 0) -> Path:
    """A tiny random captioner (``kind="caption"``) or VQA model (``kind="vqa"``)."""
    from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering

    tokenizer = write_tokenizer(path)
    # BLIP's VQA decoder attends to the question encoder's output: the text
    # and vision widths must agree, as they do in the released models.
    config = tiny_config(len(tokenizer), tokenizer.convert_tokens_to_ids("[DEC]"), vision_hidden=32)
    torch.manual_seed(seed)
    model_class = BlipForConditionalGeneration if kind == "caption" else BlipForQuestionAnswering
    model = model_class(config).eval()
    widen(model, seed)
    model.save_pretrained(path)
    write_image_processor(path, config.vision_config.image_size)
    return path
