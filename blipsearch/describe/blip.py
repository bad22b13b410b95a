"""BLIP's captioner (``BlipForConditionalGeneration``) and question answerer (``BlipForQuestionAnswering``).

See :mod:`blipsearch.describe` for how both batch and decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import SettingsError
from ..options import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_VQA_MODEL,
    AnswerSettings,
    CaptionSettings,
)
from ..text import MAX_TOKENS, pre_question

if TYPE_CHECKING:
    import torch

    from ..models.checkpoint import Checkpoint
    from .decoding import Ranking


def _check_length(ckpt: Checkpoint, max_length: int) -> None:
    positions = int(ckpt.net.config.text_config.max_position_embeddings)  # type: ignore[union-attr,arg-type]
    if max_length > positions:
        raise SettingsError(f"--max-length {max_length} is beyond this model's {positions} text positions.")


def _text_config(ckpt: Checkpoint) -> Any:
    return ckpt.net.config.text_config  # type: ignore[union-attr]


def _bos(ckpt: Checkpoint) -> int:
    """The decoder's first token, [DEC]."""
    return int(_text_config(ckpt).bos_token_id)


def _image_states(ckpt: Checkpoint, pixels: npt.NDArray[np.float32]) -> torch.Tensor:
    """The vision encoder's output for each image, which the text models cross-attend to."""
    import torch

    with torch.no_grad():
        return ckpt.net.vision_model(pixel_values=ckpt.pixel_values(pixels))[0]  # type: ignore[operator,no-any-return]


def _paper_search(ckpt: Checkpoint, prompt: torch.Tensor, states: torch.Tensor, states_mask: torch.Tensor | None,
                  num_beams: int, min_length: int, max_length: int) -> list[list[int]]:
    """The paper's beam search from ``prompt`` rows over ``states``: token ids, prompt included."""
    from .decoding import beam_search

    found = beam_search(ckpt.net.text_decoder, prompt, states, states_mask, num_beams=num_beams,
                        min_length=min_length, max_length=max_length, eos_id=int(_text_config(ckpt).sep_token_id))
    return [d.tokens for d in found]


