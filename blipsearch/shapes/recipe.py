"""The shapes-world training recipe's settings: model sizes and every hyperparameter of a run
besides the seed, and ``--set NAME=VALUE`` overrides of them."""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sizes:
    """Transformer sizes shared by the three models."""

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 8
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    max_positions: int = 64


@dataclass
class Hyper:
    """Everything that determines a training run besides the seed."""

    sizes: Sizes = field(default_factory=Sizes)
    train_images: int = 50000
    test_images: int = 400
    rerank_k: int = 16
    retrieval_steps: int = 1200
    retrieval_batch: int = 256
    retrieval_lr: float = 1e-3
    temp_init: float = 0.07
    itm_weight: float = 2.0
    # ITC also contrasts each image against its caption with one attribute
    # changed (mostly the shape): in-batch negatives rarely differ from a
    # scene only in shape, so without these the embedding learns colors long
    # before shapes. Swaps (binding) are left to ITM.
    itc_changed_negatives: bool = True
    itc_shape_change_prob: float = 0.7
    # Share of ITC-mined ITM negatives replaced by uniformly drawn ones: easy
    # negatives get the matcher off the "always no" plateau early on.
    itm_easy_frac: float = 0.5
    # ITM refinement: more ITC + ITM steps on the frozen vision encoder (text side only).
    itm_refine_steps: int = 3000
    itm_refine_batch: int = 64
    itm_refine_lr: float = 3e-4
    itm_refine_temp: float = 0.04
    itm_refine_easy_frac: float = 0.2
    # Weights of partial descriptions ("a red circle": every scene showing one) in refinement's ITM
    # and ITC losses, beside the whole captions; 0 trains whole captions only. ITC's is lower: the
    # text encoder's [CLS] serves both kinds of text, and whole captions' R@1 must not drop.
    itm_refine_partial: float = 1.0
    itm_refine_partial_itc: float = 0.2
    caption_steps: int = 1500
    caption_batch: int = 128
    caption_lr: float = 5e-4
    vqa_steps: int = 1500
    vqa_batch: int = 128
    vqa_lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    # Probability that an ITC/ITM text is an alternative phrasing rather than the canonical one.
    alt_caption_prob: float = 0.25
    eval_beams: int = 3



def override(hp: Hyper, item: str) -> None:
    """Apply one ``NAME=VALUE`` (``sizes.NAME`` for model sizes), converting VALUE to the field's type."""
    name, sep, value = item.partition("=")
    if not sep:
        raise ValueError("expected NAME=VALUE")
    *path, last = name.strip().split(".")
    target: Any = hp
    for part in path:
        target = getattr(target, part)
    current = getattr(target, last)  # AttributeError names an unknown field
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{value!r} is not true/false")
        setattr(target, last, value.lower() in ("true", "1"))
    elif isinstance(current, (int, float)):
        setattr(target, last, type(current)(value))
    else:
        raise ValueError(f"{name} is not a number or flag")
