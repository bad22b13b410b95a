"""The FAISS vector index: derived from the database, saved atomically, rebuilt when stale.

The file holds a small JSON header (generation, model fingerprint, dimension,
count) followed by the serialized FAISS index. The header's generation is
compared with the database's: any difference means the file is stale (an
interrupted or concurrent run) and it is rebuilt from the stored vectors.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np
import numpy.typing as npt

from ..system import atomic_write

_MAGIC = b"BLIPSVEC"
_VERSION = 1


# Below this many vectors search is exact (brute-force inner product: ~10 ms
# per query at 200k on two cores); above it, an inverted-file index.
FLAT_LIMIT = 200_000
# Memory the vectors may take in an approximate index before they are
# compressed (product quantization, PQ_BYTES per vector instead of 1 KB).
DEFAULT_MEMORY_BUDGET = 4 << 30
# Bytes per vector under product quantization.
PQ_BYTES = 64
# A compressed index shortlists this many times k, re-scored exactly.
REFINE_FACTOR = 8
# An approximate index is retrained when the collection has doubled since.
RETRAIN_GROWTH = 2.0
# A filter selecting at most this many images of an approximate index is searched exactly,
# over their full vectors from the database.
EXACT_SUBSET_LIMIT = 50_000
# An approximate index must find at least this share of the exact top 10 (measured when it is built,
# on the library's own vectors); the fewest lists scanned that reach it are kept.
RECALL_TARGET = 0.95
TUNING_QUERIES = 300
SINGLE_QUERIES = 50  # timed one at a time for the choice between exact search and the tuned index
# An approximate index no faster than exact search at its tuned setting is replaced by exact search:
# one query at the tuned setting must take under APPROXIMATE_GAIN of an exact query's time.
PREFER_EXACT = True
APPROXIMATE_GAIN = 0.8
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


def is_tuned_size(count: int) -> bool:
    """Whether an index of ``count`` vectors is built approximate, and so tuned to a recall target."""
    return count >= FLAT_LIMIT


def choose_kind(count: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> str:
    """``flat`` (exact) for small collections; ``ivf-flat`` or, past the memory budget, ``ivf-pq``."""
    if not is_tuned_size(count):
        return "flat"
    return "ivf-flat" if count * dim * 4 <= memory_budget else "ivf-pq"


class VectorIndex:
    """Inner-product search over L2-normalized vectors, keyed by database ids.

    Exact below :data:`FLAT_LIMIT` vectors; an IVF index above it (see
    :meth:`build`). Both support adding and removing ids in place.
    """

    def __init__(self, dim: int, index: faiss.Index | None = None, kind: str = "flat", trained_on: int = 0) -> None:
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
        self._timing_queries = np.zeros((0, dim), np.float32)
        self.tuning: list[dict[str, float]] = []  # every setting tried: nprobe, recall, p50 ms
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def build(
        cls,
        dim: int,
        ids: npt.NDArray[np.int64],
        vectors: npt.NDArray[np.float32],
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
        prefer_exact: bool | None = None,
        target: float = RECALL_TARGET,
    ) -> VectorIndex:
        """The right index for ``len(ids)`` vectors, filled with them. An approximate one is tuned to
        ``target`` (see :meth:`tune`); with ``prefer_exact``, exact search replaces it when one query
        at the tuned setting is no faster than one exact query (default :data:`PREFER_EXACT`)."""
        kind = choose_kind(len(ids), dim, memory_budget)
        if kind == "flat":
            index = cls(dim)
            index.add(ids, vectors)
            return index
        # About 4 sqrt(n) lists, each scanned list holding ~n / nlist vectors.
        nlist = int(2 ** round(np.log2(4 * np.sqrt(len(ids)))))
        nlist = max(1, min(nlist, len(ids) // 39))  # k-means wants ~39+ points per list
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf-flat":
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, PQ_BYTES, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = True
        quantizer.this.disown()
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * nlist), replace=False)]
        ivf.train(np.ascontiguousarray(sample, np.float32))
        index = cls(dim, ivf, kind, trained_on=len(ids))
        index.add(ids, vectors)
        exact = index.tune(ids, vectors, target=target, seed=seed)
        if kind == "ivf-flat" and (PREFER_EXACT if prefer_exact is None else prefer_exact):
            index.single_ms = {"tuned": index.single_query_ms(), "exact": exact()}
        if index.single_ms and index.single_ms["tuned"] >= APPROXIMATE_GAIN * index.single_ms["exact"]:
            # The lists it must scan to be right make it no faster than exact search: search exactly.
            flat = cls(dim, trained_on=len(ids))
            flat.add(ids, vectors)
            flat.tuning, flat.target, flat.single_ms = index.tuning, target, index.single_ms
            return flat
        return index

    def tune(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32], target: float = RECALL_TARGET,
             seed: int = 0) -> Callable[[], float]:
        """Scan the fewest lists per query (at least ``max(16, nlist / 64)``) that find ``target`` of
        the exact top 10, measured with a sample of the indexed ``vectors`` as queries (each one's own
        hit left out) against exact inner-product search over all of them. Clustered synthetic
        vectors need 8 lists; vectors as spread as real embeddings need hundreds
        (benchmarks/vector_index.py). When none reaches it, every list is scanned (the exact answer,
        slowly). Filtered searches through the index get their own number of lists, tuned the same
        way (:attr:`filtered_nprobe`). Returns what times one exact query (ms, median), for
        comparison with :meth:`single_query_ms`."""
        if self.kind == "flat":
            return lambda: 0.0
        ivf = faiss.extract_index_ivf(self.index)
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(vectors), min(TUNING_QUERIES, len(vectors)), replace=False)
        sample = np.ascontiguousarray(vectors[rows], np.float32)
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(np.ascontiguousarray(vectors, np.float32))
        _, truth = exact.search(sample, 11)
        self._timing_queries = sample[:SINGLE_QUERIES]
        ids = np.asarray(ids, np.int64)
        own = ids[rows]

        def top10(found: npt.NDArray[np.int64], query: int) -> set[int]:
            return set([i for i in found.tolist() if i >= 0 and i != own[query]][:10])  # its own hit left out

        truth_sets = [top10(ids[row], q) for q, row in enumerate(truth)]
        refine = None
        if self.kind == "ivf-pq":  # searched with exact re-scoring, as Library.search does
            row_of = {int(i): n for n, i in enumerate(ids.tolist())}
            refine = lambda wanted: vectors[[row_of[i] for i in wanted]]

        def sweep(start: int, truth_sets: list[set[int]], among: npt.NDArray[np.int64] | None,
                  filtered: bool) -> list[dict[str, float]]:
            """Recall and time per query from ``start`` lists up, until ``target`` is reached."""
            tried = []
            for nprobe in [start] + [p for p in _PROBES if start < p < ivf.nlist] + [int(ivf.nlist)] * (start < ivf.nlist):
                if filtered:
                    self.filtered_nprobe = nprobe
                else:
                    ivf.nprobe = nprobe
                began = time.perf_counter()
                _, found = self.search(sample, 11, exact=refine, among=among)
                elapsed = (time.perf_counter() - began) / len(sample)
                recall = float(np.mean([len(t & top10(row, q)) / max(1, len(t))
                                        for q, (t, row) in enumerate(zip(truth_sets, found))]))
                tried.append({"nprobe": nprobe, "recall_at_10": recall, "ms_per_query": 1000 * elapsed})
                if recall >= target:
                    break
            return tried

        # Never fewer than the fixed default of before (queries are texts, not the library's images:
        # the sample can only show that more lists are needed).
        self.tuning = sweep(min(int(ivf.nlist), max(16, int(ivf.nlist) // 64)), truth_sets, None, False)
        self.recall = self.tuning[-1]["recall_at_10"]
        self.target = target
        self.filtered_nprobe, self.filtered_recall, self.filtered_tuning = 0, None, []
        if len(ids) > EXACT_SUBSET_LIMIT:
            # A filter keeps fewer candidates per list, so its top 10 lies in more lists. The hardest
            # filter searched through the index keeps just over EXACT_SUBSET_LIMIT ids (fewer are
            # searched exactly): the lists that reach the target for such a random subset serve
            # every filter, larger ones being easier.
            subset = np.sort(rng.choice(len(ids), EXACT_SUBSET_LIMIT + 1, replace=False))
            inner = faiss.IndexFlatIP(self.dim)
            inner.add(np.ascontiguousarray(vectors[subset], np.float32))
            _, sub_truth = inner.search(sample, 11)
            sub_truth_sets = [top10(ids[subset][row], q) for q, row in enumerate(sub_truth)]
            self.filtered_tuning = sweep(int(ivf.nprobe), sub_truth_sets, ids[subset], True)
            self.filtered_recall = self.filtered_tuning[-1]["recall_at_10"]
        return lambda: _single_query_ms(exact, self._timing_queries)

    def single_query_ms(self) -> float:
        """Median time of one query at the current setting, over queries of the last tuning (a search
        serves one query at a time: batched timings favour exact search's matrix products)."""
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
        return int(self.index.ntotal)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every id in the index, in no particular order."""
        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)  # type: ignore[attr-defined]
        ivf = faiss.extract_index_ivf(self.index)
        lists: Any = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(n), size).copy()
                 for n in range(ivf.nlist) if (size := lists.list_size(n))]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))

    def remove(self, ids: list[int] | npt.NDArray[np.int64]) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, np.int64))

    def replace(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        self.remove(ids)
        self.add(ids, vectors)

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
        ``REFINE_FACTOR * k`` and re-scores them exactly.

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
        params = None
        if among is not None:
            # A bitmap over the ids: one bit test per vector scanned (a batch selector's hash lookups
            # made a filter of 300k of 1M ids slower than exact search). ``bits`` outlives the search.
            among = np.asarray(among, np.int64)
            bits = np.packbits(np.bincount(among, minlength=int(among.max()) + 1) > 0, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            # (faiss's stubs do not know these keyword arguments; its SWIG classes take them)
            params = (faiss.SearchParameters(sel=selector) if self.kind == "flat"  # type: ignore[call-arg]
                      else faiss.SearchParametersIVF(sel=selector,  # type: ignore[call-arg]
                                                     nprobe=self.filtered_nprobe or self.nprobe))
        if self.kind != "ivf-pq" or exact is None:
            return self.index.search(queries, k, params=params)
        _, shortlist = self.index.search(queries, min(REFINE_FACTOR * k, len(self)), params=params)
        return _exact_top(queries, [ids[ids >= 0] for ids in shortlist], exact, k)

    # -- persistence ----------------------------------------------------------------
    def save(self, path: Path, generation: int, model: str, library: str = "") -> None:
        """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``."""
        header = json.dumps(
            {"version": _VERSION, "generation": generation, "model": model, "dim": self.dim, "count": len(self),
             "kind": self.kind, "trained_on": self.trained_on, "library": library, "nprobe": self.nprobe,
             "recall": self.recall, "target": self.target, "filtered_nprobe": self.filtered_nprobe,
             "filtered_recall": self.filtered_recall}
        ).encode()
        payload = faiss.serialize_index(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(fh: BinaryIO) -> None:
            fh.write(_MAGIC + struct.pack("<I", len(header)) + header)
            fh.write(payload.tobytes())

        atomic_write(path, write, point="vectors", fsync=True)
        _fsync_dir(path.parent)

    @staticmethod
    def _header(data: bytes) -> tuple[IndexHeader, int] | None:
        """The header at the start of a vector file, and where the FAISS index begins."""
        if data[:8] != _MAGIC:
            return None
        (length,) = struct.unpack("<I", data[8:12])
        meta = json.loads(data[12 : 12 + length])
        if meta.get("version") != _VERSION:
            return None
        header = IndexHeader(int(meta["generation"]), str(meta["model"]), int(meta["dim"]), int(meta["count"]),
                             str(meta.get("kind", "flat")), int(meta.get("trained_on", 0)),
                             str(meta.get("library", "")), int(meta.get("nprobe") or 0),
                             float(meta["recall"]) if meta.get("recall") is not None else None,
                             float(meta["target"]) if meta.get("target") is not None else None,
                             int(meta.get("filtered_nprobe") or 0),
                             float(meta["filtered_recall"]) if meta.get("filtered_recall") is not None else None)
        return header, 12 + length

    @classmethod
    def read_header(cls, path: Path) -> IndexHeader | None:
        """Only the header of a vector file (what ``status`` needs), without reading the index."""
        try:
            with open(path, "rb") as fh:
                start = fh.read(12)
                if len(start) < 12 or start[:8] != _MAGIC:
                    return None
                found = cls._header(start + fh.read(struct.unpack("<I", start[8:12])[0]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
            return None
        return found[0] if found else None

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, IndexHeader] | None:
        """The saved index and its header, or ``None`` if the file is missing or unreadable."""
        try:
            data = path.read_bytes()
            found = cls._header(data)
            if found is None:
                return None
            header, offset = found
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8, offset=offset))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error, RuntimeError):
            return None  # missing, damaged or foreign: rebuilt from the database
        if index.ntotal != header.count or index.d != header.dim:
            return None
        loaded = cls(header.dim, index, header.kind, header.trained_on)
        loaded.set_probes(header.nprobe or None)  # as tuned; FAISS keeps it too, older files had none
        loaded.recall, loaded.target = header.recall, header.target
        loaded.filtered_nprobe, loaded.filtered_recall = header.filtered_nprobe, header.filtered_recall
        return loaded, header


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
