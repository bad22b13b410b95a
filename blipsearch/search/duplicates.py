"""Near-duplicate photos: groups of indexed images whose ITC vectors are within a cosine threshold.

Every pair of images at cosine >= ``threshold`` is found with FAISS range search
(exact inner products, in blocks of queries, up to ``EXACT_LIMIT`` images; an
inverted-file index probing the nearest lists above, which can miss a pair but
not invent one). Pairs join into groups (single linkage: A~B and B~C make one
group, even if A and C are further apart). Within a group the best copy comes
first: most pixels, then largest file, then path; copies with the same content
hash as an earlier one (byte-identical files) are marked ``exact``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_THRESHOLD = 0.95
EXACT_LIMIT = 50_000  # images compared all against all (14 s on 2 cores); above, an IVF index proposes the pairs
_BLOCK = 2048


@dataclass(frozen=True)
class Copy:
    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    similarity: float  # cosine to the group's best copy
    exact: bool  # the same bytes (content hash) as a copy before it in the group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DuplicateGroup:
    rank: int
    copies: list[Copy]

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "copies": [c.to_dict() for c in self.copies]}


def similar_pairs(vectors: npt.NDArray[np.float32], threshold: float,
                  exact_limit: int = EXACT_LIMIT) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row pairs (i < j) of L2-normalized ``vectors`` whose inner product is at least ``threshold``."""
    import faiss

    n, dim = vectors.shape
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    vectors = np.ascontiguousarray(vectors, np.float32)
    if n <= exact_limit:
        index: Any = faiss.IndexFlatIP(dim)
    else:
        lists = max(1, min(int(4 * np.sqrt(n)), n // 40))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)]
        index.train(sample)
        index.nprobe = 16
    index.add(vectors)
    firsts, seconds = [], []
    for start in range(0, n, _BLOCK):
        lims, _, found = index.range_search(vectors[start : start + _BLOCK], float(threshold))
        rows = np.repeat(np.arange(start, min(n, start + _BLOCK)), np.diff(lims.astype(np.int64)))
        keep = found > rows  # each pair once, never an image with itself
        firsts.append(rows[keep])
        seconds.append(found[keep])
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def components(n: int, firsts: npt.NDArray[np.int64], seconds: npt.NDArray[np.int64]) -> list[list[int]]:
    """Groups of two or more of ``range(n)`` joined by the pairs (union-find), each sorted."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(firsts.tolist(), seconds.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in sorted(set(firsts.tolist()) | set(seconds.tolist())):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def group_copies(ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32],
                 fetch: Callable[[list[int]], dict[int, Any]], threshold: float,
                 exact_limit: int = EXACT_LIMIT) -> list[DuplicateGroup]:
    """The duplicate groups among the images ``ids`` with these ``vectors``, largest group first;
    ``fetch(ids)`` gives the database rows (path, size, dimensions, content hash) of group members."""
    firsts, seconds = similar_pairs(vectors, threshold, exact_limit)
    groups = components(len(ids), firsts, seconds)
    rows = fetch([int(ids[m]) for g in groups for m in g])
    out = []
    for members in groups:
        found = [(int(ids[m]), m) for m in members if int(ids[m]) in rows]

        def quality(item: tuple[int, int]) -> tuple[int, int, bytes]:
            row = rows[item[0]]
            return (-(row.width or 0) * (row.height or 0), -row.size, bytes(row.path))

        found.sort(key=quality)
        if len(found) < 2:
            continue
        best = vectors[found[0][1]]
        seen: set[str] = set()
        copies = []
        for image_id, m in found:
            row = rows[image_id]
            copies.append(Copy(image_id, os.fsdecode(row.path), row.width, row.height, row.size,
                               float(vectors[m] @ best), row.content_hash in seen))
            seen.add(row.content_hash)
        out.append(copies)
    out.sort(key=lambda copies: (-len(copies), copies[0].path))
    return [DuplicateGroup(rank=n + 1, copies=c) for n, c in enumerate(out)]
