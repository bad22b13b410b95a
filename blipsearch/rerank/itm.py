"""Reranking with BLIP's image-text matching (ITM) head, the paper's recipe.

Each shortlisted image is decoded again and run through the vision encoder
(or its tokens come from a :class:`~blipsearch.rerank.cache.TokenCache`);
the text (first token replaced by ``[ENC]``) cross-attends to all its tokens.
The final score is the positive-class ITM logit plus the ITC cosine; the
softmax of the two logits is the match probability shown to users.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..images.decode import load_pixels
from .cache import TokenCache

if TYPE_CHECKING:
    import torch

    from ..models.base import RetrievalModel

RERANK_BATCH = 8


@dataclass(frozen=True)
class Reranked:
    id: int
    itc: float
    score: float
    itm: float | None  # None when the image could not be read again
    itm_logit: float | None
    more_matches: tuple[float, ...] = ()  # each further text's match probability, in ``more``'s order


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
    cache: TokenCache | None = None,
    more: Sequence[tuple[str, float]] = (),
) -> list[Reranked]:
    """Score ``shortlist`` ((id, itc) pairs) against ``text``; best first.

    ``more`` are further (text, weight) pairs of a composite query (see
    :mod:`blipsearch.search.query`): the ITM logit used is then the weighted sum of all texts'
    logits (``text`` weighing 1) over the sum of the positive weights; the match
    probability stays ``text``'s.

    Vision tokens come from ``cache`` when it has them (and are added to it
    when computed). Images that can't be read again (moved or deleted since
    indexing) keep ``itm=None`` and go after the reranked ones, in ITC order.
    """
    import torch

    tokens: dict[int, torch.Tensor] = {}
    unreadable: list[Reranked] = []
    to_encode: list[tuple[int, npt.NDArray[np.float32]]] = []
    for image_id, itc in shortlist:
        row = rows[image_id]
        cached = cache.get(row.content_hash, model.fingerprint) if cache is not None else None  # type: ignore[attr-defined]
        if cached is not None:  # float32 on the CPU; fresh tokens are on the model's device
            tokens[image_id] = cached.to(model.device, model.dtype)  # type: ignore[attr-defined]
            continue
        try:
            to_encode.append((image_id, load_pixels(os.fsdecode(row.path), model.image_spec)))  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a vanished file must not fail the query
            unreadable.append(Reranked(image_id, itc, itc, None, None))
    # The vision encoder in the model's own batch size (2 on a CPU, where small batches run fastest):
    # each call holds the model, and a server's other requests wait at most one call.
    vision_batch = min(batch_size, model.batch_size)
    for start in range(0, len(to_encode), vision_batch):
        chunk = to_encode[start : start + vision_batch]
        encoded = model.image_tokens(np.stack([p for _, p in chunk]))
        for (image_id, _), tok in zip(chunk, encoded):
            tokens[image_id] = tok
            if cache is not None:
                cache.put(rows[image_id].content_hash, model.fingerprint, tok)  # type: ignore[attr-defined]
    readable = [(i, itc) for i, itc in shortlist if i in tokens]
    scored: list[Reranked] = []
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        batch = torch.stack([tokens[i] for i, _ in chunk])
        logit, prob = match_scores(model.itm_logits([text] * len(chunk), batch))
        others: list[npt.NDArray[np.float32]] = []
        if more:
            positive = 1.0 + sum(w for _, w in more if w > 0)
            for other, weight in more:
                other_logit, other_prob = match_scores(model.itm_logits([other] * len(chunk), batch))
                logit = logit + weight * other_logit
                others.append(other_prob)
            logit = logit / positive
        for n, ((image_id, itc), lg, pr) in enumerate(zip(chunk, logit, prob)):
            scored.append(Reranked(image_id, itc, float(lg) + itc, float(pr), float(lg),
                                   tuple(float(o[n]) for o in others)))
    scored.sort(key=lambda r: r.score, reverse=True)
    return scored + unreadable
