"""The Python API: a library of indexed photos, searchable by text and by image.

>>> lib = Library("~/photos-index", model="Salesforce/blip-itm-base-coco")   # doctest: +SKIP
>>> lib.index(["~/Pictures"])                                                 # doctest: +SKIP
>>> for hit in lib.search("a dog running on the beach", k=5):                 # doctest: +SKIP
...     print(hit.rank, round(hit.score, 3), hit.path)

A library is a folder holding the SQLite database (or pointing at any
SQLAlchemy URL) and the FAISS file derived from it.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout
from sqlalchemy import URL

from .describe import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_VQA_MODEL,
    Answerer,
    AnswerSettings,
    Captioner,
    CaptionSettings,
    load_answerer,
    load_captioner,
    same_answer,
)
from .describe.batch import Described, answer_paths, caption_paths
from .errors import (
    ImageChangedError,
    ImageError,
    InputPathError,
    LibraryError,
    ModelLoadError,
    ModelMismatchError,
    SettingsError,
    UnknownImageError,
)
from .filters import DEFAULT_MIN_PROBABILITY, NO_FILTERS, Filters
from .images.decode import load_pixels, open_image, pixels_from_bytes, read_file
from .index.distributed import RayIndexer, RaySettings
from .index.indexer import Indexer, IndexReport, ProgressFactory, no_progress
from .index.mirror import VectorMirror
from .index.vectors import RECALL_TARGET, VectorIndex, is_tuned_size
from .index.watch import DEFAULT_SETTLE_S, watch
from .models.hub import BUILTIN_PREFIX
from .models.loading import ModelIdentity
from .options import DEFAULT_MODEL, DEFAULT_RERANK_DEPTH, open_settings
from .rerank.cache import TokenCache
from .rerank.itm import match_scores, rerank
from .results import Explanation, Failure, Hit, ImageData, ImageInfo, ImageQuery
from .search.duplicates import DEFAULT_THRESHOLD, DuplicateGroup, group_copies
from .search.query import Term
from .similarity import (
    MULTI_FACTOR,
    MULTI_SHARE,
    MULTI_SHORTLIST,
    pooled_one,
    text_image_scores,
)
from .store.database import Database, ImageRef, bytes_to_vectors
from .store.fulltext import TextIndex, reciprocal_rank_fusion
from .store.location import DB_FILE, default_location, library_location
from .store.schema import ImageRow, TextRow
from .store.thumbnails import SIZES, ThumbnailStore
from .system import is_leftover
from .text import checked
from .texts import CAPTIONS, USER, TextEntry, TextHit, TextStore, rank_texts
from .texts.tags import DEFAULT_TEMPLATE, TagResult, Vocabulary

# torch and transformers are imported when a model is first needed, so that
# commands that need none (status, a re-index of unchanged folders) start fast.
if TYPE_CHECKING:
    import torch

    from .models.base import RetrievalModel
    from .models.checkpoint import ItmToken

VECTORS_FILE = "vectors.faiss"
THUMBNAILS_DIR = "thumbnails"
# The photo an explanation is drawn over is decoded to at least this size (JPEG drafts).
EXPLAIN_SIZE = 1024
MAX_TOKEN_CACHE_GB = 10**9


def _normalize_spec(spec: str) -> str:
    """Local model folders are recorded by absolute path; hub ids and built-ins as given."""
    if spec.startswith(BUILTIN_PREFIX):
        return spec
    local = Path(spec).expanduser()
    return str(local.resolve()) if local.is_dir() else spec


class Library:
    """Open the library at ``location``, creating it if needed (with ``create=False``, a
    library that does not exist yet is an error: a mistyped path makes no new one).

    ``model`` is a hub id, a local checkpoint folder or ``builtin:NAME``; left
    out, the model the library was indexed with is used (the default model for
    a new library). Models load lazily, on first use.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | None = None,
        *,
        db_url: str | None = None,
        model: str | None = None,
        device: str = "auto",
        itm_token: ItmToken = "enc",
        caption_model: str | None = None,
        vqa_model: str | None = None,
        quantize: str | None = None,
        token_cache_gb: float = 0.0,
        create: bool = True,
    ) -> None:
        if not 0 <= token_cache_gb <= MAX_TOKEN_CACHE_GB:
            raise SettingsError(f"The token cache takes 0 to {MAX_TOKEN_CACHE_GB:,} GB, not {token_cache_gb}.")
        if db_url is not None:
            checked(db_url, "The database URL")
        self.location = library_location(location, db_url)
        if self.location.exists() and not self.location.is_dir():
            raise LibraryError(f"Library location {self.location} exists but is not a folder.")
        if not create and db_url is None and not (self.location / DB_FILE).is_file():
            raise LibraryError(f"There is no library at {self.location}: check --library, or make one with "
                               f"`blipsearch index PATH --library {self.location}`.")
        # What this object makes (see discard_if_unused): a mistyped first command leaves nothing behind.
        self._made_folder = not self.location.exists()
        self._made_db = db_url is None and not (self.location / DB_FILE).exists()
        try:
            self.location.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"Can't create the library folder {self.location}: {exc.strerror}") from None
        # A URL object: a folder name may hold "?", "%" or "#", which a URL string would parse.
        try:
            self.db = Database(db_url or URL.create("sqlite", database=str(self.location / DB_FILE)))
        except ValueError as exc:  # a URL naming a file with a NUL (%00) or bytes that are not UTF-8
            raise LibraryError(f"Can't open the database {db_url!r}: {exc}.") from None
        # The vector file names the database it mirrors by the library row's creation time (to the
        # microsecond): two databases sharing a folder (--db without --library) never use each other's file.
        self.vectors = VectorMirror(self.db, self.location / VECTORS_FILE, self.db.library().created_at.isoformat())
        self.requested_model = model
        # The options it was opened with (None: the library's own): a running server answers the
        # command line only for the same ones (see blipsearch.engine).
        self.settings = open_settings(db_url=db_url, model=model, device=device, itm_token=itm_token,
                                      caption_model=caption_model, vqa_model=vqa_model, quantize=quantize,
                                      token_cache_gb=token_cache_gb)
        self.device = device
        self.itm_token: ItmToken = itm_token
        self.requested_quantize = quantize
        # Vision tokens kept for reranking (fp16, ~0.9 MB an image at base size), least recently used evicted.
        self.token_cache = TokenCache(self.location / "tokens", int(token_cache_gb * 2**30)) if token_cache_gb > 0 else None
        self.requested_caption_model = caption_model
        self.requested_vqa_model = vqa_model
        self.thumbnails = ThumbnailStore(self.location / THUMBNAILS_DIR)
        self._model: RetrievalModel | None = None
        self._text_query: tuple[str, Any] | None = None  # (fingerprint, TextQueryEncoder or None)
        self._captioner: Captioner | None = None
        self._answerer: Answerer | None = None
        # A library may serve several threads (the web server): each model loads once.
        self._load_lock = threading.Lock()

    # -- model --------------------------------------------------------------------------
    @property
    def model_spec(self) -> str:
        if self.requested_model:
            return self.requested_model
        return self.db.library().model or DEFAULT_MODEL

    @property
    def quantize(self) -> str:
        """The vision route: as asked, else the one the library's vectors were made with."""
        if self.requested_quantize:
            return self.requested_quantize
        fp = self.db.library().model_fingerprint or ""
        return fp.rsplit("+", 1)[1] if "+" in fp else "none"

    @property
    def model(self) -> RetrievalModel:
        if self._model is None:
            from .models.retrieval import load_retrieval_model

            with self._load_lock:
                if self._model is None:
                    self._model = load_retrieval_model(self.model_spec, self.device, self.itm_token,
                                                       quantize=self.quantize)
        return self._model

    def _companion(self, requested: str | None, default: str) -> str:
        """Caption and VQA models default to the retrieval model's built-in family, if it is one."""
        if requested:
            return requested
        spec = self.model_spec
        return spec if spec.startswith(BUILTIN_PREFIX) else default

    @property
    def captioner(self) -> Captioner:
        if self._captioner is None:
            with self._load_lock:
                if self._captioner is None:
                    self._captioner = load_captioner(
                        self._companion(self.requested_caption_model, DEFAULT_CAPTION_MODEL), self.device)
        return self._captioner

    @property
    def answerer(self) -> Answerer:
        if self._answerer is None:
            with self._load_lock:
                if self._answerer is None:
                    self._answerer = load_answerer(self._companion(self.requested_vqa_model, DEFAULT_VQA_MODEL),
                                                   self.device)
        return self._answerer

    def _record_model(self, model: RetrievalModel) -> None:
        self.db.set_model(_normalize_spec(model.spec), model.fingerprint, model.dim, model.family, model.queries)

    def _check_model(self, model: RetrievalModel | ModelIdentity) -> None:
        record = self.db.library()
        if record.model_fingerprint is not None and record.model_fingerprint != model.fingerprint:
            asked = _normalize_spec(model.spec)
            made, _, made_route = record.model_fingerprint.partition("+")
            checkpoint, _, route = model.fingerprint.partition("+")
            if made == checkpoint:  # the same weights, another vision route
                raise ModelMismatchError(
                    f"This library's vectors were made with --quantize {made_route or 'none'}; vectors made "
                    f"with --quantize {route or 'none'} are not mixed with them. Use --quantize "
                    f"{made_route or 'none'}, or re-embed everything with "
                    f"`blipsearch index --reindex --quantize {route or 'none'} PATH...`."
                )
            raise ModelMismatchError(
                f"This library's vectors were made by {record.model} (fingerprint {record.model_fingerprint}); "
                f"{asked} (fingerprint {model.fingerprint}) makes vectors that can't be compared with them. "
                f"Use --model {record.model}, or re-embed everything with "
                f"`blipsearch index --reindex --model {asked} PATH...`."
            )

    # -- the vector index -----------------------------------------------------------------
    def rebuild_vectors(self, fp: str | None = None) -> VectorIndex:
        """Rebuild the FAISS file from the vectors stored in the database."""
        return self.vectors.rebuild(fp)

    # -- indexing -------------------------------------------------------------------------------
    def index(
        self,
        paths: list[str | os.PathLike[str] | bytes],
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        reindex: bool = False,
        allow_empty: bool = False,
        thumbnails: bool = True,
        retry_failed: bool = False,
        progress: ProgressFactory = no_progress,
        ray: RaySettings | None = None,
    ) -> IndexReport:
        """Index photo folders (or files) incrementally. See :mod:`blipsearch.index.indexer`.

        With ``ray``, the files are read, decoded and embedded on a Ray cluster (see
        :mod:`blipsearch.index.distributed`), committed here as by the local engine.

        ``batch_size`` defaults to 2 on a CPU (the ViT at 384 px runs fastest
        there in small batches: benchmarks/indexing.py) and 16 on a GPU. With
        ``thumbnails``, each newly decoded image also gets its thumbnail (for
        ``blipsearch serve``), made from the pixels decoded for the model. A file that
        failed to decode is read again once it changes, or with ``retry_failed``.
        """
        roots = [_root(p) for p in paths]
        if not roots:
            raise InputPathError("Give at least one folder or image to index.")
        with self._index_lock():
            self._remove_leftovers()
            report = self._index(roots, batch_size, workers, reindex, allow_empty, thumbnails, retry_failed,
                                 progress, ray)
            if report.removed or report.updated:
                self.thumbnails.prune(self.db.content_hashes())
            return report

    def watch(self, paths: list[str | os.PathLike[str] | bytes], *, settle: float = DEFAULT_SETTLE_S,
              on_update: Callable[[list[bytes], IndexReport], None] = lambda folders, report: None,
              stop: threading.Event | None = None, **index_options: Any) -> None:
        """Index ``paths`` now and keep them indexed as files change, until ``stop`` is set or
        Ctrl-C (see :mod:`blipsearch.index.watch`); ``on_update(folders, report)`` after each run.
        ``index_options`` are :meth:`index`'s (batch size, workers, thumbnails, progress)."""
        roots = [_root(p) for p in paths]
        if not roots:
            raise InputPathError("Give at least one folder to watch.")
        not_folders = [os.fsdecode(r) for r in roots if not os.path.isdir(r)]
        if not_folders:
            raise InputPathError(f"{not_folders[0]} is not a folder: watch folders (index files with `index`).")
        watch(self, roots, settle=settle, on_update=on_update, stop=stop, **index_options)

    def _remove_leftovers(self, min_age_s: float = 3600) -> None:
        """Temporary files of writes cut short by a crash or kill (as large as the vector file)."""
        for folder in (self.location, self.location / "tokens", *self.thumbnails.folder.glob("*/*")):
            for tmp in folder.glob(".*.tmp"):
                if is_leftover(tmp, min_age_s):
                    try:
                        tmp.unlink()
                    except OSError:
                        pass

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        """One index run per library at a time: two would plan from the same rows and collide."""
        lock = FileLock(self.location / ".index.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise LibraryError(f"Another `blipsearch index` is running on the library at {self.location}; "
                               "wait for it to finish (searching meanwhile is fine).") from None
        except OSError as exc:
            raise LibraryError(f"Can't lock the library at {self.location} for indexing: {exc}") from None
        try:
            with self.db.writer_lock() as taken:
                if not taken:
                    raise LibraryError(
                        f"Another `blipsearch index` is writing to the database {self.db.display_url} (from "
                        "another library folder sharing it); wait for it to finish (searching meanwhile is fine).")
                yield
        finally:
            lock.release()

    def _index(self, roots: list[bytes], batch_size: int | None, workers: int | None, reindex: bool,
               allow_empty: bool, thumbnails: bool, retry_failed: bool, progress: ProgressFactory,
               ray: RaySettings | None = None) -> IndexReport:
        identity = self._model or ModelIdentity.of(self.model_spec, self.quantize)
        recorded = self.db.library().model_fingerprint
        model: RetrievalModel | _Deferred
        if recorded == identity.fingerprint:
            model = (_Deferred(identity, lambda: self.model, self.device) if isinstance(identity, ModelIdentity)
                     else identity)
        else:
            if recorded is not None and not reindex:
                self._check_model(identity)  # refused before any weights load
            model = self.model  # a new or changed model: load (or fail) before the library records it
            self._record_model(model)
        vectors = self.vectors.current(model.fingerprint)
        generation = self.vectors.generation
        options: dict[str, Any] = dict(batch_size=batch_size, workers=workers, progress=progress,
                                       on_commit=self.vectors.on_commit, vectors_lock=self.vectors.lock)
        if ray is None:
            indexer = Indexer(self.db, vectors, model, token_cache=self.token_cache,
                              thumbnails=self.thumbnails if thumbnails else None, **options)
        else:
            # (thumbnails are made when first shown, ITM tokens when first reranked: both stay here)
            indexer = RayIndexer(self.db, vectors, model, spec=self.model_spec, quantize=self.quantize,
                                 device=self.device, ray=ray, **options)
        try:
            return indexer.run(roots, reindex_all=reindex, allow_empty=allow_empty, retry_failed=retry_failed)
        finally:
            if self.vectors.generation < 0 or vectors.needs_rebuild():
                self.vectors.rebuild(model.fingerprint)
            elif self.vectors.generation != generation or not self._vector_file_current():
                # (also a file a killed run left behind, which searches since caught up from in memory)
                self.vectors.save(vectors, model.fingerprint)

    def _vector_file_current(self) -> bool:
        header = VectorIndex.read_header(self.vectors.path)
        return header is not None and header.generation == self.vectors.generation

    # -- queries ------------------------------------------------------------------------------------
    def _searchable(self, load: bool = True) -> RetrievalModel | ModelIdentity:
        """The model to search with. Unless ``load``, and while no model is loaded, only its identity
        (fingerprint, vector size, image settings), read from its files: enough to search by vectors."""
        if self.db.library().model_fingerprint is None:
            raise LibraryError(f"The library at {self.location} is empty: run {self._hint('blipsearch index PATH')} "
                               "first.")
        model = self.model if load or self._model is not None else ModelIdentity.of(self.model_spec, self.quantize)
        self._check_model(model)
        # A loaded index of images is caught up by the search itself, under the vectors lock.
        if not self.vectors.loaded(model.fingerprint) and len(self.vectors.current(model.fingerprint)) == 0:
            raise LibraryError(f"The library at {self.location} has no images yet: run "
                               f"{self._hint('blipsearch index PATH')}.")
        return model

    def _embed_query(self, model: RetrievalModel | ModelIdentity, text: str) -> np.ndarray:
        """A query text's ITC vector: from the loaded model, else without torch (:mod:`blipsearch.models.textquery`)."""
        if self._model is not None:
            self._text_query = None  # the model does it now; its copy of the weights is enough
            return self._model.embed_texts([text])
        with self._load_lock:
            if self._text_query is None or self._text_query[0] != model.fingerprint:
                from .models.textquery import TextQueryEncoder, Unsupported

                assert isinstance(model, ModelIdentity)
                try:
                    self._text_query = (model.fingerprint, TextQueryEncoder(model.path))
                except Unsupported:
                    self._text_query = (model.fingerprint, None)
            encoder = self._text_query[1]
        return encoder.embed_texts([text]) if encoder is not None else self.model.embed_texts([text])

    def _composite(self, model: RetrievalModel | ModelIdentity, first: np.ndarray,
                   terms: Sequence[Term]) -> np.ndarray:
        """The normalized weighted sum of the search text's vector (weight 1) and the terms'."""
        total = first[0].astype(np.float64)
        for term in terms:
            if term.text is not None:
                vector = self._embed_query(model, term.text)[0]
            else:
                assert term.image is not None
                vector, _ = self._query_image(model, term.image, need_tokens=False)
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
        if model.queries == 1 or not max_sim:
            return self.vectors.search(model.fingerprint, model.dim, query, width, among)
        count = len(among) if among is not None else len(self.vectors.get(model.fingerprint))
        depth = max(MULTI_SHORTLIST, MULTI_FACTOR * width, math.ceil(MULTI_SHARE * count))
        shortlist = self.vectors.search(model.fingerprint, model.dim, query, depth, among)
        return dict(sorted(self._itc(model, list(shortlist), query[0]).items(), key=lambda kv: -kv[1])[:width])

    def _itc(self, model: RetrievalModel | ModelIdentity, ids: list[int], query: np.ndarray) -> dict[int, float]:
        """{id: ITC score} of these images for a query vector, from every stored vector of theirs."""
        if not ids:
            return {}
        if model.queries == 1:
            scores = self.db.vectors_by_ids(ids, model.fingerprint, model.dim) @ query
        else:
            scores = text_image_scores(query[None], self.db.vectors_by_ids(ids, model.fingerprint, model.dim,
                                                                           queries=True))[0]
        return dict(zip(ids, scores.tolist()))

    def _allowed(self, model: RetrievalModel | ModelIdentity, filters: Filters) -> np.ndarray | None:
        return self.db.filtered_ids(model.fingerprint, filters) if filters else None

    def search(self, text: str, k: int = 10, *, rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank_hits: bool = True,
               hybrid: bool = False, tag: str | None = None, filters: Filters = NO_FILTERS,
               offset: int = 0, terms: Sequence[Term] = ()) -> list[Hit]:
        """Text to image: ITC cosine shortlist, the top ``rerank_depth`` reranked with ITM.

        ``terms`` make it a composite query: more texts and images, weighted, negative ones
        subtracted (see :mod:`blipsearch.search.query` for how they rank and rerank).

        With ``hybrid``, the shortlist fuses the vector ranking with a full-text
        ranking of captions, file and folder names (reciprocal rank fusion),
        and the reranked order is fused with the full-text ranking again: ITM
        does not read file names, so a name that matches keeps its weight.
        ``filters`` (folder, capture dates, tag; ``tag`` is a shorthand) narrow
        the images before ranking. ``offset`` skips that many of the best
        (paging: ``offset=20, k=20`` is the second page); ranks count from the top.
        """
        if not text.strip():
            raise InputPathError("The search text is empty.")
        if tag is not None:
            filters = replace(filters, tag=Filters.make(tag=tag).tag)
        depth = rerank_depth if rerank_hits else 0
        model = self._searchable(load=depth > 0)
        query = self._embed_query(model, text)
        if terms:
            query = self._composite(model, query, terms)
        wanted = offset + k
        width = max(wanted, depth) if not hybrid else max(4 * wanted, depth, 50)
        among = self._allowed(model, filters)
        itc = self._nearest(model, query, width, among)
        keyword: dict[int, float] = {}
        if hybrid:
            allowed = None if among is None else set(among.tolist())
            found = TextIndex(self.db).search(text, width if allowed is None else 10 * width)
            keyword = {i: r for i, r in found if allowed is None or i in allowed}
            fused = reciprocal_rank_fusion([list(itc), list(keyword)])
            extra = [i for i in keyword if i not in itc]
            itc.update(self._itc(model, extra, query[0]))
            base = fused
        else:
            base = itc
        order = sorted(base, key=lambda i: -base[i])
        rows = self.db.refs_by_id(order)
        order = [i for i in order if i in rows]
        more = [(t.text, t.weight) for t in terms if t.text is not None]
        ranked = (rerank(self.model, text, [(i, itc[i]) for i in order[:depth]], rows, cache=self.token_cache,
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

    def similar(self, image: ImageQuery, k: int = 10, *, filters: Filters = NO_FILTERS,
                offset: int = 0) -> list[Hit]:
        """Image to image by ITC cosine. ``image`` is a file, an indexed image's id or
        :class:`ImageData`; the query itself, when indexed, is left out."""
        model = self._searchable(load=False)
        vector, _ = self._query_image(model, image, need_tokens=False)
        itself = self._indexed_id(image)
        found = self._nearest(model, pooled_one(vector, model.dim)[None, :], offset + k + 1,
                              self._allowed(model, filters), max_sim=False)
        rows = self.db.refs_by_id(list(found))
        hits = [(i, s) for i, s in found.items() if i in rows and i != itself]
        return [
            Hit(rank=offset + n + 1, id=i, path=os.fsdecode(rows[i].path), score=s, itc=s)
            for n, (i, s) in enumerate(hits[offset : offset + k])
        ]

    # -- one indexed image ---------------------------------------------------------------------------
    def _row(self, image_id: int) -> ImageRow:
        row = self.db.images_by_id([image_id]).get(image_id) if _possible_id(image_id) else None
        if row is None:
            raise UnknownImageError(f"No indexed image has the id {image_id}.")
        return row

    def _ref(self, image_id: int) -> ImageRef:
        ref = self.db.refs_by_id([image_id]).get(image_id) if _possible_id(image_id) else None
        if ref is None:
            raise UnknownImageError(f"No indexed image has the id {image_id}.")
        return ref

    def _indexed_id(self, image: ImageQuery) -> int | None:
        if isinstance(image, int):
            return image
        if isinstance(image, ImageData):
            return None
        row = self.db.image_by_path(_root(image))
        return row.id if row is not None else None

    def image(self, image_id: int) -> ImageInfo:
        """What the library knows of the indexed image ``image_id``."""
        row = self._row(image_id)
        exif = row.exif or {}
        camera = " ".join(str(exif[k]) for k in ("Make", "Model") if exif.get(k)) or None
        fp = self.db.library().model_fingerprint
        # Why each label is (or is not) one of the image's tags: its rank and match probability.
        tags = [{"label": t.label, "rank": t.rank, "score": t.score, "itm": t.probability,
                 "kept": t.probability is None or t.probability >= DEFAULT_MIN_PROBABILITY}
                for t in self.db.tags_of(row.content_hash, fp)] if fp else []
        return ImageInfo(
            id=row.id, path=os.fsdecode(row.path), size=row.size, width=row.width, height=row.height,
            taken_at=row.taken_at, modified=datetime.fromtimestamp(row.mtime_ns / 1e9), camera=camera,
            exif=row.exif, content_hash=row.content_hash, indexed_at=row.indexed_at, tags=tags,
        )

    def image_file(self, image_id: int) -> bytes:
        """The path of indexed image ``image_id``, once the file there is still the one indexed
        (same size and modification time, following links): a file replaced since, by
        anything, a link to another file included, is refused rather than read."""
        row = self._ref(image_id)
        try:
            st = os.stat(row.path)
        except OSError:
            raise ImageChangedError(f"{os.fsdecode(row.path)} is gone since it was indexed: run "
                                    "`blipsearch index` again.") from None
        if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns) or not os.path.isfile(row.path):
            raise ImageChangedError(f"{os.fsdecode(row.path)} changed since it was indexed: run "
                                    "`blipsearch index` again.")
        return row.path

    def rendition(self, image_id: int, kind: str = "thumb") -> tuple[Path, str]:
        """A small WebP of indexed image ``image_id`` (``"thumb"`` for grids, ``"preview"`` for
        a screen) and its content hash; made from the file on first request."""
        row = self._ref(image_id)
        found = self.thumbnails.get(row.content_hash, kind)
        if found is not None:
            return found, row.content_hash
        data = read_file(self.image_file(image_id))
        image, _ = open_image(data, (SIZES[kind], SIZES[kind]))
        made = self.thumbnails.put(row.content_hash, image, kind)
        if made is None:
            raise LibraryError(f"Can't write a thumbnail in {self.thumbnails.folder} (is the disk full?).")
        return made, row.content_hash

    def recent(self, k: int = 40, *, filters: Filters = NO_FILTERS, offset: int = 0) -> list[tuple[int, str]]:
        """(id, path) of the searchable images that pass ``filters``, the most recently added first."""
        fp = self.db.library().model_fingerprint
        if not fp:
            return []
        ids = self.db.filtered_ids(fp, filters)[::-1][offset : offset + k].tolist()
        rows = self.db.refs_by_id(ids)
        return [(i, os.fsdecode(rows[i].path)) for i in ids if i in rows]

    def content_hashes(self, ids: list[int]) -> dict[int, str]:
        """{id: content hash} of indexed images: what names their renditions (and their versions)."""
        return {i: ref.content_hash for i, ref in self.db.refs_by_id(ids).items()}

    def duplicates(self, threshold: float = DEFAULT_THRESHOLD, *, filters: Filters = NO_FILTERS) -> list[DuplicateGroup]:
        """Groups of near-duplicate photos (ITC cosine >= ``threshold``) among the indexed ones that
        pass ``filters``, best copy first (see :mod:`blipsearch.search.duplicates`). Loads no model."""
        if not 0.0 < threshold <= 1.0:
            raise InputPathError(f"The similarity threshold must lie in (0, 1], not {threshold}.")
        model = self._searchable(load=False)
        allowed = set(self._allowed(model, filters).tolist()) if filters else None
        ids, blobs = [], []
        for chunk_ids, chunk_blobs in self.db.iter_vectors(model.fingerprint):
            for i, blob in zip(chunk_ids.tolist(), chunk_blobs):
                if allowed is None or i in allowed:
                    ids.append(i)
                    blobs.append(blob)
        vectors = bytes_to_vectors(blobs, model.dim) if blobs else np.zeros((0, model.dim), np.float32)
        return group_copies(np.asarray(ids, np.int64), vectors, self.db.images_by_id, threshold)

    def warm(self) -> None:
        """Load the model and the vector index now, so that the first query does not wait for them."""
        self._searchable()

    def explain(self, image: ImageQuery, text: str, *, layer: int | None = None) -> Explanation:
        """Where in ``image`` the ITM head finds ``text``: a Grad-CAM heat map over its patch
        grid (see :mod:`blipsearch.models.explain`), with the pair's match probability."""
        from .models.explain import explain_match

        if not text.strip():
            raise InputPathError("The text to explain is empty.")
        model = self.model
        data = self._image_bytes(image)
        try:
            pixels = pixels_from_bytes(data, model.image_spec)
            photo, _ = open_image(data, (EXPLAIN_SIZE, EXPLAIN_SIZE))
        except ImageError as exc:
            raise InputPathError(f"Can't read this image: {exc}") from None
        heat, logits = explain_match(model, text, pixels, layer)
        _, probability = match_scores(logits[None])
        return Explanation(heat, float(probability[0]), photo)

    def _image_bytes(self, image: ImageQuery) -> bytes:
        if isinstance(image, ImageData):
            return image.data
        path = self.image_file(image) if isinstance(image, int) else _root(image)
        return read_file(path)

    def labels(self, min_probability: float = DEFAULT_MIN_PROBABILITY) -> list[tuple[str, int]]:
        """The tag labels of the library's images (``index --tags``) with the number of images
        they are a tag of (see :mod:`blipsearch.filters`)."""
        fp = self.db.library().model_fingerprint
        return self.db.labels(fp, min_probability) if fp else []

    # -- image to text ------------------------------------------------------------------------------
    def _query_image(self, model: RetrievalModel | ModelIdentity, image: ImageQuery,
                     need_tokens: bool) -> tuple[np.ndarray, torch.Tensor | None]:
        """The ITC vector of a query image (the stored one when it is indexed and unchanged),
        and its vision tokens when ``need_tokens``."""
        if isinstance(image, int):  # an indexed image: its stored vector, or its file once checked
            row = self._row(image)
            if not need_tokens and row.model == model.fingerprint and row.vector is not None:
                return np.frombuffer(row.vector, np.float32), None
        elif not isinstance(image, ImageData):
            path = _root(image)
            if not os.path.isfile(path):
                raise InputPathError(f"{os.fsdecode(path)} is not a file.")
            stored = self.db.image_by_path(path) if not need_tokens else None
            if stored is not None and stored.model == model.fingerprint and stored.vector is not None:
                st = os.stat(path)
                if (stored.size, stored.mtime_ns) == (st.st_size, st.st_mtime_ns):
                    return np.frombuffer(stored.vector, np.float32), None
        shown = "this image" if isinstance(image, (int, ImageData)) else os.fsdecode(_root(image))
        try:
            pixels = pixels_from_bytes(self._image_bytes(image), model.image_spec)
        except ImageError as exc:
            raise InputPathError(f"Can't use {shown} as a query image: {exc}") from None
        loaded = self.model  # an image to embed: the model is needed now
        tokens = loaded.image_tokens(pixels[None])
        return loaded.project_images(tokens)[0], tokens

    def _texts_model(self) -> RetrievalModel:
        """The library's model, recorded now if the library has none yet."""
        model = self.model
        if self.db.library().model_fingerprint is None:
            self._record_model(model)
        self._check_model(model)
        return model

    def add_texts(self, entries: list[TextEntry]) -> tuple[int, int]:
        """Add texts to the library's collection; returns (added, already there)."""
        return TextStore(self.db).add(entries, self._texts_model())

    def texts(self) -> list[TextRow]:
        """The texts of the library's collection (``add_texts``), by id."""
        return TextStore(self.db).list()

    def remove_texts(self, keys: list[str]) -> int:
        """Remove texts by id, or by the id they had in their file; returns how many went."""
        return TextStore(self.db).remove(keys)

    def lookup(self, image: ImageQuery, k: int = 10, *, rerank_depth: int = DEFAULT_RERANK_DEPTH,
               rerank_hits: bool = True, source: str = "texts") -> list[TextHit]:
        """Image to text: the texts (or, with ``source="captions"``, the library's generated
        captions) that best match ``image``."""
        model = self._texts_model()
        store = TextStore(self.db)
        kind = CAPTIONS if source == "captions" else USER
        if kind == CAPTIONS:
            store.sync_captions(model)
        else:
            store.embed_missing(model)
        rows, text_vectors = store.vectors(model.fingerprint, model.dim, kind)
        if not rows:
            raise LibraryError(
                f"The library has no generated captions yet: run {self._hint('blipsearch index --captions PATH')}."
                if kind == CAPTIONS else
                f"The library has no texts yet: add some with {self._hint('blipsearch texts add FILE')}."
            )
        depth = rerank_depth if rerank_hits else 0
        vector, tokens = self._query_image(model, image, need_tokens=depth > 0)
        ids = list(rows)
        texts = [rows[i].text for i in ids]
        ranked = rank_texts(model, vector, tokens, texts, text_vectors, k, depth)
        return [
            TextHit(rank=n + 1, id=ids[j], text=texts[j], score=score, itc=itc, itm=itm,
                    external_id=rows[ids[j]].external_id)
            for n, (j, score, itc, itm) in enumerate(ranked)
        ]

    def tag(self, images: list[str | os.PathLike[str] | bytes], labels: list[str], *,
            template: str = DEFAULT_TEMPLATE, k: int = 5, rerank_depth: int = DEFAULT_RERANK_DEPTH) -> list[TagResult]:
        """Zero-shot tagging: rank ``labels`` for each image (written into ``template``)."""
        model = self.model
        vocabulary = Vocabulary.make(model, labels, template)
        results = []
        for image in images:
            shown = os.fsdecode(os.path.abspath(os.fsencode(image)))  # as every command prints paths
            try:
                vector, tokens = self._query_image(model, image, need_tokens=rerank_depth > 0)
            except InputPathError as exc:
                results.append(TagResult(shown, None, str(exc)))
                continue
            results.append(TagResult(shown, vocabulary.rank(vector, tokens, k, rerank_depth)))
        return results

    def tag_library(self, labels: list[str], paths: list[str | os.PathLike[str] | bytes] | None = None, *,
                    template: str = DEFAULT_TEMPLATE, k: int = 5, rerank_depth: int = DEFAULT_RERANK_DEPTH,
                    progress: ProgressFactory = no_progress) -> int:
        """Store the top ``k`` labels of every indexed image (below ``paths``) not tagged yet
        with this vocabulary; `search(tag=...)` filters by them."""
        model = self._texts_model()
        vocabulary = Vocabulary.make(model, labels, template)
        todo = self.db.untagged([_root(p) for p in paths] if paths else None, model.fingerprint, vocabulary.key)
        bar = progress(len(todo), "Tagging")
        tagged = 0
        try:
            for content_hash, path, vector in todo:
                tokens = None
                if rerank_depth > 0:
                    try:
                        tokens = model.image_tokens(load_pixels(path, model.image_spec)[None])
                    except Exception:  # noqa: BLE001 - unreadable now: tag by the stored vector alone
                        tokens = None
                tags = vocabulary.rank(np.frombuffer(vector, np.float32), tokens, k, rerank_depth)
                self.db.save_tags(content_hash, model.fingerprint, vocabulary.key, tags)
                tagged += 1
                bar.update(1)
        finally:
            bar.close()
        return tagged

    # -- captions and questions ------------------------------------------------------------------
    def caption(self, images: list[str | os.PathLike[str] | bytes], settings: CaptionSettings = CaptionSettings(),
                *, batch_size: int = 8, progress: ProgressFactory = no_progress) -> list[Described]:
        """Captions for any image files; cached by content, model, prompt and decoding settings."""
        return caption_paths(self.db, self.captioner, [_root(p) for p in images], settings, batch_size, progress)

    def ask(self, images: list[str | os.PathLike[str] | bytes], question: str,
            settings: AnswerSettings = AnswerSettings(), *, batch_size: int = 8) -> list[Described]:
        """One answer to ``question`` per image file."""
        if not question.strip():
            raise InputPathError("The question is empty.")
        return answer_paths(self.answerer, [_root(p) for p in images], question, settings, batch_size)

    def caption_library(self, paths: list[str | os.PathLike[str] | bytes] | None = None,
                        settings: CaptionSettings = CaptionSettings(), *, batch_size: int = 8,
                        progress: ProgressFactory = no_progress) -> int:
        """Caption every indexed image (below ``paths``) that has no caption from this model and settings."""
        todo = self.db.uncaptioned([_root(p) for p in paths] if paths else None, self.captioner.fingerprint,
                                   settings.cache_key)
        done = caption_paths(self.db, self.captioner, [p for _, p in todo], settings, batch_size, progress)
        return sum(d.text is not None for d in done)

    def describe(self, hits: list[Hit], caption: CaptionSettings | None = None,
                 question: str | None = None, answers: AnswerSettings = AnswerSettings()) -> list[Hit]:
        """The hits with ``caption`` and/or ``answer`` (to ``question``, decoded or ranked from a list
        as ``answers`` says) filled in."""
        if question is not None and not question.strip():
            raise InputPathError("The question is empty.")
        paths = [os.fsencode(h.path) for h in hits]
        if caption is not None:
            texts = caption_paths(self.db, self.captioner, paths, caption)
            hits = [replace(h, caption=d.text) for h, d in zip(hits, texts)]
        if question is not None:
            said = answer_paths(self.answerer, paths, question, answers)
            hits = [replace(h, answer=d.text) for h, d in zip(hits, said)]
        return hits

    @staticmethod
    def keep_answer(hits: list[Hit], expected: str) -> list[Hit]:
        """The hits whose answer is ``expected`` (case and final punctuation ignored), renumbered."""
        kept = [h for h in hits if h.answer is not None and same_answer(h.answer, expected)]
        return [replace(h, rank=n + 1) for n, h in enumerate(kept)]

    # -- state -----------------------------------------------------------------------------------------
    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many searchable images pass ``filters`` (all of them without): what a search ranks."""
        fp = self.db.library().model_fingerprint
        if fp is None:
            return 0
        if filters:
            return len(self.db.filtered_ids(fp, filters))
        return self.db.counts(fp)[1]

    def set_recall_target(self, target: float | None) -> bool:
        """Ask approximate vector indexes of this library for ``target`` recall@10 (None: the default,
        :data:`~blipsearch.index.vectors.RECALL_TARGET`). The index is retuned now when it is
        approximate (or large enough to be); returns whether it was."""
        if target is not None and not 0 < target <= 1:
            raise SettingsError(f"The recall target must be above 0 and at most 1, not {target}.")
        if (self.db.library().recall_target or RECALL_TARGET) == (target or RECALL_TARGET):
            return False
        with self._index_lock():
            self.db.set_recall_target(target)
            fp = self.db.library().model_fingerprint
            if fp and is_tuned_size(self.db.counts(fp)[1]):
                self.vectors.rebuild(fp)
                return True
        return False

    def unsearchable(self) -> tuple[int, int]:
        """(indexed images without a vector from the library's model, indexed images)."""
        images, searchable, _ = self.db.counts(self.db.library().model_fingerprint)
        return images - searchable, images

    def status(self) -> dict[str, Any]:
        """Counts (images, searchable vectors, failures, images still to embed with the library's
        model as ``stale``), the model, and where the library and its database are."""
        record = self.db.library()
        images, stored_vectors, failures = self.db.counts(record.model_fingerprint)
        searchable = 0
        index: dict[str, Any] = {"index": None}
        if record.model_fingerprint:  # read-only: a stale file is rebuilt by the next search or index run
            header = VectorIndex.read_header(self.vectors.path)
            fresh = header is not None and self.vectors.mirrors(header, record.generation, record.model_fingerprint)
            searchable = header.count if fresh and header else stored_vectors
            if header is not None:
                # The vector index: exact, or approximate with the lists it scans and the recall@10
                # measured on this library's vectors when it was built.
                index = {"index": "exact" if header.kind == "flat" else header.kind}
                if header.kind != "flat":
                    index |= {"index_nprobe": header.nprobe or None, "index_recall_at_10": header.recall,
                              "index_filtered_nprobe": header.filtered_nprobe or None,
                              "index_filtered_recall_at_10": header.filtered_recall}
        index["recall_target"] = record.recall_target or RECALL_TARGET
        return {
            "images": images,
            "vectors": searchable,
            "failures": failures,
            "stale": images - stored_vectors,
            "texts": TextStore(self.db).count(),
            "model": record.model,
            "model_fingerprint": record.model_fingerprint,
            "dim": record.dim,
            "family": record.family,
            "vectors_per_image": record.queries,
            **index,
            "library": str(self.location),
            "database": self.db.display_url,
        }

    def failures(self) -> list[Failure]:
        """The files that could not be indexed, with the reason, by path."""
        return [Failure(os.fsdecode(f.path), f.reason) for f in self.db.failures()]

    def close(self) -> None:
        """Release the database connections (``with Library(...)`` does it on leaving)."""
        self.db.dispose()

    def discard_if_unused(self) -> bool:
        """Remove the library files this object made, if nothing was ever stored in them (a first
        command that failed, or needed no library); returns whether it did. Closes the library."""
        try:
            unused = self._made_db and self.db.unused()
        finally:
            self.close()
        if not unused:
            return False
        for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", DB_FILE + ".writer.lock", VECTORS_FILE,
                     ".index.lock"):
            (self.location / name).unlink(missing_ok=True)
        for folder in (self.thumbnails.folder, self.location / "tokens"):
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        if self._made_folder:
            try:
                self.location.rmdir()
            except OSError:
                pass  # something else was put there meanwhile: it stays
        return True

    def _hint(self, command: str) -> str:
        """A command to suggest, naming this library unless it is the default one."""
        if self.location != default_location().absolute():
            command += f" --library {self.location}"
        return f"`{command}`"

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Deferred:
    """The indexer's embedder for the library's own model: weights loaded on the first image to embed.

    A re-run over unchanged, touched, moved or unreadable files then never
    loads the model (seconds for BLIP-base; the scan of 10k files takes well
    under a second). A model that can't load fails there, with the batches
    before it committed; the next run goes on from them.
    """

    def __init__(self, identity: ModelIdentity, load: Callable[[], RetrievalModel], device: str) -> None:
        self.fingerprint = identity.fingerprint
        self.image_spec = identity.image_spec
        self._load = load
        self._device = device

    def _model(self) -> RetrievalModel:
        model = self._load()
        if model.fingerprint != self.fingerprint:
            raise ModelMismatchError(f"The model's files changed while indexing (fingerprint {self.fingerprint} "
                                     f"became {model.fingerprint}); run the index again.")
        return model

    def image_tokens(self, pixels: np.ndarray) -> torch.Tensor:
        return self._model().image_tokens(pixels)

    def project_images(self, tokens: torch.Tensor) -> np.ndarray:
        return self._model().project_images(tokens)

    @property
    def batch_size(self) -> int:
        return self._model().batch_size

    @property
    def decode_workers(self) -> int:
        """Asked before any image is known to need the model: the device decides, no weights load."""
        import torch

        from .models.checkpoint import decode_workers, select_device

        try:
            device = select_device(self._device)
        except ModelLoadError:
            device = torch.device("cpu")  # the load says why, if an image ever needs the model
        return decode_workers(device)


def _possible_id(image_id: int) -> bool:
    """Whether ``image_id`` can be a stored id (a 64-bit integer from 1): a database can't compare
    a larger number."""
    return 1 <= image_id < 2**63


def _root(path: str | os.PathLike[str] | bytes) -> bytes:
    """An absolute byte path; the folder must exist (a missing root must delete nothing)."""
    raw = os.fsencode(os.path.expanduser(os.fsdecode(path)) if not isinstance(path, bytes) else path)
    absolute = os.path.abspath(raw)
    if not os.path.exists(absolute):
        raise InputPathError(f"{os.fsdecode(absolute)} does not exist (is the disk mounted?).")
    return absolute


__all__ = ["Explanation", "Failure", "Hit", "ImageData", "ImageInfo", "ImageQuery", "IndexReport", "Library", "default_location"]
