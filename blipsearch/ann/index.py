"""The FAISS vector index: derived from the database, saved atomically, rebuilt when stale.

The file holds the serialized FAISS index followed by a small JSON header
(generation, model fingerprint, dimension, count). The header's generation is
compared with the database's: any difference means the file is stale (an
interrupted or concurrent run) and it is rebuilt from the stored vectors, or
caught up from the rows written since.

An index is built from a :class:`VectorSource` read a chunk at a time (a
library's database): the raw vectors are never all in memory at once. A file is
loaded memory-mapped, so that every process searching a library shares one copy
of it; it is never changed in place: later changes are kept beside it (see
:data:`OVERLAY_LIMIT`).
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np
import numpy.typing as npt

from ..system import atomic_write

_MAGIC = b"BLIPSVEC"
_VERSION = 1  # files of version 1 begin with the header; version 2 ends with it (the index is mapped)
_MAPPED_VERSION = 2


# Below this many vectors search is exact (~10 ms per query at 200k on two cores); above, IVF.
FLAT_LIMIT = 200_000
# Memory the vectors may take in an approximate index before they are compressed (product quantization).
DEFAULT_MEMORY_BUDGET = 4 << 30
# Bytes per vector under product quantization: 2 * PQ_BYTES codes of 4 bits, scanned by FAISS's SIMD
# "fast-scan" kernels (5x faster than 8-bit codes; a deeper exact re-score makes up: BENCHMARKS.md).
PQ_BYTES = 64
# A compressed index shortlists `refine` times k, re-scored exactly from the full vectors, the factor
# tuned with the lists (files from before it was tuned use REFINE_FACTOR).
REFINE_FACTOR = 8
REFINE_FACTORS = (8, 16, 32, 64)
RETRAIN_GROWTH = 2.0  # an approximate index is retrained when the collection has doubled since
# A filter selecting at most this many images of an approximate index is searched exactly (full vectors).
EXACT_SUBSET_LIMIT = 50_000
# An approximate index must find at least this share of the exact top 10 (measured when it is built,
# on the library's own vectors): the fewest lists that reach it are kept.
RECALL_TARGET = 0.95
TUNING_QUERIES = 300
SINGLE_QUERIES = 50  # timed one at a time for the choice between exact search and the tuned index
# An approximate index is replaced by exact search unless one query takes under APPROXIMATE_GAIN of one exact.
PREFER_EXACT = True
APPROXIMATE_GAIN = 0.8
CHUNK = 100_000  # vectors per chunk when filled from memory (a database gives its own chunks)
# k-means training: TRAIN_PER_LIST vectors per list, at most MAX_TRAIN in all, and at most MAX_LISTS
# lists (IVF8192 on 300k 256-d vectors: 174 s on two cores; benchmarks/vector_index_10m.py).
TRAIN_PER_LIST = 64
MAX_TRAIN = 300_000
MAX_LISTS = 8192
# A mapped index keeps the vectors added, and its ids removed or replaced, since it was loaded beside
# it; past this many in all it is copied into memory and changed there.
OVERLAY_LIMIT = 50_000
_PROBES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class IndexHeader:
    generation: int
    model: str
    dim: int
    count: int
    kind: str = "flat"
    trained_on: int = 0
    library: str = ""  # which database the file mirrors (see Library): another one's file is never used
    nprobe: int = 0  # lists scanned per query, as tuned (approximate kinds)
    recall: float | None = None  # recall@10 measured when it was tuned, on the library's own vectors
    target: float | None = None  # the recall@10 it was tuned to (None: never tuned)
    filtered_nprobe: int = 0  # lists a filtered search scans (0: as unfiltered)
    filtered_recall: float | None = None  # its recall@10, measured with the hardest filter it serves
    refine: int = 0  # a compressed index's re-scored shortlist, times k (0: REFINE_FACTOR)


def is_tuned_size(count: int) -> bool:
    """Whether an index of ``count`` vectors is built approximate, and so tuned to a recall target."""
    return count >= FLAT_LIMIT


def choose_kind(count: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> str:
    """``flat`` (exact) for small collections; ``ivf-flat`` or, past the memory budget, ``ivf-pq``."""
    if not is_tuned_size(count):
        return "flat"
    return "ivf-flat" if count * dim * 4 <= memory_budget else "ivf-pq"


@dataclass(frozen=True)
class VectorSource:
    """The vectors an index is built from, read a chunk at a time: every id (ascending), the
    ``(ids, vectors)`` chunks, and the vectors of given ids, in their order."""

    ids: npt.NDArray[np.int64]
    chunks: Callable[[], Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]]
    fetch: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]

    @classmethod
    def of(cls, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> VectorSource:
        """Vectors already in memory, ``vectors[n]`` being ``ids[n]``'s."""
        ids = np.asarray(ids, np.int64)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]

        def chunks() -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
            for start in range(0, len(ids), CHUNK):
                yield ids[start : start + CHUNK], np.ascontiguousarray(vectors[start : start + CHUNK], np.float32)

        def fetch(wanted: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
            return np.asarray(vectors[order[np.searchsorted(ordered, np.asarray(wanted, np.int64))]], np.float32)

        return cls(ordered, chunks, fetch)


class VectorIndex:
    """Inner-product search over L2-normalized vectors, keyed by database ids.

    Exact below :data:`FLAT_LIMIT` vectors; an IVF index above it (see
    :meth:`build_from`). Both support adding and removing ids in place; a
    memory-mapped one (see :meth:`load`) keeps such changes beside it.
    """

    def __init__(self, dim: int, index: faiss.Index | None = None, kind: str = "flat", trained_on: int = 0,
                 mapped: bool = False) -> None:
        self.dim = dim
        self.kind = kind
        self.trained_on = trained_on
        self.recall: float | None = None  # measured recall@10 of the tuned setting (approximate kinds)
        self.target: float | None = None  # the recall@10 it was tuned to, when it was
        self.single_ms: dict[str, float] = {}  # one query's median time, tuned and exact, when built
        # Lists scanned by a filtered search through the index (0: as many as unfiltered), tuned as
        # the unfiltered setting is, on a random subset; its recall@10 and every setting tried.
        self.filtered_nprobe = 0
        self.filtered_recall: float | None = None
        self.filtered_tuning: list[dict[str, float]] = []
        self.refine = REFINE_FACTOR  # shortlist re-scored exactly, times k (ivf-pq), as tuned
        self._timing_queries = np.zeros((0, dim), np.float32)
        self.tuning: list[dict[str, float]] = []  # every setting tried: nprobe, recall, p50 ms
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # A mapped index is a view of its file (FAISS aborts the process on changing one): the vectors
        # added since it was loaded, and its own ids removed or replaced since, are kept here.
        self.mapped = mapped
        self._added_ids = np.zeros(0, np.int64)
        self._added = np.zeros((0, dim), np.float32)
        self._hidden: set[int] = set()
        self._own_ids: npt.NDArray[np.int64] | None = None  # the mapped index's ids, sorted

    @classmethod
    def build(
        cls,
        dim: int,
        ids: npt.NDArray[np.int64],
        vectors: npt.NDArray[np.float32],
        memory_budget: int | None = None,
        seed: int = 0,
        prefer_exact: bool | None = None,
        target: float = RECALL_TARGET,
    ) -> VectorIndex:
        """:meth:`build_from` vectors in memory."""
        return cls.build_from(dim, VectorSource.of(ids, vectors), memory_budget, seed, prefer_exact, target)

    @classmethod
    def build_from(
        cls,
        dim: int,
        source: VectorSource,
        memory_budget: int | None = None,
        seed: int = 0,
        prefer_exact: bool | None = None,
        target: float = RECALL_TARGET,
    ) -> VectorIndex:
        """The right index for ``len(source.ids)`` vectors, filled with them a chunk at a time. An
        approximate one is trained on a sample, then tuned to ``target`` (see :meth:`tune`); with
        ``prefer_exact``, exact search replaces it when one query at the tuned setting is no faster
        than one exact query (default :data:`PREFER_EXACT`). ``memory_budget``: see :func:`choose_kind`
        (default :data:`DEFAULT_MEMORY_BUDGET`)."""
        count = len(source.ids)
        kind = choose_kind(count, dim, DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)
        if kind == "flat":
            return cls(dim)._filled(source)
        # About 4 sqrt(n) lists, each scanned list holding ~n / nlist vectors.
        nlist = int(2 ** round(np.log2(4 * np.sqrt(count))))
        nlist = max(1, min(nlist, MAX_LISTS, count // 39))  # k-means wants ~39+ points per list
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf-flat":
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, 2 * PQ_BYTES, 4, faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = True
        quantizer.this.disown()
        rng = np.random.default_rng(seed)
        picked = rng.choice(count, size=min(count, TRAIN_PER_LIST * nlist, MAX_TRAIN), replace=False)
        ivf.train(np.ascontiguousarray(source.fetch(source.ids[picked]), np.float32))
        index = cls(dim, ivf, kind, trained_on=count)._filled(source)
        exact = index.tune(source, target=target, seed=seed)
        if kind == "ivf-flat" and (PREFER_EXACT if prefer_exact is None else prefer_exact):
            index.single_ms = {"tuned": index.single_query_ms(), "exact": exact()}
        if index.single_ms and index.single_ms["tuned"] >= APPROXIMATE_GAIN * index.single_ms["exact"]:
            # The lists it must scan to be right make it no faster than exact search: search exactly.
            flat = cls(dim, trained_on=count)._filled(source)
            flat.tuning, flat.target, flat.single_ms = index.tuning, target, index.single_ms
            return flat
        return index

    def _filled(self, source: VectorSource) -> VectorIndex:
        for ids, vectors in source.chunks():
            self.add(ids, vectors)
        return self

    def tune(self, source: VectorSource, target: float = RECALL_TARGET, seed: int = 0) -> Callable[[], float]:
        """Scan the fewest lists per query (at least ``max(16, nlist / 64)``), a compressed index with
        the shallowest re-scored shortlist (:attr:`refine`), that find ``target`` of the exact top 10,
        measured with a sample of the indexed vectors as queries (each one's own hit left out) against
        exact search over all of them, read from ``source`` a chunk at a time (vectors as spread as
        real embeddings need hundreds of lists: benchmarks/vector_index.py). When none reaches it,
        every list is scanned. Filtered searches get their own number of lists, tuned the same way
        (:attr:`filtered_nprobe`). Returns what times one exact query (ms, median)."""
        if self.kind == "flat":
            return lambda: 0.0
        ivf = faiss.extract_index_ivf(self.index)
        rng = np.random.default_rng(seed)
        count = len(source.ids)
        own = source.ids[rng.choice(count, min(TUNING_QUERIES, count), replace=False)]
        sample = np.ascontiguousarray(source.fetch(own), np.float32)
        truth = _streamed_top(sample, source.chunks(), 11)
        self._timing_queries = sample[:SINGLE_QUERIES]

        def top10(found: npt.NDArray[np.int64], query: int) -> set[int]:
            return set([i for i in found.tolist() if i >= 0 and i != own[query]][:10])  # its own hit left out

        truth_sets = [top10(row, q) for q, row in enumerate(truth)]
        refine = (lambda wanted: source.fetch(np.asarray(wanted, np.int64))) if self.kind == "ivf-pq" else None

        def sweep(start: int, truth_sets: list[set[int]], among: npt.NDArray[np.int64] | None,
                  filtered: bool) -> list[dict[str, float]]:
            """Recall and time per query from ``start`` lists up, until ``target`` is reached. Unfiltered,
            a compressed index tries deeper re-scored shortlists at each number of lists (until the
            target, or a gain under 0.005), then more lists with shallower ones; the fastest setting
            that reaches the target is kept (else the most lists' shallowest best), last in the list."""
            tried: list[dict[str, float]] = []
            factors = REFINE_FACTORS if refine is not None and not filtered else (self.refine,)
            probes = [start] + [p for p in _PROBES if start < p < ivf.nlist] + [int(ivf.nlist)] * (start < ivf.nlist)
            for n, nprobe in enumerate(probes):
                self.filtered_nprobe, ivf.nprobe = (nprobe, ivf.nprobe) if filtered else (0, nprobe)
                last = -1.0
                for factor in factors:
                    self.refine = factor
                    began = time.perf_counter()
                    _, found = self.search(sample, 11, exact=refine, among=among)
                    elapsed = (time.perf_counter() - began) / len(sample)
                    recall = float(np.mean([len(t & top10(row, q)) / max(1, len(t))
                                            for q, (t, row) in enumerate(zip(truth_sets, found))]))
                    tried.append({"nprobe": nprobe, "recall_at_10": recall, "ms_per_query": 1000 * elapsed}
                                 | ({"refine": factor} if refine is not None else {}))
                    if recall >= target or recall < last + 0.005:
                        break
                    last = recall
                reached = [r for r in tried if r["recall_at_10"] >= target]
                if reached and (len(factors) == 1 or reached[0]["nprobe"] < nprobe
                                or factor == factors[0] or n + 1 == len(probes)):
                    break
                if reached:  # more lists with shallower shortlists next
                    factors = tuple(f for f in factors if f < factor)
            if refine is not None and not filtered:
                reached = [r for r in tried if r["recall_at_10"] >= target]
                kept = [r for r in tried if r["nprobe"] == tried[-1]["nprobe"]]
                best = min(reached, key=lambda r: r["ms_per_query"]) if reached else min(
                    (r for r in kept if r["recall_at_10"] >= max(k["recall_at_10"] for k in kept)),
                    key=lambda r: r["refine"])
                ivf.nprobe, self.refine = int(best["nprobe"]), int(best["refine"])
                tried = [r for r in tried if r is not best] + [best]
            return tried

        # Never fewer than the fixed default of before (queries are texts, not the library's images).
        self.tuning = sweep(min(int(ivf.nlist), max(16, int(ivf.nlist) // 64)), truth_sets, None, False)
        self.recall = self.tuning[-1]["recall_at_10"]
        self.target = target
        self.filtered_nprobe, self.filtered_recall, self.filtered_tuning = 0, None, []
        if count > EXACT_SUBSET_LIMIT:
            # A filter's top 10 lies in more lists. The hardest filter searched through the index keeps
            # just over EXACT_SUBSET_LIMIT ids: lists that serve such a random subset serve every filter.
            subset = source.ids[np.sort(rng.choice(count, EXACT_SUBSET_LIMIT + 1, replace=False))]
            sub_truth = _streamed_top(sample, [(subset, source.fetch(subset))], 11)
            sub_truth_sets = [top10(row, q) for q, row in enumerate(sub_truth)]
            self.filtered_tuning = sweep(int(ivf.nprobe), sub_truth_sets, subset, True)
            self.filtered_recall = self.filtered_tuning[-1]["recall_at_10"]

        def exact_query_ms() -> float:
            flat = faiss.IndexFlatIP(self.dim)
            for _, vectors in source.chunks():
                flat.add(np.ascontiguousarray(vectors, np.float32))
            return _single_query_ms(flat, self._timing_queries)

        return exact_query_ms

    def single_query_ms(self) -> float:
        """Median time of one query at the current setting, over queries of the last tuning."""
        return _single_query_ms(self.index, self._timing_queries)

    def set_probes(self, nprobe: int | None = None) -> None:
        """Lists scanned per query (the tuned number is kept in the index and in its file's header)."""
        if self.kind != "flat":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = nprobe or max(16, ivf.nlist // 64)

    @property
    def nprobe(self) -> int:
        return int(faiss.extract_index_ivf(self.index).nprobe) if self.kind != "flat" else 0

    def needs_rebuild(self) -> bool:
        """True when the collection outgrew its index kind or its training."""
        if self.kind == "flat":
            # Above the limit only when tuning found exact search as fast: asked again once it has doubled.
            return len(self) >= FLAT_LIMIT and len(self) >= RETRAIN_GROWTH * max(self.trained_on, FLAT_LIMIT / 2)
        return len(self) < FLAT_LIMIT // 2 or len(self) > RETRAIN_GROWTH * max(self.trained_on, 1)

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self._hidden) + len(self._added_ids)

    def _index_ids(self) -> npt.NDArray[np.int64]:
        """Every id in the FAISS index, in no particular order."""
        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)  # type: ignore[attr-defined]
        ivf = faiss.extract_index_ivf(self.index)
        lists: Any = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(n), size).copy()
                 for n in range(ivf.nlist) if (size := lists.list_size(n))]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every id in the index, in no particular order."""
        held = self._index_ids()
        if self._hidden:
            held = held[~np.isin(held, np.fromiter(self._hidden, np.int64, len(self._hidden)))]
        return np.concatenate([held, self._added_ids]) if len(self._added_ids) else held

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        if not len(ids):
            return
        if self.mapped and len(self._hidden) + len(self._added_ids) + len(ids) > OVERLAY_LIMIT:
            self._own()
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self.mapped:
            self._added_ids = np.concatenate([self._added_ids, np.asarray(ids, np.int64)])
            self._added = np.concatenate([self._added, vectors])
        else:
            self.index.add_with_ids(vectors, np.asarray(ids, np.int64))

    def remove(self, ids: list[int] | npt.NDArray[np.int64]) -> None:
        if not len(ids):
            return
        ids = np.asarray(ids, np.int64)
        if not self.mapped:
            self.index.remove_ids(ids)
            return
        kept = ~np.isin(self._added_ids, ids)
        self._added_ids, self._added = self._added_ids[kept], self._added[kept]
        if self._own_ids is None:
            self._own_ids = np.sort(self._index_ids())
        self._hidden.update(ids[np.isin(ids, self._own_ids)].tolist())
        if len(self._hidden) + len(self._added_ids) > OVERLAY_LIMIT:
            self._own()

    def replace(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        self.remove(ids)
        self.add(ids, vectors)

    def _own(self) -> None:
        """Copy a mapped index into memory, with the changes kept beside it applied to the copy: it
        changes in place from then on."""
        if not self.mapped:
            return
        nprobe = self.nprobe
        self.index = faiss.deserialize_index(faiss.serialize_index(self.index))
        self.mapped = False
        self.set_probes(nprobe or None)
        hidden, added_ids, added = np.fromiter(self._hidden, np.int64, len(self._hidden)), self._added_ids, self._added
        self._hidden, self._own_ids = set(), None
        self._added_ids, self._added = np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        self.remove(hidden)
        self.add(added_ids, added)

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        exact: Callable[[list[int]], npt.NDArray[np.float32]] | None = None,
        among: npt.NDArray[np.int64] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top ``k`` (cosine, id) per query, -1 ids padding rows with fewer hits.

        A compressed (``ivf-pq``) index only approximates scores: with ``exact``
        (ids -> their full vectors, from the database) it shortlists
        :attr:`refine` times ``k`` and re-scores them exactly.

        ``among`` restricts the search to those ids (a filter), before ranking: exact
        in a flat index; in an approximate one, exact over their full vectors from
        ``exact`` while they are at most :data:`EXACT_SUBSET_LIMIT`, else the index's
        own approximate search limited to them.
        """
        k = min(k, len(self), len(among) if among is not None else len(self))
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        queries = np.ascontiguousarray(queries, np.float32)
        if among is not None and self.kind != "flat" and exact is not None and len(among) <= EXACT_SUBSET_LIMIT:
            return _exact_top(queries, [np.asarray(among, np.int64)] * len(queries), exact, k)
        if self.kind != "ivf-pq" or exact is None:
            return self._search(queries, k, among)
        _, shortlist = self._search(queries, min(self.refine * k, len(self)), among)
        return _exact_top(queries, [ids[ids >= 0] for ids in shortlist], exact, k)

    def _search(self, queries: npt.NDArray[np.float32], k: int,
                among: npt.NDArray[np.int64] | None) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """FAISS's top ``k``, only ``among`` those ids if given, merged with the changes kept beside a
        mapped index."""
        params, selector = None, None  # type: ignore[var-annotated]
        hidden = np.fromiter(self._hidden, np.int64, len(self._hidden))
        # (the selectors and their arrays must outlive the search)
        if among is not None:
            # A bitmap over the ids: one bit test per vector scanned (a batch selector's hash lookups
            # made a filter of 300k of 1M ids slower than exact search).
            among = np.asarray(among, np.int64)
            allowed = np.setdiff1d(among, hidden) if len(hidden) else among
            bits = np.packbits(np.bincount(allowed, minlength=int(allowed.max(initial=0)) + 1) > 0, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        elif len(hidden):
            removed = faiss.IDSelectorBatch(len(hidden), faiss.swig_ptr(hidden))
            selector = faiss.IDSelectorNot(removed)  # type: ignore[assignment]
        if among is not None or len(hidden):
            # (faiss's stubs do not know these keyword arguments; its SWIG classes take them)
            # (a filter scans the lists tuned for filters; masking a few changed ids needs no more)
            nprobe = (self.filtered_nprobe or self.nprobe) if among is not None else self.nprobe
            params = (faiss.SearchParameters(sel=selector) if self.kind == "flat"  # type: ignore[call-arg]
                      else faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))  # type: ignore[call-arg]
        scores, found = self.index.search(queries, k, params=params)
        if not len(self._added_ids):
            return scores, found
        ids, added = self._added_ids, self._added
        if among is not None:
            wanted = np.isin(ids, among)
            ids, added = ids[wanted], added[wanted]
        scores = np.concatenate([np.where(found >= 0, scores, -np.inf), queries @ added.T], axis=1)
        found = np.concatenate([found, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, best, 1)
        return top.astype(np.float32), np.where(np.isfinite(top), np.take_along_axis(found, best, 1), -1)

    # -- persistence ----------------------------------------------------------------
    def save(self, path: Path, generation: int, model: str, library: str = "") -> None:
        """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``.
        The FAISS index comes first (so that it can be mapped), the header last."""
        self._own()  # (the changes kept beside a mapped index go into the file)
        header = json.dumps(
            {"version": _MAPPED_VERSION, "generation": generation, "model": model, "dim": self.dim,
             "count": len(self), "kind": self.kind, "trained_on": self.trained_on, "library": library,
             "nprobe": self.nprobe, "recall": self.recall, "target": self.target,
             "filtered_nprobe": self.filtered_nprobe, "filtered_recall": self.filtered_recall,
             "refine": self.refine}
        ).encode()
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(fh: BinaryIO) -> None:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
            fh.write(header + struct.pack("<I", len(header)) + _MAGIC)

        atomic_write(path, write, point="vectors", fsync=True)
        _fsync_dir(path.parent)

    @staticmethod
    def _parse(meta_bytes: bytes) -> IndexHeader | None:
        meta = json.loads(meta_bytes)
        if meta.get("version") not in (_VERSION, _MAPPED_VERSION):
            return None
        return IndexHeader(int(meta["generation"]), str(meta["model"]), int(meta["dim"]), int(meta["count"]),
                           str(meta.get("kind", "flat")), int(meta.get("trained_on", 0)),
                           str(meta.get("library", "")), int(meta.get("nprobe") or 0),
                           float(meta["recall"]) if meta.get("recall") is not None else None,
                           float(meta["target"]) if meta.get("target") is not None else None,
                           int(meta.get("filtered_nprobe") or 0),
                           float(meta["filtered_recall"]) if meta.get("filtered_recall") is not None else None,
                           int(meta.get("refine") or 0))

    @classmethod
    def _read_header(cls, fh: BinaryIO) -> tuple[IndexHeader | None, int]:
        """A vector file's header, and where its FAISS index begins (-1: at the start, to be mapped;
        files of version 1 have it after the header)."""
        start = fh.read(12)
        if len(start) == 12 and start[:8] == _MAGIC:  # version 1: the header first
            (length,) = struct.unpack("<I", start[8:12])
            return cls._parse(fh.read(length)), 12 + length
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size < 12:
            return None, 0
        fh.seek(size - 12)
        end = fh.read(12)
        if end[4:] != _MAGIC:
            return None, 0
        (length,) = struct.unpack("<I", end[:4])
        fh.seek(size - 12 - length)
        return cls._parse(fh.read(length)), -1

    @classmethod
    def read_header(cls, path: Path) -> IndexHeader | None:
        """Only the header of a vector file (what ``status`` needs), without reading the index."""
        try:
            with open(path, "rb") as fh:
                return cls._read_header(fh)[0]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
            return None

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, IndexHeader] | None:
        """The saved index (memory-mapped) and its header, or ``None`` if the file is missing or
        unreadable."""
        try:
            with open(path, "rb") as fh:
                header, offset = cls._read_header(fh)
                if header is None:
                    return None
                if offset >= 0:  # version 1: read into memory
                    fh.seek(offset)
                    index, mapped = faiss.deserialize_index(np.frombuffer(fh.read(), np.uint8)), False
                else:
                    # The open file itself, even if a writer has renamed a newer one over ``path`` since.
                    name = f"/proc/self/fd/{fh.fileno()}" if os.path.isdir("/proc/self/fd") else str(path)
                    index, mapped = faiss.read_index(name, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY), True
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error, RuntimeError):
            return None  # missing, damaged or foreign: rebuilt from the database
        if index.ntotal != header.count or index.d != header.dim:
            return None
        loaded = cls(header.dim, index, header.kind, header.trained_on, mapped=mapped)
        loaded.set_probes(header.nprobe or None)  # as tuned; FAISS keeps it too, older files had none
        loaded.recall, loaded.target = header.recall, header.target
        loaded.filtered_nprobe, loaded.filtered_recall = header.filtered_nprobe, header.filtered_recall
        loaded.refine = header.refine or REFINE_FACTOR
        return loaded, header


def _streamed_top(queries: npt.NDArray[np.float32],
                  chunks: Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]], k: int
                  ) -> npt.NDArray[np.int64]:
    """The ids of each query's exact top ``k`` by inner product, over vectors read a chunk at a time."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for ids, vectors in chunks:
        scores = queries @ np.ascontiguousarray(vectors, np.float32).T
        heap.add_result(scores, np.broadcast_to(np.asarray(ids, np.int64), scores.shape))
    heap.finalize()
    return np.asarray(heap.I, np.int64)


def _single_query_ms(index: faiss.Index, queries: npt.NDArray[np.float32]) -> float:
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None], 11)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def _exact_top(
    queries: npt.NDArray[np.float32],
    candidates: list[npt.NDArray[np.int64]],
    exact: Callable[[list[int]], npt.NDArray[np.float32]],
    k: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Top ``k`` of each query's candidate ids by their exact vectors, padded like FAISS."""
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_ids = np.full((len(queries), k), -1, np.int64)
    for row, (query, ids) in enumerate(zip(queries, candidates)):
        scores = exact([int(i) for i in ids]) @ query
        best = np.argsort(-scores, kind="stable")[:k]
        out_scores[row, : len(best)], out_ids[row, : len(best)] = scores[best], ids[best]
    return out_scores, out_ids


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
