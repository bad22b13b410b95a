"""Composite queries: a search text with more texts and images, each with a weight and a sign.

A search is its text plus any number of *terms*: ``Term(text="sunset")``,
``Term(text="people", weight=-1)``, ``Term(image="~/beach.jpg")`` (a file path, or
an indexed image's id). On the command line: ``--and TEXT``, ``--not TEXT``,
``--like IMAGE``, ``--unlike IMAGE``; a term given as ``WEIGHT*...`` (``2*sunset``,
``0.5*photo.jpg``) has that weight, any other has 1 (``--not`` and ``--unlike``
make it negative).

Ranking by ITC: the cosine to the normalized weighted sum of the terms' normalized
vectors (the search text's weight is 1). Reranking by ITM: each text is matched
against each candidate; the score is the ITC cosine plus the weighted sum of the
texts' ITM logits divided by the sum of the positive texts' weights, so a negative
text's match lowers the score. For the search text alone that is the BLIP paper's
score, ITM logit + cosine. Images are matched by ITC only (ITM compares a text with
an image). The match probability shown (``itm``) is the search text's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import InputPathError
from ..text import checked

_WEIGHTED = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*\*(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One more part of a query: a text or an image (a path, or an indexed image's id), weighted."""

    text: str | None = None
    image: bytes | int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise InputPathError("A query term is a text or an image, not both or neither.")
        if self.text is not None and not checked(self.text, "A query text").strip():
            raise InputPathError("A query text is empty.")
        if not (isinstance(self.weight, (int, float)) and abs(self.weight) < float("inf")) or self.weight == 0:
            raise InputPathError(f"A query term's weight must be a nonzero number, not {self.weight!r}.")


def weighted(value: str) -> tuple[float, str]:
    """``"2*sunset"`` -> (2.0, "sunset"); no weight given: (1.0, value)."""
    match = _WEIGHTED.match(value)
    if not match:
        return 1.0, value
    return float(match[1]), match[2].strip()


def text_term(value: str, sign: float = 1.0) -> Term:
    weight, text = weighted(value)
    return Term(text=text, weight=sign * weight)


def image_term(value: str | bytes | os.PathLike[str], sign: float = 1.0) -> Term:
    raw = os.fsdecode(value)
    weight, rest = weighted(raw) if not os.path.exists(raw) else (1.0, raw)
    if rest.isdigit() and not os.path.exists(rest):
        return Term(image=int(rest), weight=sign * weight)  # an indexed image's id
    path = os.path.abspath(os.path.expanduser(rest))
    if not os.path.isfile(path):
        raise InputPathError(f"{rest} is not a file (or an indexed image's id).")
    return Term(image=os.fsencode(path), weight=sign * weight)
