"""Words about pictures: captions (``BlipForConditionalGeneration``) and answers to
questions (``BlipForQuestionAnswering``), with the BLIP paper's decoding settings.

Both batch images with one shared prompt or question, so no row is padded:
``generate`` assumes each prompt row ends in ``[SEP]`` and drops its last
token, which right padding would break. A batch therefore gives exactly the
words the same images give one at a time. (``generate`` runs without
gradients by itself.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import SettingsError
from ..options import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_PROMPT,
    DEFAULT_VQA_MODEL,
    AnswerSettings,
    CaptionSettings,
)
from ..text import MAX_TOKENS, pre_question

if TYPE_CHECKING:
    import torch

    from ..model import Checkpoint

def _check_length(ckpt: Checkpoint, max_length: int) -> None:
    positions = int(ckpt.net.config.text_config.max_position_embeddings)  # type: ignore[union-attr,arg-type]
    if max_length > positions:
        raise SettingsError(f"--max-length {max_length} is beyond this model's {positions} text positions.")


class Captioner:
    """Captions for batches of preprocessed images."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    @classmethod
    def load(cls, spec: str = DEFAULT_CAPTION_MODEL, device: str = "auto") -> Captioner:
        from transformers import BlipForConditionalGeneration

        from ..model import load_checkpoint

        return cls(load_checkpoint(spec, "caption", BlipForConditionalGeneration, "captioning",
                                   DEFAULT_CAPTION_MODEL, device))

    @property
    def fingerprint(self) -> str:
        return self.checkpoint.fingerprint

    def check(self, settings: CaptionSettings) -> torch.Tensor:
        """The prompt's token ids, once the settings are known to fit this model."""
        ckpt = self.checkpoint
        _check_length(ckpt, settings.max_length)
        prompt = ckpt.tokenizer([settings.prompt], return_tensors="pt")["input_ids"]  # type: ignore[operator]
        if prompt.shape[1] - 1 >= settings.max_length:  # generate drops the prompt's [SEP]
            raise SettingsError(f"The prompt takes {prompt.shape[1] - 1} of the --max-length {settings.max_length} "
                                "tokens, leaving none for the caption: shorten it or raise --max-length.")
        return prompt  # type: ignore[no-any-return]

    def caption(self, pixels: npt.NDArray[np.float32], settings: CaptionSettings = CaptionSettings()) -> list[str]:
        ckpt = self.checkpoint
        if len(pixels) == 0:
            return []
        prompt = self.check(settings)
        ids = prompt.repeat(len(pixels), 1).to(ckpt.device)
        with ckpt.computing():
            out = ckpt.net.generate(  # type: ignore[operator]
                pixel_values=ckpt.pixel_values(pixels),
                input_ids=ids,
                num_beams=settings.num_beams,
                max_length=settings.max_length,
                min_length=settings.min_length,
                do_sample=False,
            )
        # The output starts with the prompt's tokens ([DEC] for [CLS], no [SEP]). Their decoded text, not
        # the prompt as typed (spacing, punctuation, [UNK] words), is what to cut from the caption's.
        decode = ckpt.tokenizer.batch_decode  # type: ignore[attr-defined]
        n = prompt.shape[1] - 1
        head = decode(out[:1, :n], skip_special_tokens=True)[0]  # the same prompt starts every row
        full = decode(out, skip_special_tokens=True)
        tails = decode(out[:, n:], skip_special_tokens=True)
        return [(text[len(head):] if text.startswith(head) else tail).strip() for text, tail in zip(full, tails)]


class Answerer:
    """Answers to one question about each image of a batch."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    @classmethod
    def load(cls, spec: str = DEFAULT_VQA_MODEL, device: str = "auto") -> Answerer:
        from transformers import BlipForQuestionAnswering

        from ..model import load_checkpoint

        return cls(load_checkpoint(spec, "vqa", BlipForQuestionAnswering, "visual question answering",
                                   DEFAULT_VQA_MODEL, device))

    def answer(self, pixels: npt.NDArray[np.float32], question: str,
               settings: AnswerSettings = AnswerSettings()) -> list[str]:
        ckpt = self.checkpoint
        if len(pixels) == 0:
            return []
        batch = ckpt.tokenizer([pre_question(question)], truncation=True, max_length=MAX_TOKENS,  # type: ignore[operator]
                               return_tensors="pt")
        ids = batch["input_ids"].clone()
        if settings.first_token == "enc":
            ids[:, 0] = ckpt.enc_token_id
        _check_length(ckpt, settings.max_length)
        n = len(pixels)
        with ckpt.computing():
            out = ckpt.net.generate(  # type: ignore[operator]
                input_ids=ids.repeat(n, 1).to(ckpt.device),
                attention_mask=batch["attention_mask"].repeat(n, 1).to(ckpt.device),
                pixel_values=ckpt.pixel_values(pixels),
                num_beams=settings.num_beams,
                max_length=settings.max_length,
                min_length=settings.min_length,
                do_sample=False,
            )
        return [t.strip() for t in ckpt.tokenizer.batch_decode(out, skip_special_tokens=True)]  # type: ignore[attr-defined]


def same_answer(answer: str, expected: str) -> bool:
    """Answers compare without case, surrounding space or final punctuation."""
    def norm(s: str) -> str:
        return " ".join(s.lower().strip().rstrip(".!?").split())

    return norm(answer) == norm(expected)


__all__ = [
    "DEFAULT_CAPTION_MODEL",
    "DEFAULT_PROMPT",
    "DEFAULT_VQA_MODEL",
    "AnswerSettings",
    "Answerer",
    "CaptionSettings",
    "Captioner",
    "same_answer",
]
