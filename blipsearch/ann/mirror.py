"""The in-memory vector index of a library's database, kept in step with it.

The database is the source of truth; the FAISS index is derived from it: read
from the vector file when that file mirrors the database as it is now (same
database, model and generation), else rebuilt from the stored vectors and
saved. A long-lived reader (a server) then follows other processes' writes
without rebuilding: the rows whose vector a later transaction set carry that
transaction's generation, and the ids that came or went are the difference
between the index's ids and the database's.

One mirror may serve many threads: the index changes only under :attr:`lock`,
searches read it under the same lock, and unfiltered searches that arrive
together run as one batch of queries.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..store.database import Database, bytes_to_vectors
from ..system import Coalescer
from .index import RECALL_TARGET, IndexHeader, VectorIndex, VectorSource, is_tuned_size

# (model fingerprint, dimension, query (1, dim), how many)
_Search = tuple[str, int, npt.NDArray[np.float32], int]


class VectorMirror:
    def __init__(self, db: Database, path: Path, library_id: str) -> None:
        self.db = db
        self.path = path
        self.library_id = library_id  # which database the file mirrors: another one's file is never used
        self.lock = threading.RLock()
        self._index: VectorIndex | None = None
        self._fp: str | None = None  # the model whose vectors the index holds
        self.generation = -1  # the database generation the index mirrors; -1: not known to mirror any
        self._searches: Coalescer[_Search, dict[int, float]] = Coalescer(self.lock, self._search_together)

    def mirrors(self, header: IndexHeader, generation: int, fp: str | None) -> bool:
        """Whether a vector file holds this database's vectors of ``fp`` as of ``generation``."""
        return header.library == self.library_id and header.generation == generation and header.model == fp

    def loaded(self, fp: str) -> VectorIndex | None:
        """The index of ``fp``'s vectors if it is in memory (possibly behind the database)."""
        return self._index if self._fp == fp else None

    def get(self, fp: str) -> VectorIndex:
        """The index of ``fp``'s vectors, loaded (or rebuilt) on first use."""
        with self.lock:
            if self._index is None or self._fp != fp:
                return self._load(fp)
            return self._index

    def current(self, fp: str) -> VectorIndex:
        """The index, caught up with what other processes committed since it was loaded."""
        with self.lock:
            index = self.get(fp)
            generation = self.db.library().generation
            if generation == self.generation:
                return index
            if self.generation < 0:
                return self._load(fp)
            return self._catch_up(index, fp, generation)

    def _load(self, fp: str) -> VectorIndex:
        """From the vector file when it mirrors the database now, or an earlier state of it (then
        caught up in memory from the rows written since, the file left as the index run that owns it
        wrote it), else rebuilt from the database (and saved)."""
        generation = self.db.library().generation
        loaded = VectorIndex.load(self.path)
        if loaded is not None:
            index, header = loaded
            usable = (header.library == self.library_id and header.model == fp and header.generation <= generation
                      and not index.needs_rebuild() and self._tuned_as_asked(header))
            if usable:
                self._set(index, fp, header.generation)
                if header.generation == generation:
                    return index
                return self._catch_up(index, fp, generation)  # (rebuilt if it then needs to be)
        return self.rebuild(fp)

    def target(self) -> float:
        """The recall@10 the library asks of an approximate index."""
        return self.db.library().recall_target or RECALL_TARGET

    def _tuned_as_asked(self, header: IndexHeader) -> bool:
        """False when the file was tuned (or would be now) to another recall target than the library's."""
        if not is_tuned_size(header.count):
            return True  # exact search, no tuning
        # Files from before targets were recorded were tuned to the default when they have a recall.
        tuned_to = header.target if header.target is not None else (RECALL_TARGET if header.recall else None)
        return tuned_to is not None and abs(tuned_to - self.target()) < 1e-9

    def _set(self, index: VectorIndex, fp: str | None, generation: int) -> None:
        # The index and the generation it mirrors change together.
        with self.lock:
            self._index, self._fp, self.generation = index, fp, generation

    def rebuild(self, fp: str | None = None) -> VectorIndex:
        """Rebuild the index (and its file) from the vectors stored in the database, read a chunk at a
        time (see :meth:`VectorIndex.build_from`)."""
        record = self.db.library()
        fp = fp or record.model_fingerprint
        dim = record.dim or 256
        # Read the generation before the vectors: the file may then be labelled
        # older than its content (rebuilt again later), never newer.
        generation = record.generation
        source = VectorSource(
            self.db.vector_ids(fp) if fp else np.zeros(0, np.int64),
            lambda: ((ids, bytes_to_vectors(blobs, dim)) for ids, blobs in self.db.iter_vectors(fp)) if fp else (),
            lambda ids: self.db.vectors_by_ids(ids.tolist(), fp or "", dim))
        index = VectorIndex.build_from(dim, source, target=record.recall_target or RECALL_TARGET)
        self._set(index, fp, generation)
        self.save(index, fp or "")
        return index

    def save(self, index: VectorIndex, fp: str) -> None:
        try:
            index.save(self.path, self.generation, fp, self.library_id)
        except OSError:
            pass  # A read-only library still searches; the file is rebuilt in memory next time.

    def _catch_up(self, index: VectorIndex, fp: str, generation: int) -> VectorIndex:
        """Apply the database's changes since the synced generation: vectors set since then (by
        their rows' generation), rows gone, rows the index lacks."""
        changed, blobs = self.db.vectors_since(fp, self.generation)
        present = self.db.vector_ids(fp)
        held = index.ids()
        index.remove(np.setdiff1d(held, present, assume_unique=True))
        index.replace(changed, bytes_to_vectors(blobs, index.dim))
        lacking = np.setdiff1d(present, np.union1d(held, changed), assume_unique=True)
        if len(lacking):
            index.add(lacking, self.db.vectors_by_ids(lacking.tolist(), fp, index.dim))
        if index.needs_rebuild():
            return self.rebuild(fp)
        self.generation = generation
        return index

    def on_commit(self, generation: int) -> None:
        """An index run in this process committed ``generation`` and applied it to the index."""
        # Another process wrote in between: the in-memory index may miss its changes.
        self.generation = generation if generation == self.generation + 1 else -1

    # -- searching ----------------------------------------------------------------------------
    def search(self, fp: str, dim: int, query: npt.NDArray[np.float32], width: int,
               among: npt.NDArray[np.int64] | None = None) -> dict[int, float]:
        """{id: cosine} of the ``width`` vectors of ``fp`` nearest to ``query`` (only ``among``
        those ids, if given), best first, from the index caught up with the database."""
        if among is None:
            return self._searches((fp, dim, query, width))
        with self.lock:
            scores, ids = self.current(fp).search(query, width, exact=self._exact(fp, dim), among=among)
        return {int(i): float(s) for s, i in zip(scores[0], ids[0]) if i >= 0}

    def _search_together(self, requests: list[_Search]) -> list[dict[int, float]]:
        """Several threads' unfiltered searches as one (a batch of queries costs far less than each
        alone: 16 queries over 100k vectors take 103 ms together, 283 ms one by one)."""
        results: list[dict[int, float]] = [{} for _ in requests]
        groups: dict[tuple[str, int], list[int]] = {}
        for n, (fp, dim, _, _) in enumerate(requests):
            groups.setdefault((fp, dim), []).append(n)
        for (fp, dim), members in groups.items():
            queries = np.concatenate([requests[n][2] for n in members])
            scores, ids = self.current(fp).search(queries, max(requests[n][3] for n in members),
                                                  exact=self._exact(fp, dim))
            for row, n in enumerate(members):
                width = requests[n][3]
                results[n] = {int(i): float(s) for s, i in zip(scores[row][:width], ids[row][:width]) if i >= 0}
        return results

    def _exact(self, fp: str, dim: int):  # type: ignore[no-untyped-def]
        """Full vectors by id from the database, to re-score a compressed index's shortlist."""
        return lambda ids: self.db.vectors_by_ids(ids, fp, dim)
