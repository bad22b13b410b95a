"""Zero-shot tagging: a vocabulary of labels, each written into a prompt template."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import InputPathError
from . import rank_texts

if TYPE_CHECKING:
    import torch

    from ..models.base import RetrievalModel

DEFAULT_TEMPLATE = "a photo of a {}"
MAX_LABEL = 400


@dataclass(frozen=True)
class Tag:
    """``score``: ITM logit + ITC cosine when reranked, else the cosine; ``itm``: match probability."""

    label: str
    rank: int
    score: float
    itc: float
    itm: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TagResult:
    path: str
    tags: list[Tag] | None
    error: str | None = None


@dataclass(frozen=True)
class Vocabulary:
    labels: list[str]
    template: str
    texts: list[str]
    vectors: npt.NDArray[np.float32]
    model: RetrievalModel

    @property
    def key(self) -> str:
        """Identifies labels + template, so tags from another vocabulary are kept apart."""
        return self.key_of(self.labels, self.template)

    @staticmethod
    def key_of(labels: list[str], template: str) -> str:
        """The :attr:`key` of the vocabulary of ``labels`` (as :meth:`checked` gives them) and ``template``."""
        return hashlib.sha256(json.dumps([template, labels]).encode()).hexdigest()[:32]

    @classmethod
    def make(cls, model: RetrievalModel, labels: list[str], template: str = DEFAULT_TEMPLATE) -> Vocabulary:
        labels = cls.checked(labels, template)
        texts = [template.replace("{}", label) for label in labels]
        return cls(labels, template, texts, model.embed_texts(texts), model)

    @staticmethod
    def checked(labels: list[str], template: str) -> list[str]:
        """The labels of a vocabulary, stripped and without repeats; an empty list, a label that can't be
        stored or a template without ``{}`` is refused."""
        labels = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
        if not labels:
            raise InputPathError("The label list is empty.")
        for label in labels:  # stored as tags: at most 400 characters, no NUL (PostgreSQL stores none)
            if len(label) > MAX_LABEL or "\0" in label:
                raise InputPathError(f"The label {label[:60]!r} is not a label: at most {MAX_LABEL} characters, "
                                     "without NUL characters.")
        if "{}" not in template:
            raise InputPathError(f"The template {template!r} has no {{}} where the label goes.")
        return labels

    def rank(self, image_vector: npt.NDArray[np.float32], tokens: torch.Tensor | None, k: int,
             rerank_depth: int) -> list[Tag]:
        ranked = rank_texts(self.model, image_vector, tokens, self.texts, self.vectors, k, rerank_depth)
        return [Tag(self.labels[i], n + 1, score, itc, itm) for n, (i, score, itc, itm) in enumerate(ranked)]
