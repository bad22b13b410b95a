"""An index run over a library: one at a time, its model checked (or recorded) first, the
files read and embedded by the local engine or on Ray, the vector file written after; and
folders watched, and the vector index's recall target."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout

from ..ann.index import RECALL_TARGET, VectorIndex, is_tuned_size
from ..errors import (
    InputPathError,
    LibraryError,
    ModelLoadError,
    ModelMismatchError,
    SettingsError,
)
from ..models.loading import ModelIdentity
from ..progress import ProgressFactory, no_progress
from ..system import is_leftover, root_path
from .distributed import RayIndexer, RaySettings
from .indexer import Indexer, IndexReport
from .watch import DEFAULT_SETTLE_S, watch

if TYPE_CHECKING:
    import torch

    from ..models.base import RetrievalModel
    from ..workspace import Workspace


class Indexing:
    """Index runs over the library of ``ws``."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

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
        """Index photo folders (or files) incrementally (see :meth:`blipsearch.library.Library.index`)."""
        roots = [root_path(p) for p in paths]
        if not roots:
            raise InputPathError("Give at least one folder or image to index.")
        with self.lock():
            self._remove_leftovers()
            report = self._index(roots, batch_size, workers, reindex, allow_empty, thumbnails, retry_failed,
                                 progress, ray)
            if report.removed or report.updated:
                self.ws.thumbnails.prune(self.ws.db.content_hashes())
            return report

    def watch(self, paths: list[str | os.PathLike[str] | bytes], *, settle: float = DEFAULT_SETTLE_S,
              on_update: Callable[[list[bytes], IndexReport], None] = lambda folders, report: None,
              stop: threading.Event | None = None, **index_options: Any) -> None:
        """Index ``paths`` now and keep them indexed as files change (see :mod:`blipsearch.index.watch`)."""
        roots = [root_path(p) for p in paths]
        if not roots:
            raise InputPathError("Give at least one folder to watch.")
        not_folders = [os.fsdecode(r) for r in roots if not os.path.isdir(r)]
        if not_folders:
            raise InputPathError(f"{not_folders[0]} is not a folder: watch folders (index files with `index`).")
        watch(self.index, self.ws.location, roots, settle=settle, on_update=on_update, stop=stop, **index_options)

    def set_recall_target(self, target: float | None) -> bool:
        """Ask approximate vector indexes for ``target`` recall@10 (None: the default); returns whether
        the index was retuned now."""
        if target is not None and not 0 < target <= 1:
            raise SettingsError(f"The recall target must be above 0 and at most 1, not {target}.")
        db = self.ws.db
        if (db.library().recall_target or RECALL_TARGET) == (target or RECALL_TARGET):
            return False
        with self.lock():
            db.set_recall_target(target)
            fp = db.library().model_fingerprint
            if fp and is_tuned_size(db.counts(fp)[1]):
                self.ws.vectors.rebuild(fp)
                return True
        return False

    def _remove_leftovers(self, min_age_s: float = 3600) -> None:
        """Temporary files of writes cut short by a crash or kill (as large as the vector file)."""
        location = self.ws.location
        for folder in (location, location / "tokens", *self.ws.thumbnails.folder.glob("*/*")):
            for tmp in folder.glob(".*.tmp"):
                if is_leftover(tmp, min_age_s):
                    try:
                        tmp.unlink()
                    except OSError:
                        pass

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One index run per library at a time: two would plan from the same rows and collide."""
        location, db = self.ws.location, self.ws.db
        lock = FileLock(location / ".index.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise LibraryError(f"Another `blipsearch index` is running on the library at {location}; "
                               "wait for it to finish (searching meanwhile is fine).") from None
        except OSError as exc:
            raise LibraryError(f"Can't lock the library at {location} for indexing: {exc}") from None
        try:
            with db.writer_lock() as taken:
                if not taken:
                    raise LibraryError(
                        f"Another `blipsearch index` is writing to the database {db.display_url} (from "
                        "another library folder sharing it); wait for it to finish (searching meanwhile is fine).")
                yield
        finally:
            lock.release()

    def _index(self, roots: list[bytes], batch_size: int | None, workers: int | None, reindex: bool,
               allow_empty: bool, thumbnails: bool, retry_failed: bool, progress: ProgressFactory,
               ray: RaySettings | None = None) -> IndexReport:
        ws = self.ws
        identity = ws.loaded_model or ModelIdentity.of(ws.model_spec, ws.quantize)
        recorded = ws.db.library().model_fingerprint
        model: RetrievalModel | _Deferred
        if recorded == identity.fingerprint:
            model = (_Deferred(identity, lambda: ws.model, ws.device) if isinstance(identity, ModelIdentity)
                     else identity)
        else:
            if recorded is not None and not reindex:
                ws.check_model(identity)  # refused before any weights load
            model = ws.model  # a new or changed model: load (or fail) before the library records it
            ws.record_model(model)
        mirror = ws.vectors
        vectors = mirror.current(model.fingerprint)
        generation = mirror.generation
        options: dict[str, Any] = dict(batch_size=batch_size, workers=workers, progress=progress,
                                       on_commit=mirror.on_commit, vectors_lock=mirror.lock)
        if ray is None:
            indexer = Indexer(ws.db, vectors, model, token_cache=ws.token_cache,
                              thumbnails=ws.thumbnails if thumbnails else None, **options)
        else:
            # (thumbnails are made when first shown, ITM tokens when first reranked: both stay here)
            indexer = RayIndexer(ws.db, vectors, model, spec=ws.model_spec, quantize=ws.quantize,
                                 device=ws.device, ray=ray, **options)
        try:
            return indexer.run(roots, reindex_all=reindex, allow_empty=allow_empty, retry_failed=retry_failed)
        finally:
            if mirror.generation < 0 or vectors.needs_rebuild():
                mirror.rebuild(model.fingerprint)
            elif mirror.generation != generation or not self._vector_file_current():
                # (also a file a killed run left behind, which searches since caught up from in memory)
                mirror.save(vectors, model.fingerprint)

    def _vector_file_current(self) -> bool:
        header = VectorIndex.read_header(self.ws.vectors.path)
        return header is not None and header.generation == self.ws.vectors.generation


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

        from ..models.checkpoint import decode_workers, select_device

        try:
            device = select_device(self._device)
        except ModelLoadError:
            device = torch.device("cpu")  # the load says why, if an image ever needs the model
        return decode_workers(device)
