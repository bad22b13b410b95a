"""The Python API: a library of indexed photos, searchable by text and by image.

>>> lib = Library("~/photos-index", model="Salesforce/blip-itm-base-coco")   # doctest: +SKIP
>>> lib.index(["~/Pictures"])                                                 # doctest: +SKIP
>>> for hit in lib.search("a dog running on the beach", k=5):                 # doctest: +SKIP
...     print(hit.rank, round(hit.score, 3), hit.path)

A library is a folder holding the SQLite database (or pointing at any
SQLAlchemy URL) and the FAISS file derived from it.

:class:`Library` is where the library's parts (:class:`~blipsearch.workspace.Workspace`) meet
the concerns that work on them: index runs (:mod:`blipsearch.index.run`), search
(:mod:`blipsearch.search.searcher`), photos (:mod:`blipsearch.store.photos`), texts and tags
(:mod:`blipsearch.texts.service`), captions, answers and explanations
(:mod:`blipsearch.describe.service`) and the library's state (:mod:`blipsearch.index.status`).
Each method here hands its call to one of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ann.index import VectorIndex
from .describe import Answerer, AnswerSettings, Captioner, CaptionSettings
from .describe.batch import Described
from .describe.service import Describing
from .export.sidecars import SidecarReport, Sidecars
from .filters import DEFAULT_MIN_PROBABILITY, NO_FILTERS, Filters
from .index.distributed import RaySettings
from .index.indexer import IndexReport
from .index.run import Indexing
from .index.status import LibraryState
from .index.watch import DEFAULT_SETTLE_S
from .options import DEFAULT_RERANK_DEPTH, DEFAULT_VQA_MODEL
from .progress import ProgressFactory, no_progress
from .rerank.cache import TokenCache
from .results import (
    Explanation,
    Failure,
    Hit,
    ImageData,
    ImageInfo,
    ImageQuery,
    MatchSet,
)
from .search.duplicates import DEFAULT_THRESHOLD, DuplicateGroup
from .search.query import Term
from .search.searcher import Searcher
from .store.location import default_location
from .store.schema import TextRow
from .texts import TextEntry, TextHit
from .texts.service import Texts
from .texts.tags import DEFAULT_TEMPLATE, TagResult
from .workspace import Workspace

if TYPE_CHECKING:
    from .models.base import RetrievalModel
    from .models.checkpoint import ItmToken


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
        self.parts = ws = Workspace(location, db_url=db_url, model=model, device=device, itm_token=itm_token,
                                    caption_model=caption_model, vqa_model=vqa_model, quantize=quantize,
                                    token_cache_gb=token_cache_gb, create=create)
        self.location, self.db, self.vectors, self.thumbnails = ws.location, ws.db, ws.vectors, ws.thumbnails
        # The options it was opened with (None: the library's own): a running server answers the
        # command line only for the same ones (see blipsearch.engine).
        self.settings = ws.settings
        self.device, self.itm_token = ws.device, ws.itm_token
        self.requested_model, self.requested_quantize = ws.requested_model, ws.requested_quantize
        self.requested_caption_model, self.requested_vqa_model = ws.requested_caption_model, ws.requested_vqa_model
        self._indexing = Indexing(ws)
        self._searcher = Searcher(ws)
        self._texts = Texts(ws)
        self._describing = Describing(ws)
        self._state = LibraryState(ws)
        self._sidecars = Sidecars(ws, self._describing.caption_fingerprint)

    # -- models ---------------------------------------------------------------------------------
    @property
    def model_spec(self) -> str:
        return self.parts.model_spec

    @property
    def vqa_model(self) -> str:
        """The VQA model questions are asked of: ``--vqa-model``, else the built-in family's, else BLIP's."""
        return self.parts.companion(self.requested_vqa_model, DEFAULT_VQA_MODEL)

    @property
    def quantize(self) -> str:
        """The vision route: as asked, else the one the library's vectors were made with."""
        return self.parts.quantize

    @property
    def model(self) -> RetrievalModel:
        return self.parts.model

    @property
    def _model(self) -> RetrievalModel | None:
        """The retrieval model if it is loaded (a loaded one may be handed in)."""
        return self.parts.loaded_model

    @_model.setter
    def _model(self, model: RetrievalModel | None) -> None:
        self.parts.loaded_model = model

    @property
    def token_cache(self) -> TokenCache | None:
        """Vision tokens kept for reranking (``token_cache_gb``), or None."""
        return self.parts.token_cache

    @token_cache.setter
    def token_cache(self, cache: TokenCache | None) -> None:
        self.parts.token_cache = cache

    def loaded_models(self) -> list[str]:
        """The models this object has loaded so far: ``"retrieval"``, ``"caption"``, ``"vqa"``."""
        return ["retrieval"] * (self.parts.loaded_model is not None) + self._describing.loaded()

    @property
    def captioner(self) -> Captioner:
        return self._describing.captioner

    @property
    def answerer(self) -> Answerer:
        return self._describing.answerer

    # -- the vector index -------------------------------------------------------------------------
    def rebuild_vectors(self, fp: str | None = None) -> VectorIndex:
        """Rebuild the FAISS file from the vectors stored in the database."""
        return self.vectors.rebuild(fp)

    # -- indexing -----------------------------------------------------------------------------------
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
        return self._indexing.index(paths, batch_size=batch_size, workers=workers, reindex=reindex,
                                    allow_empty=allow_empty, thumbnails=thumbnails, retry_failed=retry_failed,
                                    progress=progress, ray=ray)

    def watch(self, paths: list[str | os.PathLike[str] | bytes], *, settle: float = DEFAULT_SETTLE_S,
              on_update: Callable[[list[bytes], IndexReport], None] = lambda folders, report: None,
              stop: threading.Event | None = None, **index_options: Any) -> None:
        """Index ``paths`` now and keep them indexed as files change, until ``stop`` is set or
        Ctrl-C (see :mod:`blipsearch.index.watch`); ``on_update(folders, report)`` after each run.
        ``index_options`` are :meth:`index`'s (batch size, workers, thumbnails, progress)."""
        self._indexing.watch(paths, settle=settle, on_update=on_update, stop=stop, **index_options)

    def set_recall_target(self, target: float | None) -> bool:
        """Ask approximate vector indexes of this library for ``target`` recall@10 (None: the default,
        :data:`~blipsearch.ann.index.RECALL_TARGET`). The index is retuned now when it is
        approximate (or large enough to be); returns whether it was."""
        return self._indexing.set_recall_target(target)

    # -- queries ------------------------------------------------------------------------------------
    def search(self, text: str, k: int = 10, *, rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank_hits: bool = True,
               hybrid: bool = False, tag: str | None = None, filters: Filters = NO_FILTERS,
               offset: int = 0, terms: Sequence[Term] = (), all: bool = False, min_match: float = 0.5,
               sort: str = "score", max_check: int | None = None) -> list[Hit] | MatchSet:
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

        With ``all``, the answer is a :class:`~blipsearch.results.MatchSet` instead: every photo
        whose ITM match probability for ``text`` is at least ``min_match``, ordered by ``sort``
        (``"score"``, ``"date"``, ``"-date"``: newest first), after scoring at most ``max_check``
        photos; ``k``, ``offset``, ``rerank_depth`` and ``hybrid`` do not apply to it.
        """
        return (self._searcher.matches(text, min_match=min_match, sort=sort, max_check=max_check, tag=tag,
                                       filters=filters, terms=terms) if all else
                self._searcher.search(text, k, rerank_depth=rerank_depth, rerank_hits=rerank_hits, hybrid=hybrid,
                                      tag=tag, filters=filters, offset=offset, terms=terms))

    def similar(self, image: ImageQuery, k: int = 10, *, filters: Filters = NO_FILTERS,
                offset: int = 0) -> list[Hit]:
        """Image to image by ITC cosine. ``image`` is a file, an indexed image's id or
        :class:`ImageData`; the query itself, when indexed, is left out."""
        return self._searcher.similar(image, k, filters=filters, offset=offset)

    def duplicates(self, threshold: float = DEFAULT_THRESHOLD, *, filters: Filters = NO_FILTERS) -> list[DuplicateGroup]:
        """Groups of near-duplicate photos (ITC cosine >= ``threshold``) among the indexed ones that
        pass ``filters``, best copy first (see :mod:`blipsearch.search.duplicates`). Loads no model."""
        return self._searcher.duplicates(threshold, filters=filters)

    def warm(self) -> None:
        """Load the model and the vector index now, so that the first query does not wait for them."""
        self.parts.searchable()

    # -- one indexed image ---------------------------------------------------------------------------
    def image(self, image_id: int) -> ImageInfo:
        """What the library knows of the indexed image ``image_id``."""
        return self.parts.photos.info(image_id)

    def image_file(self, image_id: int) -> bytes:
        """The path of indexed image ``image_id``, once the file there is still the one indexed
        (same size and modification time, following links): a file replaced since, by
        anything, a link to another file included, is refused rather than read."""
        return self.parts.photos.file(image_id)

    def rendition(self, image_id: int, kind: str = "thumb") -> tuple[Path, str]:
        """A small WebP of indexed image ``image_id`` (``"thumb"`` for grids, ``"preview"`` for
        a screen) and its content hash; made from the file on first request."""
        return self.parts.photos.rendition(image_id, kind)

    def recent(self, k: int = 40, *, filters: Filters = NO_FILTERS, offset: int = 0) -> list[tuple[int, str]]:
        """(id, path) of the searchable images that pass ``filters``, the most recently added first."""
        return self.parts.photos.recent(k, filters=filters, offset=offset)

    def content_hashes(self, ids: list[int]) -> dict[int, str]:
        """{id: content hash} of indexed images: what names their renditions (and their versions)."""
        return self.parts.photos.content_hashes(ids)

    def explain(self, image: ImageQuery, text: str, *, layer: int | None = None) -> Explanation:
        """Where in ``image`` the ITM head finds ``text``: a Grad-CAM heat map over its patch
        grid (see :mod:`blipsearch.models.explain`), with the pair's match probability."""
        return self._describing.explain(image, text, layer=layer)

    # -- texts, image to text, tags ----------------------------------------------------------------
    def add_texts(self, entries: list[TextEntry]) -> tuple[int, int]:
        """Add texts to the library's collection; returns (added, already there)."""
        return self._texts.add(entries)

    def texts(self) -> list[TextRow]:
        """The texts of the library's collection (``add_texts``), by id."""
        return self._texts.list()

    def remove_texts(self, keys: list[str]) -> int:
        """Remove texts by id, or by the id they had in their file; returns how many went."""
        return self._texts.remove(keys)

    def lookup(self, image: ImageQuery, k: int = 10, *, rerank_depth: int = DEFAULT_RERANK_DEPTH,
               rerank_hits: bool = True, source: str = "texts") -> list[TextHit]:
        """Image to text: the texts (or, with ``source="captions"``, the library's generated
        captions) that best match ``image``."""
        return self._texts.lookup(image, k, rerank_depth=rerank_depth, rerank_hits=rerank_hits, source=source)

    def tag(self, images: list[str | os.PathLike[str] | bytes], labels: list[str], *,
            template: str = DEFAULT_TEMPLATE, k: int = 5, rerank_depth: int = DEFAULT_RERANK_DEPTH) -> list[TagResult]:
        """Zero-shot tagging: rank ``labels`` for each image (written into ``template``)."""
        return self._texts.tag(images, labels, template=template, k=k, rerank_depth=rerank_depth)

    def tag_library(self, labels: list[str], paths: list[str | os.PathLike[str] | bytes] | None = None, *,
                    template: str = DEFAULT_TEMPLATE, k: int = 5, rerank_depth: int = DEFAULT_RERANK_DEPTH,
                    progress: ProgressFactory = no_progress) -> int:
        """Store the top ``k`` labels of every indexed image (below ``paths``) not tagged yet
        with this vocabulary; `search(tag=...)` filters by them."""
        return self._texts.tag_library(labels, paths, template=template, k=k, rerank_depth=rerank_depth,
                                       progress=progress)

    def labels(self, min_probability: float = DEFAULT_MIN_PROBABILITY) -> list[tuple[str, int]]:
        """The tag labels of the library's images (``index --tags``) with the number of images
        they are a tag of (see :mod:`blipsearch.filters`)."""
        return self._texts.labels(min_probability)

    # -- captions and questions ------------------------------------------------------------------
    def caption(self, images: list[str | os.PathLike[str] | bytes], settings: CaptionSettings = CaptionSettings(),
                *, batch_size: int = 8, progress: ProgressFactory = no_progress) -> list[Described]:
        """Captions for any image files; cached by content, model, prompt and decoding settings."""
        return self._describing.caption(images, settings, batch_size=batch_size, progress=progress)

    def ask(self, images: list[str | os.PathLike[str] | bytes], question: str,
            settings: AnswerSettings = AnswerSettings(), *, batch_size: int = 8) -> list[Described]:
        """One answer to ``question`` per image file."""
        return self._describing.ask(images, question, settings, batch_size=batch_size)

    def caption_library(self, paths: list[str | os.PathLike[str] | bytes] | None = None,
                        settings: CaptionSettings = CaptionSettings(), *, batch_size: int = 8,
                        progress: ProgressFactory = no_progress) -> int:
        """Caption every indexed image (below ``paths``) that has no caption from this model and settings
        (the model loads only if one has none)."""
        return self._describing.caption_library(paths, settings, batch_size=batch_size, progress=progress)

    def caption_fingerprint(self) -> str:
        """The caption model's fingerprint, read from its files while it is not loaded (a missing model
        fails here, within seconds, without loading any weights)."""
        return self._describing.caption_fingerprint()

    def describe(self, hits: list[Hit], caption: CaptionSettings | None = None,
                 question: str | None = None, answers: AnswerSettings = AnswerSettings()) -> list[Hit]:
        """The hits with ``caption`` and/or ``answer`` (to ``question``, decoded or ranked from a list
        as ``answers`` says) filled in."""
        return self._describing.describe(hits, caption, question, answers)

    keep_answer = staticmethod(Describing.keep_answer)

    # -- sidecars for photo managers ---------------------------------------------------------------
    def write_sidecars(self, paths: list[str | os.PathLike[str] | bytes] | None = None, *, captions: bool = True,
                       tags: bool = True, name: str | None = None, dry_run: bool = False, remove: bool = False,
                       caption_settings: CaptionSettings = CaptionSettings(),
                       min_probability: float = DEFAULT_MIN_PROBABILITY,
                       progress: ProgressFactory = no_progress) -> SidecarReport:
        """Write the stored captions (those of the caption model with ``caption_settings``) and tags
        of the indexed images at or below ``paths`` (all when None) into their XMP sidecars, keeping
        whatever else the sidecars hold; ``remove`` takes out what blipsearch wrote instead, and
        ``dry_run`` only reports. ``name``: "photo.ext.xmp" or "photo.xmp" (None: the sidecar a
        photo has, else "photo.ext.xmp"). See :mod:`blipsearch.export.sidecars`."""
        return self._sidecars.write(paths, captions=captions, tags=tags, name=name, dry_run=dry_run, remove=remove,
                                    caption_settings=caption_settings, min_probability=min_probability,
                                    progress=progress)

    # -- state -----------------------------------------------------------------------------------------
    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many searchable images pass ``filters`` (all of them without): what a search ranks."""
        return self._state.count(filters)

    def unsearchable(self) -> tuple[int, int]:
        """(indexed images without a vector from the library's model, indexed images)."""
        return self._state.unsearchable()

    def status(self) -> dict[str, Any]:
        """Counts (images, searchable vectors, failures, images still to embed with the library's
        model as ``stale``), the model, and where the library and its database are."""
        return self._state.status()

    def failures(self) -> list[Failure]:
        """The files that could not be indexed, with the reason, by path."""
        return self._state.failures()

    def close(self) -> None:
        """Release the database connections (``with Library(...)`` does it on leaving)."""
        self.parts.close()

    def discard_if_unused(self) -> bool:
        """Remove the library files this object made, if nothing was ever stored in them (a first
        command that failed, or needed no library); returns whether it did. Closes the library."""
        return self.parts.discard_if_unused()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Explanation", "Failure", "Hit", "ImageData", "ImageInfo", "ImageQuery", "IndexReport", "Library", "default_location"]
