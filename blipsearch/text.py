"""BLIP's text preprocessing, as in the paper's code (``pre_caption``)."""

from __future__ import annotations

import re

MAX_WORDS = 30
MAX_TOKENS = 35

_PUNCT = re.compile(r"[.!\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """Lowercase, drop BLIP's punctuation set, collapse whitespace, cap the words."""
    text = _PUNCT.sub(" ", text.lower())
    text = _SPACES.sub(" ", text).strip()
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


_QUESTION_PUNCT = re.compile(r"[.!\"()*#:;~]")


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question preprocessing: like captions, but punctuation is dropped, not spaced."""
    question = _QUESTION_PUNCT.sub("", question.lower()).strip()
    words = question.split(" ")
    return " ".join(words[:max_words])
