"""BLIP's text preprocessing, as in the paper's code (``pre_caption``), and what text may be."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import InputPathError

MAX_WORDS = 30
MAX_TOKENS = 35

_PUNCT = re.compile(r"[.!\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


def checked(text: str, what: str = "The text") -> str:
    """``text`` if it is valid Unicode, else a clear error.

    A shell passes bytes that are not UTF-8 as they are (``$'dog \\xff cat'``), and
    Python keeps them as lone surrogates, which neither the tokenizer nor a database
    can take. Such text is refused, as text files that are not UTF-8 are, rather than
    searched for with the bad bytes dropped or replaced.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        try:  # the bytes the shell passed, when that is where the surrogates came from
            shown = " ".join(f"0x{b:02x}" for b in text[exc.start : exc.end].encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            shown = "a lone surrogate"
        raise InputPathError(f"{what} is not valid UTF-8 ({shown} at character {exc.start + 1}): check the "
                             "terminal's or the file's encoding.") from None
    return text


def pre_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """Lowercase, drop BLIP's punctuation set, collapse whitespace, cap the words."""
    text = _PUNCT.sub(" ", checked(text).lower())
    text = _SPACES.sub(" ", text).strip()
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


_QUESTION_PUNCT = re.compile(r"[.!\"()*#:;~]")


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question preprocessing: like captions, but punctuation is dropped, not spaced."""
    question = _QUESTION_PUNCT.sub("", checked(question, "The question").lower()).strip()
    words = question.split(" ")
    return " ".join(words[:max_words])


def same_answer(answer: str, expected: str) -> bool:
    """Answers compare without case, surrounding space or final punctuation."""
    def norm(s: str) -> str:
        return " ".join(s.lower().strip().rstrip(".!?").split())

    return norm(answer) == norm(expected)


@dataclass(frozen=True)
class TextEntry:
    """A text of a library's collection (see :mod:`blipsearch.texts`), with the id and metadata of its file."""

    text: str
    external_id: str | None = None
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        checked(self.text, "A text")
        checked(self.external_id or "", "A text's id")
        if "\0" in self.text or "\0" in (self.external_id or ""):
            raise InputPathError(f"The text {self.text[:60]!r} holds a NUL character, which the database can't "
                                 "store.")
