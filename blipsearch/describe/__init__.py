"""Words about pictures: captions (``BlipForConditionalGeneration``) and answers to
questions (``BlipForQuestionAnswering``), with the BLIP paper's decoding settings.

Both batch images with one shared prompt or question, so no row is padded:
``generate`` assumes each prompt row ends in ``[SEP]`` and drops its last
token, which right padding would break. A batch therefore gives exactly the
words the same images give one at a time. (``generate`` runs without
gradients by itself.)

Beam search ranks finished beams by the paper's length rule by default
(:mod:`.decoding`); ``length_rule="transformers"`` uses ``generate``'s. With
one beam both are the same greedy search, so ``generate`` does it. Answers
can also be ranked from a list of choices, as the paper's VQA results were.
"""

from __future__ import annotations

from ..options import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_PROMPT,
    DEFAULT_VQA_MODEL,
    AnswerSettings,
    CaptionSettings,
)
from ..text import same_answer
from .blip import Answerer, Captioner


def load_captioner(spec: str = DEFAULT_CAPTION_MODEL, device: str = "auto") -> Captioner:
    """BLIP's captioner, or BLIP-2's (:mod:`.blip2`) when the checkpoint is one."""
    from ..models.loading import model_family

    if model_family(spec, "caption") == "blip-2":
        from .blip2 import Blip2Captioner, load_blip2

        return Blip2Captioner(load_blip2(spec, "caption", device))
    return Captioner.load(spec, device)


def load_answerer(spec: str = DEFAULT_VQA_MODEL, device: str = "auto") -> Answerer:
    """BLIP's VQA model, or BLIP-2's (:mod:`.blip2`) when the checkpoint is one."""
    from ..models.loading import model_family

    if model_family(spec, "vqa") == "blip-2":
        from .blip2 import Blip2Answerer, load_blip2

        return Blip2Answerer(load_blip2(spec, "vqa", device))
    return Answerer.load(spec, device)


__all__ = [
    "DEFAULT_CAPTION_MODEL",
    "DEFAULT_PROMPT",
    "DEFAULT_VQA_MODEL",
    "AnswerSettings",
    "Answerer",
    "CaptionSettings",
    "Captioner",
    "load_answerer",
    "load_captioner",
    "same_answer",
]
