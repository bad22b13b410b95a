"""Reranking with BLIP's image-text matching (ITM) head, the paper's recipe.

Each shortlisted image is decoded again and run through the vision encoder;
the text (first token replaced by ``[ENC]``) cross-attends to all its tokens.
The final score is the positive-class ITM logit plus the ITC cosine; the
softmax of the two logits is the match probability shown to users.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..index.images import load_pixels
from ..model import RetrievalModel

RERANK_BATCH = 8


@dataclass(frozen=True)
class Reranked:
    id: int
    itc: float
    score: float
    itm: float | None  # None when the image could not be read again
    itm_logit: float | None


def match_scores(logits: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(positive-class logit, match probability) from ITM logits of shape (N, 2)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return logits[:, 1], probs[:, 1]


def rerank(
    model: RetrievalModel,
    text: str,
    shortlist: list[tuple[int, float]],
    rows: Mapping[int, object],
    batch_size: int = RERANK_BATCH,
) -> list[Reranked]:
    """Score ``shortlist`` ((id, itc) pairs) against ``text``; best first.

    Images that can't be read again (moved or deleted since indexing) keep
    ``itm=None`` and go after the reranked ones, in ITC order.
    """
    readable: list[tuple[int, float, npt.NDArray[np.float32]]] = []
    unreadable: list[Reranked] = []
    for image_id, itc in shortlist:
        try:
            pixels = load_pixels(os.fsdecode(rows[image_id].path), model.image_spec)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a vanished file must not fail the query
            unreadable.append(Reranked(image_id, itc, itc, None, None))
            continue
        readable.append((image_id, itc, pixels))
    scored: list[Reranked] = []
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        tokens = model.image_tokens(np.stack([p for _, _, p in chunk]))
        logit, prob = match_scores(model.itm_logits([text] * len(chunk), tokens))
        for (image_id, itc, _), lg, pr in zip(chunk, logit, prob):
            scored.append(Reranked(image_id, itc, float(lg) + itc, float(pr), float(lg)))
    scored.sort(key=lambda r: r.score, reverse=True)
    return scored + unreadable
