"""Defaults and settings shared by the command line, the Python API and the server.

Importable without numpy, torch or a database driver: the command line reads them to
build its options and, when a `blipsearch serve` answers for the library, hands them
over without loading any of those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import SettingsError
from .text import checked

DEFAULT_MODEL = "Salesforce/blip-itm-base-coco"
# ITC candidates rescored by ITM, everywhere a depth is not given: on the shapes world's test scenes
# recall does not move from 8 to 64, and each candidate costs a cross-attention pass (plus a vision
# encoder pass when its tokens are not cached); see benchmarks/rerank_depth.py and BENCHMARKS.md.
DEFAULT_RERANK_DEPTH = 16
DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_VQA_MODEL = "Salesforce/blip-vqa-base"
DEFAULT_PROMPT = "a picture of "
# How beam search ranks finished beams: "paper" is transformers 4.15's rule, which BLIP's published
# captions and answers came from (summed log-probability over the whole length, prompt included, end
# token not); "transformers" is today's generate() (over the generated tokens, end token included).
LENGTH_RULES = ("paper", "transformers")
# Beam search keeps this many sequences per image, each with its copy of the image's states: a width far
# past the paper's 3 exhausts memory rather than finding better text.
MAX_BEAMS = 32
# A caption is cached under its prompt and decoding settings (at most 200 characters in the database).
MAX_PROMPT = 150


@dataclass(frozen=True)
class CaptionSettings:
    """The paper's captioning decoder: beam search 3, 5 to 20 tokens (prompt included), the paper's
    length rule."""

    prompt: str = DEFAULT_PROMPT
    num_beams: int = 3
    max_length: int = 20
    min_length: int = 5
    length_rule: str = "paper"

    def __post_init__(self) -> None:
        checked(self.prompt, "The prompt")
        if "\0" in self.prompt or len(self.prompt) > MAX_PROMPT:
            raise SettingsError(f"The prompt must be at most {MAX_PROMPT} characters, without NUL characters.")
        _check_rule(self.length_rule)
        _check_beams(self.num_beams)

    @property
    def cache_key(self) -> str:
        """What a library stores this decoder's captions under (with image content and model):
        the prompt, and the decoding settings too when they are not the paper's. (Libraries
        from before the length rule had their keys rewritten with ``rule=transformers``.)"""
        if self == CaptionSettings(prompt=self.prompt):
            return self.prompt
        rule = ",rule=transformers" if self.length_rule == "transformers" else ""
        return f"{self.prompt}|beams={self.num_beams},min={self.min_length},max={self.max_length}{rule}"


def _check_beams(beams: int) -> None:
    if not 1 <= beams <= MAX_BEAMS:
        raise SettingsError(f"The number of beams must lie in 1..{MAX_BEAMS}, not {beams}.")


def _check_rule(rule: str) -> None:
    if rule not in LENGTH_RULES:
        raise SettingsError(f"The length rule must be one of {', '.join(LENGTH_RULES)}, not {rule!r}.")


@dataclass(frozen=True)
class AnswerSettings:
    """The paper's VQA decoder: beam search 3, at most 10 tokens, the paper's length rule; or, with
    ``choices``, the paper's ranking of a list of answers (the ``shortlist`` answers of likeliest
    first token are scored in full)."""

    num_beams: int = 3
    max_length: int = 10
    min_length: int = 1
    first_token: str = "enc"  # the question's first token: BLIP's [ENC], or "cls"
    length_rule: str = "paper"
    choices: tuple[str, ...] = ()
    shortlist: int = 128  # the original's k_test for VQAv2

    def __post_init__(self) -> None:
        _check_rule(self.length_rule)
        _check_beams(self.num_beams)
        if self.shortlist < 1:
            raise SettingsError("The shortlist of answers must hold at least 1.")
        for choice in self.choices:
            if not checked(choice, "An answer choice").strip():
                raise SettingsError("An answer choice is empty.")


def open_settings(*, db_url: str | None = None, model: str | None = None, device: str = "auto",
                  itm_token: str = "enc", caption_model: str | None = None, vqa_model: str | None = None,
                  quantize: str | None = None, token_cache_gb: float = 0.0) -> dict[str, Any]:
    """The options a library is opened with, as plain values (``None``: the library's own)."""
    return {"db_url": db_url, "model": model, "device": device, "itm_token": itm_token,
            "caption_model": caption_model, "vqa_model": vqa_model, "quantize": quantize,
            "token_cache_gb": float(token_cache_gb)}
