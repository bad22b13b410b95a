"""ITC similarity for models with one vector per image (BLIP) and with several (BLIP-2's queries).

An image's stored vectors are ``(queries, dim)``, L2-normalized; a text has one.

- image to text (search, lookup, tags, evaluation): the maximum over the image's
  vectors of their cosines with the text, as the BLIP-2 paper scores ITC; with one
  vector it is the plain cosine;
- image to image (``similar``, duplicates) and the vector index's candidate stage:
  the cosine of the images' *pooled* vectors, the L2-normalized mean of their query
  vectors (the vector itself for BLIP).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Floats of a (texts, images, queries) score block computed at once.
_BLOCK = 1 << 25
# A search of a model with several vectors per image takes the most of MULTI_SHORTLIST images,
# MULTI_FACTOR times the results wanted and MULTI_SHARE of the images searched from the
# pooled-vector index, and scores them exactly: up to MULTI_SHORTLIST images the result is
# brute-force max-sim itself. On synthetic BLIP-2-like vectors (benchmarks/multivector.py) this
# finds 0.993 or more of the brute-force top 10 at 100k images (a 1,000 shortlist) and 0.992 or
# more at 1M (3,334); a fixed 1,000 found only 0.94 there.
MULTI_SHORTLIST = 1000
MULTI_FACTOR = 20
MULTI_SHARE = 1 / 300


def as_queries(vector: npt.NDArray[np.float32], dim: int) -> npt.NDArray[np.float32]:
    """One image's vectors as ``(queries, dim)``, from a flat or 2-D array."""
    return np.asarray(vector, np.float32).reshape(-1, dim)


def pooled(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``(n, queries, dim)`` -> ``(n, dim)``: the normalized mean of each image's query vectors."""
    if vectors.shape[1] == 1:
        return np.ascontiguousarray(vectors[:, 0], np.float32)
    mean = vectors.mean(axis=1, dtype=np.float64)
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norms, 1e-12)).astype(np.float32)


def pooled_one(vector: npt.NDArray[np.float32], dim: int) -> npt.NDArray[np.float32]:
    """One image's pooled vector ``(dim,)`` from its vectors in any layout."""
    return pooled(as_queries(vector, dim)[None])[0]


def max_sim(texts: npt.NDArray[np.float32], image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``(T,)`` ITC scores of T text vectors against one image (its vectors flat or ``(queries, dim)``)."""
    return (texts @ as_queries(image, texts.shape[1]).T).max(axis=1)  # type: ignore[no-any-return]


def text_image_scores(texts: npt.NDArray[np.float32], images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``(T, N)`` ITC scores of T text vectors against N images' ``(N, queries, dim)`` vectors."""
    n, queries, dim = images.shape
    if queries == 1:
        return texts @ images[:, 0].T  # type: ignore[no-any-return]
    out = np.empty((len(texts), n), np.float32)
    step = max(1, _BLOCK // max(1, len(texts) * queries))
    for start in range(0, n, step):
        block = images[start : start + step]
        out[:, start : start + len(block)] = (texts @ block.reshape(-1, dim).T).reshape(
            len(texts), len(block), queries).max(axis=2)
    return out
