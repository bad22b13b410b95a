"""What every concern of one library shares: its folder, database, vector index, thumbnails and
token cache, and its retrieval model, loaded lazily and checked against what the library recorded.

:class:`~blipsearch.library.Library` makes one :class:`Workspace` and hands it to the
indexing run, the searcher, the texts, the captions and the status report.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import URL

from .ann.mirror import VectorMirror
from .errors import LibraryError, ModelMismatchError, SettingsError
from .models.hub import BUILTIN_PREFIX
from .models.loading import ModelIdentity
from .options import DEFAULT_MODEL, open_settings
from .rerank.cache import TokenCache
from .store.database import Database
from .store.location import DB_FILE, default_location, library_location
from .store.photos import Photos
from .store.thumbnails import ThumbnailStore
from .text import checked

# torch and transformers are imported when a model is first needed, so that
# commands that need none (status, a re-index of unchanged folders) start fast.
if TYPE_CHECKING:
    from .models.base import RetrievalModel
    from .models.checkpoint import ItmToken

VECTORS_FILE = "vectors.faiss"
THUMBNAILS_DIR = "thumbnails"
MAX_TOKEN_CACHE_GB = 10**9


def normalize_spec(spec: str) -> str:
    """Local model folders are recorded by absolute path; hub ids and built-ins as given."""
    if spec.startswith(BUILTIN_PREFIX):
        return spec
    local = Path(spec).expanduser()
    return str(local.resolve()) if local.is_dir() else spec


class Workspace:
    """The parts of the library at ``location`` (see :class:`~blipsearch.library.Library` for the
    arguments), made or opened; models load on first use."""

    def __init__(
        self,
        location: str | os.PathLike[str] | None,
        *,
        db_url: str | None,
        model: str | None,
        device: str,
        itm_token: ItmToken,
        caption_model: str | None,
        vqa_model: str | None,
        quantize: str | None,
        token_cache_gb: float,
        create: bool,
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
        self.photos = Photos(self.db, self.thumbnails)
        self.loaded_model: RetrievalModel | None = None
        self._text_query: tuple[str, Any] | None = None  # (fingerprint, TextQueryEncoder or None)
        # A library may serve several threads (the web server): each model loads once.
        self.load_lock = threading.Lock()

    # -- models -------------------------------------------------------------------------------
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
        if self.loaded_model is None:
            from .models.retrieval import load_retrieval_model

            with self.load_lock:
                if self.loaded_model is None:
                    self.loaded_model = load_retrieval_model(self.model_spec, self.device, self.itm_token,
                                                             quantize=self.quantize)
        return self.loaded_model

    def companion(self, requested: str | None, default: str) -> str:
        """Caption and VQA models default to the retrieval model's built-in family, if it is one."""
        if requested:
            return requested
        spec = self.model_spec
        return spec if spec.startswith(BUILTIN_PREFIX) else default

    def embed_query(self, model: RetrievalModel | ModelIdentity, text: str) -> np.ndarray:
        """A query text's ITC vector: from the loaded model, else without torch (:mod:`blipsearch.models.textquery`)."""
        if self.loaded_model is not None:
            self._text_query = None  # the model does it now; its copy of the weights is enough
            return self.loaded_model.embed_texts([text])
        with self.load_lock:
            if self._text_query is None or self._text_query[0] != model.fingerprint:
                from .models.textquery import TextQueryEncoder, Unsupported

                assert isinstance(model, ModelIdentity)
                try:
                    self._text_query = (model.fingerprint, TextQueryEncoder(model.path))
                except Unsupported:
                    self._text_query = (model.fingerprint, None)
            encoder = self._text_query[1]
        return encoder.embed_texts([text]) if encoder is not None else self.model.embed_texts([text])

    # -- the model the library records --------------------------------------------------------------
    def record_model(self, model: RetrievalModel) -> None:
        self.db.set_model(normalize_spec(model.spec), model.fingerprint, model.dim, model.family, model.queries)

    def check_model(self, model: RetrievalModel | ModelIdentity) -> None:
        record = self.db.library()
        if record.model_fingerprint is not None and record.model_fingerprint != model.fingerprint:
            asked = normalize_spec(model.spec)
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

    def searchable(self, load: bool = True) -> RetrievalModel | ModelIdentity:
        """The model to search with. Unless ``load``, and while no model is loaded, only its identity
        (fingerprint, vector size, image settings), read from its files: enough to search by vectors."""
        if self.db.library().model_fingerprint is None:
            raise LibraryError(f"The library at {self.location} is empty: run {self.hint('blipsearch index PATH')} "
                               "first.")
        model = (self.model if load or self.loaded_model is not None
                 else ModelIdentity.of(self.model_spec, self.quantize))
        self.check_model(model)
        # A loaded index of images is caught up by the search itself, under the vectors lock.
        if not self.vectors.loaded(model.fingerprint) and len(self.vectors.current(model.fingerprint)) == 0:
            raise LibraryError(f"The library at {self.location} has no images yet: run "
                               f"{self.hint('blipsearch index PATH')}.")
        return model

    def texts_model(self) -> RetrievalModel:
        """The library's model, recorded now if the library has none yet."""
        model = self.model
        if self.db.library().model_fingerprint is None:
            self.record_model(model)
        self.check_model(model)
        return model

    # -- the library's files --------------------------------------------------------------------------
    def hint(self, command: str) -> str:
        """A command to suggest, naming this library unless it is the default one."""
        if self.location != default_location().absolute():
            command += f" --library {self.location}"
        return f"`{command}`"

    def close(self) -> None:
        self.db.dispose()

    def discard_if_unused(self) -> bool:
        """Remove the library files this object made, if nothing was ever stored in them; returns
        whether it did. Closes the library."""
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