class Captioner:
    """Captions for batches of preprocessed images."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    @classmethod
    def load(cls, spec: str = DEFAULT_CAPTION_MODEL, device: str = "auto") -> Captioner:
        """BLIP's captioner (:func:`blipsearch.describe.load_captioner` picks the family)."""
        from transformers import BlipForConditionalGeneration

        from ..models.checkpoint import load_checkpoint

        return cls(load_checkpoint(spec, "caption", BlipForConditionalGeneration, "BLIP captioning",
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
            if settings.length_rule == "paper" and settings.num_beams > 1:
                images = _image_states(ckpt, pixels)
                ids = ids[:, :-1].clone()  # as generate: no [SEP], [DEC] for [CLS]
                ids[:, 0] = _bos(ckpt)
                out: Sequence[Sequence[int]] | torch.Tensor = _paper_search(
                    ckpt, ids, images, None, settings.num_beams, settings.min_length, settings.max_length)
            else:
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
        rows: Sequence[Sequence[int]] = out.tolist() if hasattr(out, "tolist") else out
        n = prompt.shape[1] - 1
        head = decode([rows[0][:n]], skip_special_tokens=True)[0]  # the same prompt starts every row
        full = decode(rows, skip_special_tokens=True)
        tails = decode([row[n:] for row in rows], skip_special_tokens=True)
        return [(text[len(head):] if text.startswith(head) else tail).strip() for text, tail in zip(full, tails)]


class Answerer:
    """Answers to one question about each image of a batch."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    @classmethod
    def load(cls, spec: str = DEFAULT_VQA_MODEL, device: str = "auto") -> Answerer:
        """BLIP's VQA model (:func:`blipsearch.describe.load_answerer` picks the family)."""
        from transformers import BlipForQuestionAnswering

        from ..models.checkpoint import load_checkpoint

        return cls(load_checkpoint(spec, "vqa", BlipForQuestionAnswering, "BLIP visual question answering",
                                   DEFAULT_VQA_MODEL, device))

    def _question(self, question: str, settings: AnswerSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """The question's token ids and attention mask, as a batch of one row."""
        ckpt = self.checkpoint
        batch = ckpt.tokenizer([pre_question(question)], truncation=True, max_length=MAX_TOKENS,  # type: ignore[operator]
                               return_tensors="pt")
        ids = batch["input_ids"].clone()
        if settings.first_token == "enc":
            ids[:, 0] = ckpt.enc_token_id
        return ids.to(ckpt.device), batch["attention_mask"].to(ckpt.device)

    def _question_states(self, pixels: npt.NDArray[np.float32], ids: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's states for the question about each image, as the VQA decoder reads them."""
        import torch

        images = _image_states(self.checkpoint, pixels)
        with torch.no_grad():
            n = len(pixels)
            return self.checkpoint.net.text_encoder(  # type: ignore[operator,no-any-return]
                input_ids=ids.repeat(n, 1), attention_mask=mask.repeat(n, 1), encoder_hidden_states=images,
                encoder_attention_mask=torch.ones(images.shape[:2], dtype=torch.long, device=images.device),
                return_dict=True).last_hidden_state

    def answer(self, pixels: npt.NDArray[np.float32], question: str,
               settings: AnswerSettings = AnswerSettings()) -> list[str]:
        """Generated answers; with ``settings.choices``, the best-ranked choice."""
        if settings.choices:
            return [r.answer for r in self.rank(pixels, question, settings)]
        ckpt = self.checkpoint
        if len(pixels) == 0:
            return []
        ids, mask = self._question(question, settings)
        _check_length(ckpt, settings.max_length)
        n = len(pixels)
        with ckpt.computing():
            if settings.length_rule == "paper" and settings.num_beams > 1:
                states = self._question_states(pixels, ids, mask)
                start = ids.new_full((n, 1), _bos(ckpt))
                # The decoder reads every question position, as generate() and the original let it.
                out: Sequence[Sequence[int]] | torch.Tensor = _paper_search(
                    ckpt, start, states, None, settings.num_beams, settings.min_length, settings.max_length)
            else:
                out = ckpt.net.generate(  # type: ignore[operator]
                    input_ids=ids.repeat(n, 1),
                    attention_mask=mask.repeat(n, 1),
                    pixel_values=ckpt.pixel_values(pixels),
                    num_beams=settings.num_beams,
                    max_length=settings.max_length,
                    min_length=settings.min_length,
                    do_sample=False,
                )
        return [t.strip() for t in ckpt.tokenizer.batch_decode(out, skip_special_tokens=True)]  # type: ignore[attr-defined]

    def rank(self, pixels: npt.NDArray[np.float32], question: str,
             settings: AnswerSettings) -> list[Ranking]:
        """``settings.choices`` ranked for each image, as the paper's VQA evaluation ranks its answer list."""
        from .decoding import rank_answers

        if not settings.choices:
            raise SettingsError("Ranking answers needs a list of choices.")
        if len(pixels) == 0:
            return []
        ckpt = self.checkpoint
        ids, mask = self._question(question, settings)
        answers = ckpt.tokenizer(list(settings.choices), padding="longest", truncation=True,  # type: ignore[operator]
                                 max_length=MAX_TOKENS, return_tensors="pt")
        answer_ids = answers["input_ids"].clone()
        answer_ids[:, 0] = _bos(ckpt)
        with ckpt.computing():
            states = self._question_states(pixels, ids, mask)
            return rank_answers(ckpt.net.text_decoder, states, mask.repeat(len(pixels), 1),  # type: ignore[union-attr]
                                answer_ids.to(ckpt.device), answers["attention_mask"].to(ckpt.device),
                                settings.choices, settings.shortlist)


