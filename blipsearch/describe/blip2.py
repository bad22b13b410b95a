"""Captions and answers from BLIP-2 (``Blip2ForConditionalGeneration``: a frozen ViT, the Q-Former's
query outputs projected into an OPT or Flan-T5 language model).

As the model cards give them: a caption is the language model's continuation of
the prompt (none, or a prefix such as ``a photo of``) after the image's query
tokens; an answer is the continuation of ``Question: {q} Answer:``, open-ended.
Decoding is ``generate``'s beam search (the BLIP paper's length rule belongs to
BLIP's BERT decoder, not to these models), and the lengths count generated
tokens. A list of choices is ranked by each choice's summed log-probability
after the question prompt, end token included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelLoadError, SettingsError
from ..options import AnswerSettings, CaptionSettings
from .blip import Answerer, Captioner
from .decoding import ChoiceScore, Ranking

if TYPE_CHECKING:
    import torch

    from ..models.checkpoint import Checkpoint

QUESTION_PROMPT = "Question: {} Answer:"
CHOICE_BATCH = 16


def load_blip2(spec: str, role: str, device: str) -> Checkpoint:
    from transformers import Blip2ForConditionalGeneration

    from ..models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(spec, role, Blip2ForConditionalGeneration, "BLIP-2 captioning and question-answering",
                           "Salesforce/blip2-opt-2.7b", device)
    if getattr(ckpt.net.config, "image_token_index", None) is None:
        raise ModelLoadError(f"{spec} is a BLIP-2 checkpoint of an older layout (no image_token_index in its "
                             "config): use the hub's current files, which transformers' processor needs too.")
    return ckpt


class _Blip2:
    checkpoint: Checkpoint

    @property
    def fingerprint(self) -> str:
        return self.checkpoint.fingerprint

    def _prompt(self, text: str) -> torch.Tensor:
        """The query tokens' placeholders, then the prompt as the tokenizer writes it (OPT's tokenizer
        starts it with </s>, T5's ends it with </s>), as transformers' Blip2Processor lays them out."""
        import torch

        config: Any = self.checkpoint.net.config
        ids = self.checkpoint.tokenizer([text], add_special_tokens=True)["input_ids"][0]  # type: ignore[operator]
        return torch.tensor([[int(config.image_token_index)] * int(config.num_query_tokens) + list(ids)])

    def _check(self, max_length: int, prompt_tokens: int) -> None:
        text: Any = self.checkpoint.net.config.text_config  # type: ignore[union-attr]
        positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        if positions and max_length + prompt_tokens > int(positions):
            raise SettingsError(f"--max-length {max_length} plus the prompt's {prompt_tokens} tokens is beyond "
                                f"this model's {positions} text positions.")

    def _generate(self, pixels: npt.NDArray[np.float32], prompt: torch.Tensor, num_beams: int, max_new: int,
                  min_new: int) -> list[str]:
        ckpt = self.checkpoint
        n = len(pixels)
        ids = prompt.repeat(n, 1).to(ckpt.device)
        with ckpt.computing():
            out = ckpt.net.generate(  # type: ignore[operator]
                pixel_values=ckpt.pixel_values(pixels), input_ids=ids, attention_mask=ids.new_ones(ids.shape),
                num_beams=num_beams, max_new_tokens=max_new, min_new_tokens=min_new, do_sample=False)
        rows = out.tolist()
        if ckpt.net.config.use_decoder_only_language_model:  # type: ignore[union-attr]
            # The output repeats the input ids (the image's placeholders and the prompt) before the new ones.
            width = ids.shape[1]
            rows = [row[width:] if row[:width] == ids[0].tolist() else row for row in rows]
        decoded = ckpt.tokenizer.batch_decode(rows, skip_special_tokens=True)  # type: ignore[attr-defined]
        return [text.strip() for text in decoded]


class Blip2Captioner(_Blip2, Captioner):
    """Captions for batches of preprocessed images: the continuation of the prompt."""

    def check(self, settings: CaptionSettings) -> torch.Tensor:
        prompt = self._prompt(settings.prompt.strip())
        self._check(settings.max_length, prompt.shape[1])
        if settings.min_length > settings.max_length:
            raise SettingsError("--min-length is above --max-length.")
        return prompt

    def caption(self, pixels: npt.NDArray[np.float32], settings: CaptionSettings = CaptionSettings()) -> list[str]:
        if len(pixels) == 0:
            return []
        return self._generate(pixels, self.check(settings), settings.num_beams, settings.max_length,
                              settings.min_length)


class Blip2Answerer(_Blip2, Answerer):
    """Open-ended answers to one question about each image, or the likeliest of a list of choices."""

    def answer(self, pixels: npt.NDArray[np.float32], question: str,
               settings: AnswerSettings = AnswerSettings()) -> list[str]:
        if settings.choices:
            return [r.answer for r in self.rank(pixels, question, settings)]
        if len(pixels) == 0:
            return []
        prompt = self._prompt(QUESTION_PROMPT.format(question.strip()))
        self._check(settings.max_length, prompt.shape[1])
        return self._generate(pixels, prompt, settings.num_beams, settings.max_length, settings.min_length)

    def rank(self, pixels: npt.NDArray[np.float32], question: str, settings: AnswerSettings) -> list[Ranking]:
        """Each choice's summed log-probability (its tokens and the end token) after the question prompt."""
        import torch

        if not settings.choices:
            raise SettingsError("Ranking answers needs a list of choices.")
        if len(pixels) == 0:
            return []
        ckpt = self.checkpoint
        net: Any = ckpt.net
        prompt = self._prompt(QUESTION_PROMPT.format(question.strip()))[0].tolist()
        tokenizer: Any = ckpt.tokenizer
        eos = int(tokenizer.eos_token_id)
        answers = [[t for t in tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"]] + [eos]
                   for c in settings.choices]
        scores = np.zeros((len(pixels), len(answers)), np.float64)
        firsts = np.zeros_like(scores)
        with ckpt.computing(), torch.no_grad():
            for i in range(len(pixels)):
                image = ckpt.pixel_values(pixels[i : i + 1])
                for start in range(0, len(answers), CHOICE_BATCH):
                    chunk = answers[start : start + CHOICE_BATCH]
                    logp, first = self._answer_logprobs(net, image, prompt, chunk)
                    scores[i, start : start + len(chunk)] = logp
                    firsts[i, start : start + len(chunk)] = first
        out = []
        for i in range(len(pixels)):
            winner = int(np.argmax(scores[i]))
            out.append(Ranking(settings.choices[winner], [
                ChoiceScore(c, float(firsts[i, j]), float(scores[i, j]), float(scores[i, j]))
                for j, c in enumerate(settings.choices)]))
        return out

    def _answer_logprobs(self, net: Any, image: torch.Tensor, prompt: list[int],
                         answers: Sequence[list[int]]) -> tuple[list[float], list[float]]:
        import torch

        n, longest = len(answers), max(len(a) for a in answers)
        pad = int(net.config.text_config.pad_token_id or 0)
        device = image.device
        images = image.expand(n, -1, -1, -1)
        if net.config.use_decoder_only_language_model:
            ids = torch.full((n, len(prompt) + longest), pad, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for r, a in enumerate(answers):
                ids[r, : len(prompt) + len(a)] = torch.tensor(prompt + a)
                mask[r, : len(prompt) + len(a)] = 1
            logits = net(pixel_values=images, input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, len(prompt) - 1 : -1], dim=-1)  # predicts each answer token
            target = ids[:, len(prompt):]
        else:
            ids = torch.tensor([prompt] * n, device=device)
            labels = torch.full((n, longest), -100, dtype=torch.long, device=device)
            for r, a in enumerate(answers):
                labels[r, : len(a)] = torch.tensor(a)
            logits = net(pixel_values=images, input_ids=ids, attention_mask=torch.ones_like(ids),
                         labels=labels).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            target = labels.clamp(min=0)
        real = torch.zeros(target.shape, dtype=torch.bool, device=device)
        for r, a in enumerate(answers):
            real[r, : len(a)] = True
        token_logp = logp.gather(2, target.unsqueeze(2)).squeeze(2)
        summed = (token_logp * real).sum(1)
        return summed.tolist(), token_logp[:, 0].exp().tolist()
