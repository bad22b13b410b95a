"""Text to image and image to image: an ITC shortlist from the vector index (fused with the full
text when hybrid), the best reranked with ITM; match sets (every photo ITM matches); composite
queries; near-duplicates."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputPathError, SettingsError
from ..filters import NO_FILTERS, Filters
from ..options import DEFAULT_RERANK_DEPTH
from ..rerank.itm import Reranked, rerank
from ..results import Hit, ImageQuery, MatchSet
from ..similarity import (
    MULTI_FACTOR,
    MULTI_SHARE,
    MULTI_SHORTLIST,
    pooled_one,
    text_image_scores,
)
from ..store.database import bytes_to_vectors
from ..store.fulltext import TextIndex, reciprocal_rank_fusion
from .duplicates import DEFAULT_THRESHOLD, DuplicateGroup, group_copies
from .images import indexed_id, query_image
from .query import Term

if TYPE_CHECKING:
    from ..models.base import RetrievalModel
    from ..models.loading import ModelIdentity
    from ..workspace import Workspace


# Match sets: the ITC ranking is scored by ITM in batches of FIRST_BATCH, doubling up to MAX_BATCH.
# The search stops after a batch with no match whose best cosine lies more than STOP_MARGIN below
# the lowest cosine of any match so far (with no match yet: after MIN_CHECK photos). The numbers
# are measured on the shapes world by benchmarks/match_sets.py (BENCHMARKS.md, "Match sets").
FIRST_BATCH = 16
MAX_BATCH = 256
MIN_CHECK = 32
STOP_MARGIN = 0.02
SORTS = ("score", "date", "-date")
OTHERS = 24  # photos checked that did not match, kept to show as "more that might match"


class Searcher:
    """Searches the library of ``ws``."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def _composite(self, model: RetrievalModel | ModelIdentity, first: np.ndarray,
                   terms: Sequence[Term]) -> np.ndarray:
        """The normalized weighted sum of the search text's vector (weight 1) and the terms'."""
        total = first[0].astype(np.float64)
        for term in terms:
            if term.text is not None:
                vector = self.ws.embed_query(model, term.text)[0]
            else:
                assert term.image is not None
                vector, _ = query_image(self.ws, model, term.image, need_tokens=False)
                vector = pooled_one(vector, model.dim)
            total = total + term.weight * vector.astype(np.float64)
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise InputPathError("The query's terms cancel each other out: nothing is left to search for.")
        return (total / norm).astype(np.float32)[None, :]

    def _nearest(self, model: RetrievalModel | ModelIdentity, query: np.ndarray, width: int,
                 among: np.ndarray | None, max_sim: bool = True) -> dict[int, float]:
        """{id: ITC score} of the ``width`` best images for the query vector (only ``among`` those ids,
        if given), best first. For a model with several vectors per image the score is their best
        cosine (``max_sim``): the vector index shortlists by pooled vectors, at least
        :data:`MULTI_SHORTLIST` images, ``MULTI_FACTOR`` times ``width`` and ``MULTI_SHARE`` of the
        images searched, and those are scored
        exactly from every stored vector (benchmarks/multivector.py measures the recall). Without
        ``max_sim``, pooled vectors' cosines (image to image)."""
        vectors = self.ws.vectors
        if model.queries == 1 or not max_sim:
            return vectors.search(model.fingerprint, model.dim, query, width, among)
        count = len(among) if among is not None else len(vectors.get(model.fingerprint))
        depth = max(MULTI_SHORTLIST, MULTI_FACTOR * width, math.ceil(MULTI_SHARE * count))
        shortlist = vectors.search(model.fingerprint, model.dim, query, depth, among)
        return dict(sorted(self._itc(model, list(shortlist), query[0]).items(), key=lambda kv: -kv[1])[:width])

    def _itc(self, model: RetrievalModel | ModelIdentity, ids: list[int], query: np.ndarray) -> dict[int, float]:
        """{id: ITC score} of these images for a query vector, from every stored vector of theirs."""
        if not ids:
            return {}
        db = self.ws.db
        if model.queries == 1:
            scores = db.vectors_by_ids(ids, model.fingerprint, model.dim) @ query
        else:
            scores = text_image_scores(query[None], db.vectors_by_ids(ids, model.fingerprint, model.dim,
                                                                      queries=True))[0]
        return dict(zip(ids, scores.tolist()))

    def _allowed(self, model: RetrievalModel | ModelIdentity, filters: Filters) -> np.ndarray | None:
        return self.ws.db.filtered_ids(model.fingerprint, filters) if filters else None

    def search(self, text: str, k: int = 10, *, rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank_hits: bool = True,
               hybrid: bool = False, tag: str | None = None, filters: Filters = NO_FILTERS,
               offset: int = 0, terms: Sequence[Term] = ()) -> list[Hit]:
        """Text to image (see :meth:`blipsearch.library.Library.search`)."""
        if not text.strip():
            raise InputPathError("The search text is empty.")
        if tag is not None:
            filters = replace(filters, tag=Filters.make(tag=tag).tag)
        ws = self.ws
        depth = rerank_depth if rerank_hits else 0
        model = ws.searchable(load=depth > 0)
        query = ws.embed_query(model, text)
        if terms:
            query = self._composite(model, query, terms)
        wanted = offset + k
        width = max(wanted, depth) if not hybrid else max(4 * wanted, depth, 50)
        among = self._allowed(model, filters)
        itc = self._nearest(model, query, width, among)
        keyword: dict[int, float] = {}
        if hybrid:
            allowed = None if among is None else set(among.tolist())
            found = TextIndex(ws.db).search(text, width if allowed is None else 10 * width)
            keyword = {i: r for i, r in found if allowed is None or i in allowed}
            fused = reciprocal_rank_fusion([list(itc), list(keyword)])
            extra = [i for i in keyword if i not in itc]
            itc.update(self._itc(model, extra, query[0]))
            base = fused
        else:
            base = itc
        order = sorted(base, key=lambda i: -base[i])
        rows = ws.db.refs_by_id(order)
        order = [i for i in order if i in rows]
        more = [(t.text, t.weight) for t in terms if t.text is not None]
        ranked = (rerank(ws.model, text, [(i, itc[i]) for i in order[:depth]], rows, cache=ws.token_cache,
                         more=more) if depth else [])
        reranked = {r.id: r for r in ranked if r.itm is not None}
        results = [(r.id, r.score, r.itm) for r in ranked if r.itm is not None]
        if hybrid and results:
            final = reciprocal_rank_fusion([[i for i, _, _ in results], list(keyword)])
            results = sorted(((i, final[i], itm) for i, _, itm in results), key=lambda r: -r[1])
        results += [(i, base[i], None) for i in order if i not in reranked]
        return [
            Hit(rank=offset + n + 1, id=i, path=os.fsdecode(rows[i].path), score=score, itc=itc[i], itm=itm,
                keyword=keyword.get(i))
            for n, (i, score, itm) in enumerate(results[offset:wanted])
        ]

    def matches(self, text: str, *, min_match: float = 0.5, sort: str = "score", max_check: int | None = None,
                tag: str | None = None, filters: Filters = NO_FILTERS, terms: Sequence[Term] = ()) -> MatchSet:
        """Every photo whose ITM match probability for ``text`` is at least ``min_match`` (see
        :class:`~blipsearch.results.MatchSet`), best first or by capture time (``sort="date"``,
        ``"-date"`` newest first). ``terms`` change the ITC ranking the photos are checked in; a
        negative text's match of at least ``min_match`` keeps a photo out. At most ``max_check``
        photos are scored."""
        if not text.strip():
            raise InputPathError("The search text is empty.")
        if not 0.0 <= min_match <= 1.0:
            raise SettingsError(f"The least match probability must lie in 0..1, not {min_match}.")
        if sort not in SORTS:
            raise SettingsError(f"A match set is sorted by {', '.join(SORTS)}, not {sort!r}.")
        if max_check is not None and max_check < 1:
            raise SettingsError(f"The most photos to check must be at least 1, not {max_check}.")
        if tag is not None:
            filters = replace(filters, tag=Filters.make(tag=tag).tag)
        ws = self.ws
        model = ws.searchable(load=True)
        query = ws.embed_query(model, text)
        if terms:
            query = self._composite(model, query, terms)
        among = self._allowed(model, filters)
        searched = len(among) if among is not None else len(ws.vectors.get(model.fingerprint))
        limit = min(searched, max_check or searched)
        more = [(t.text, t.weight) for t in terms if t.text is not None]
        negatives = [n for n, (_, weight) in enumerate(more) if weight < 0]
        matched: list[Reranked] = []
        missed: list[Reranked] = []
        seen: set[int] = set()
        paths: dict[int, str] = {}
        batch, lowest, last_rate = FIRST_BATCH, float("inf"), 0.0
        stopped = "all"
        while len(seen) < limit:
            width = min(limit, len(seen) + batch)
            new = [(i, s) for i, s in self._nearest(model, query, width, among).items() if i not in seen]
            new = new[: width - len(seen)]
            if not new:
                break
            seen.update(i for i, _ in new)
            rows = ws.db.refs_by_id([i for i, _ in new])
            paths.update((i, os.fsdecode(row.path)) for i, row in rows.items())
            found = 0
            for r in rerank(ws.model, text, [(i, s) for i, s in new if i in rows], rows, cache=ws.token_cache,
                            more=more):
                if r.itm is not None and r.itm >= min_match and not any(r.more_matches[n] >= min_match
                                                                         for n in negatives):
                    matched.append(r)
                    lowest = min(lowest, r.itc)
                    found += 1
                else:
                    missed.append(r)
            last_rate = (found + 1) / (len(new) + 2)  # Laplace: a batch of no match still allows one
            if found == 0 and len(seen) >= MIN_CHECK and new[0][1] < lowest - STOP_MARGIN:
                stopped = "rule"
                break
            batch = min(2 * batch, MAX_BATCH)
        if stopped == "all" and len(seen) < searched:
            stopped = "max-check"
        return MatchSet(self._match_hits(matched, paths, sort, True),
                        self._match_hits(missed, paths, "score", False)[:OTHERS],
                        min_match, sort, len(seen), searched, stopped,
                        0.0 if len(seen) >= searched else last_rate * (searched - len(seen)))

    def _match_hits(self, scored: list[Reranked], paths: dict[int, str], sort: str, with_dates: bool) -> list[Hit]:
        dates = self.ws.db.capture_times([r.id for r in scored]) if with_dates else {}
        if sort == "score":
            ordered = sorted(scored, key=lambda r: -r.score)
        else:
            sign = -1 if sort == "-date" else 1
            ordered = sorted(scored, key=lambda r: (sign * dates[r.id].timestamp(), -r.score))
        return [
            Hit(rank=n + 1, id=r.id, path=paths[r.id], score=r.score, itc=r.itc, itm=r.itm,
                match=r.itm, date=dates[r.id].isoformat() if r.id in dates else None)
            for n, r in enumerate(ordered)
        ]

    def similar(self, image: ImageQuery, k: int = 10, *, filters: Filters = NO_FILTERS,
                offset: int = 0) -> list[Hit]:
        """Image to image by ITC cosine; the query itself, when indexed, is left out."""
        model = self.ws.searchable(load=False)
        vector, _ = query_image(self.ws, model, image, need_tokens=False)
        itself = indexed_id(self.ws, image)
        found = self._nearest(model, pooled_one(vector, model.dim)[None, :], offset + k + 1,
                              self._allowed(model, filters), max_sim=False)
        rows = self.ws.db.refs_by_id(list(found))
        hits = [(i, s) for i, s in found.items() if i in rows and i != itself]
        return [
            Hit(rank=offset + n + 1, id=i, path=os.fsdecode(rows[i].path), score=s, itc=s)
            for n, (i, s) in enumerate(hits[offset : offset + k])
        ]

    def duplicates(self, threshold: float = DEFAULT_THRESHOLD, *,
                   filters: Filters = NO_FILTERS) -> list[DuplicateGroup]:
        """Groups of near-duplicate photos (see :mod:`blipsearch.search.duplicates`). Loads no model."""
        if not 0.0 < threshold <= 1.0:
            raise InputPathError(f"The similarity threshold must lie in (0, 1], not {threshold}.")
        model = self.ws.searchable(load=False)
        allowed = set(self._allowed(model, filters).tolist()) if filters else None
        ids, blobs = [], []
        for chunk_ids, chunk_blobs in self.ws.db.iter_vectors(model.fingerprint):
            for i, blob in zip(chunk_ids.tolist(), chunk_blobs):
                if allowed is None or i in allowed:
                    ids.append(i)
                    blobs.append(blob)
        vectors = bytes_to_vectors(blobs, model.dim) if blobs else np.zeros((0, model.dim), np.float32)
        return group_copies(np.asarray(ids, np.int64), vectors, self.ws.db.images_by_id, threshold)
