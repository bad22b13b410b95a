"""Incremental indexing: walk, compare with the database, embed what changed, commit in batches.

How each file found by the walk is treated:

- same path, same size and mtime, vector of the library's model: unchanged, not read;
- same path, different size or mtime: read and hashed; same content: unchanged;
  new content: re-embedded (updated);
- new path whose content matches a stored image that disappeared: moved, keeps
  its row (id and vector);
- new path whose content is already embedded elsewhere: added with a copy of
  that vector, no model call;
- anything else: decoded and embedded (added or updated).

Stored images under the walked roots that are gone are removed at the end,
except below folders that could not be listed this time. Each batch is one
transaction: an interrupted run keeps every finished batch, and the next run
resumes from there.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy import delete, select

from ..ann.index import VectorIndex
from ..errors import ImageError, InputPathError
from ..images.decode import (
    DecodedImage,
    ImageSpec,
    OnImage,
    decode,
    hash_bytes,
    read_file,
)
from ..metadata.read import PhotoMetadata, sidecar_signature
from ..progress import ProgressFactory, no_progress
from ..rerank.cache import TokenCache
from ..similarity import pooled_one
from ..store import cascade
from ..store.database import Database, StoredRow, utcnow, vector_to_bytes
from ..store.schema import FailureRow, ImageRow
from ..store.thumbnails import ThumbnailStore
from . import metadata
from .walk import FileEntry, WalkResult, walk

if TYPE_CHECKING:
    import torch


@dataclass
class IndexReport:
    """What one run did. ``failed`` counts files that could not be indexed (``errors`` says why, for
    those read this run); ``skipped`` the files in the folders that were not looked at, their names
    not being of an image format (``skipped_paths``)."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0  # files in the folders whose names are not of an image format, not read
    failed_before: int = 0  # of ``failed``: files that failed before, unchanged since, not read again
    embedded: int = 0
    refreshed: int = 0  # unchanged files whose metadata was read again (see blipsearch.index.metadata)
    interrupted: bool = False
    errors: list[tuple[bytes, str]] = field(default_factory=list)
    skipped_paths: list[bytes] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Each file in one of these (``refreshed`` files are among the ``unchanged``, and said apart)."""
        keys = ("added", "updated", "moved", "removed", "unchanged", "failed", "skipped")
        return {k: getattr(self, k) for k in keys}


@dataclass
class _Job:
    entry: FileEntry
    stored: StoredRow | None  # the row at this path, if any
    data: DecodedImage | None = None
    error: str | None = None
    unreadable: bool = False  # the file could not be read (permissions, I/O), as opposed to decoded
    retry: bool = False  # its failure may go with other settings or another run: not remembered
    vector: np.ndarray | None = None  # embedded already, elsewhere (another engine's workers)
    meta: PhotoMetadata | None = None  # read with its bytes


class Embedder(Protocol):
    fingerprint: str
    image_spec: ImageSpec

    @property
    def batch_size(self) -> int: ...  # the batch it runs fastest with

    @property
    def decode_workers(self) -> int: ...  # decode threads that keep it fed

    def image_tokens(self, pixels: np.ndarray) -> torch.Tensor: ...
    def project_images(self, tokens: torch.Tensor) -> np.ndarray: ...


def prepare(job: _Job, spec: ImageSpec, known_hashes: set[str] | frozenset[str],
            on_image: OnImage | None = None, sidecars: dict[bytes, tuple[int, int]] | None = None) -> _Job:
    """Read and hash a job's file, decode it unless its content is in ``known_hashes`` (embedded
    already: its vector is copied), and read its metadata (``sidecars``: those the walk saw); any
    failure is the job's ``error``, never raised."""
    try:
        try:
            data = read_file(job.entry.path)
        except ImageError:
            job.unreadable = True
            raise
        content_hash = hash_bytes(data)
        if content_hash in known_hashes:
            job.data = DecodedImage(content_hash=content_hash, size=len(data))
        else:
            job.data = decode(data, spec, on_image)
        job.meta = metadata.safely_read(job.entry.path, data, job.data.exif, sidecars)
    except ImageError as exc:
        job.error = str(exc)
        job.retry = job.unreadable or exc.by_settings
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
        job.error = f"unexpected error while reading: {type(exc).__name__}: {exc}"
        job.retry = True
    return job


class Indexer:
    """One index run over a set of roots; see the module docstring."""

    def __init__(
        self,
        db: Database,
        vectors: VectorIndex,
        model: Embedder,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        progress: ProgressFactory = no_progress,
        on_commit: Callable[[int], None] | None = None,
        token_cache: TokenCache | None = None,
        thumbnails: ThumbnailStore | None = None,
        vectors_lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.db = db
        self.vectors = vectors
        self.model = model
        self.fp = model.fingerprint
        self._batch_size = None if batch_size is None else max(1, batch_size)
        self.workers = None if workers is None else max(1, workers)
        self.progress = progress
        self.on_commit = on_commit or (lambda generation: None)
        self.report = IndexReport()
        self.token_cache = token_cache
        self.thumbnails = thumbnails
        # Held while the in-memory index changes: searches may run beside the run, in other threads.
        self.vectors_lock = vectors_lock or nullcontext()
        self._sidecars: dict[bytes, tuple[int, int]] = {}  # the .xmp files the walk saw

    @property
    def batch_size(self) -> int:
        """As given, else the model's own: asked (which may load it) once an image needs embedding."""
        if self._batch_size is None:
            self._batch_size = self.model.batch_size
        return self._batch_size

    def _batch_size_so_far(self) -> int:
        # Before anything needed embedding: moves, touched files and failures batch like the CPU default.
        return self._batch_size or 2

    # -- planning ---------------------------------------------------------------------
    def run(self, roots: list[bytes], *, reindex_all: bool = False, allow_empty: bool = False,
            retry_failed: bool = False) -> IndexReport:
        stored = self.db.rows_under(roots)
        found = walk(roots, stored)
        self.report.skipped, self.report.skipped_paths = len(found.skipped), found.skipped
        seen = {f.path: f for f in found.files}
        if not allow_empty:
            _refuse_emptied_roots(roots, found, stored)
        # Files that failed to decode, unchanged since: failing again is all they would do.
        failed = {} if retry_failed else self.db.failed_files_under(roots)

        self._sidecars = found.sidecars
        jobs: list[_Job] = []
        stale: list[tuple[StoredRow, FileEntry]] = []
        for entry in found.files:
            row = stored.get(entry.path)
            if row is not None and row.model == self.fp and (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns):
                self.report.unchanged += 1
                if metadata.out_of_date(row, sidecar_signature(entry.path, found.sidecars)):
                    stale.append((row, entry))
            elif row is None and failed.get(entry.path) == (entry.size, entry.mtime_ns):
                self.report.failed += 1
                self.report.failed_before += 1
            else:
                jobs.append(_Job(entry, row))
        if reindex_all:
            jobs.extend(self._outside_roots_with_other_model(stored))

        error_paths = {p for p, _ in found.errors}
        missing = {
            path: row
            for path, row in stored.items()
            if path not in seen and path not in error_paths and not _below_any(path, found.unreadable_dirs)
        }
        # Only a vector of this library's model may follow its file to a new path.
        self._missing_by_hash: dict[str, list[StoredRow]] = {}
        self._claimed: set[int] = set()
        for row in missing.values():
            if row.model == self.fp:
                self._missing_by_hash.setdefault(row.content_hash, []).append(row)
        self._known_hashes: set[str] = set()
        if jobs:  # a no-op run never reads every hash
            with self.db.reader() as session:
                self._known_hashes = set(
                    session.scalars(select(ImageRow.content_hash).where(ImageRow.model == self.fp)).all()
                )

        try:
            self._process(jobs)
            self.report.refreshed = metadata.refresh(self.db, stale, workers=self.workers or 2,
                                                     listing=found.sidecars, progress=self.progress)
            self._record_walk_errors(found.errors)
            self._remove_missing(missing, roots, seen, error_paths, found.unreadable_dirs)
        except KeyboardInterrupt:
            self.report.interrupted = True
            raise
        return self.report

    def _outside_roots_with_other_model(self, under_roots: dict[bytes, StoredRow]) -> Iterator[_Job]:
        for path, row in self.db.rows_not_of_model(self.fp).items():
            if path in under_roots:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # Not walked this run, so not removed either.
            yield _Job(FileEntry(path, st.st_size, st.st_mtime_ns), row)

    # -- the pipeline -------------------------------------------------------------------
    def _prepare(self, job: _Job, *, decode_known: bool = False) -> _Job:
        """Read, hash, and decode only when the content is new (runs in worker threads)."""
        return prepare(job, self.model.image_spec, set() if decode_known else self._known_hashes,
                       self.thumbnails.put_decoded if self.thumbnails is not None else None, self._sidecars)

    def _prepared(self, jobs: list[_Job]) -> Iterator[_Job]:
        """Jobs in order, prepared by a thread pool with bounded read-ahead."""
        workers = self.workers or self.model.decode_workers
        with ThreadPoolExecutor(workers, thread_name_prefix="blipsearch-decode") as pool:
            pending: deque[Future[_Job]] = deque()
            todo = iter(jobs)
            try:
                for job in todo:
                    pending.append(pool.submit(self._prepare, job))
                    if len(pending) >= max(2 * self._batch_size_so_far(), 2 * workers):
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def _process(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        bar = self.progress(len(jobs), "Indexing")
        try:
            batch: list[_Job] = []
            to_embed = 0
            for job in self._prepared(jobs):
                batch.append(job)
                if job.vector is not None or (job.data is not None and job.data.pixels is not None):
                    to_embed += 1
                # A batch closes on model-sized work, or on many cheap items.
                size = self.batch_size if to_embed else self._batch_size_so_far()
                if to_embed >= size or len(batch) >= 8 * size:
                    self._commit(batch)
                    bar.update(len(batch))
                    batch, to_embed = [], 0
            if batch:
                self._commit(batch)
                bar.update(len(batch))
        finally:
            bar.close()

    # -- writing -----------------------------------------------------------------------------
    def _decode_orphans(self, batch: list[_Job]) -> None:
        """Decode the jobs whose content was embedded when the run was planned but no longer is:
        an earlier batch changed the only file that had it (two files swapped, a backup copy
        made before the original was edited). Their vector can't be copied; they are embedded."""
        known = [j for j in batch if j.data is not None and j.data.pixels is None]
        if not known:
            return
        with self.db.reader() as session:
            embedded = self.db.embedded_by_hash(session, {j.data.content_hash for j in known}, self.fp)  # type: ignore[union-attr]
        for job in known:
            if job.data.content_hash not in embedded:  # type: ignore[union-attr]
                self._prepare(job, decode_known=True)

    def _commit(self, batch: list[_Job]) -> None:
        self._decode_orphans(batch)
        embed = [j for j in batch if j.data is not None and j.data.pixels is not None]
        vectors = np.zeros((0, 0), np.float32)
        if embed:
            tokens = self.model.image_tokens(np.stack([j.data.pixels for j in embed]))  # type: ignore[union-attr,misc]
            vectors = self.model.project_images(tokens)
            if self.token_cache is not None:
                # Free for reranking later: the encoder ran anyway.
                for job, tok in zip(embed, tokens):
                    self.token_cache.put(job.data.content_hash, self.fp, tok)  # type: ignore[union-attr]
        new_vectors = {id(j): v for j, v in zip(embed, vectors)}
        embedded = [j for j in batch if j.vector is not None]
        new_vectors.update((id(j), j.vector) for j in embedded)
        embed = embed + embedded
        report = IndexReport()
        faiss_add: list[tuple[int, np.ndarray]] = []
        faiss_remove: list[int] = []
        now = utcnow()
        with self.db.transaction() as session:
            self.db.bump_generation(session, by=0)  # the write lock first
            copies = self.db.embedded_by_hash(
                session,
                {j.data.content_hash for j in batch if j.data is not None and id(j) not in new_vectors},
                self.fp,
            )
            for job in batch:
                path = job.entry.path
                if job.error is not None or job.data is None:
                    # A file that could not be decoded is tried again once it changed; one that could not
                    # be read (its permissions may change without its size or time), or that failed for a
                    # setting (the size limit), next run.
                    self._fail(session, job, job.error or "unknown error", now, remember=not job.retry)
                    report.failed += 1
                    # A file that can't be read keeps its image, like a folder that can't be listed;
                    # one whose content turned bad leaves the index.
                    if job.stored is not None and not job.unreadable:
                        session.execute(delete(ImageRow).where(ImageRow.id == job.stored.id))
                        cascade.forget_keywords(session, [job.stored.id])
                        faiss_remove.append(job.stored.id)
                    continue
                data = job.data
                row = job.stored
                if (
                    row is not None
                    and row.model == self.fp
                    and row.content_hash == data.content_hash
                ):
                    # Touched but not changed: record the new stat (and the metadata read), keep the vector.
                    session.execute(
                        ImageRow.__table__.update()
                        .where(ImageRow.id == row.id)
                        .values(size=job.entry.size, mtime_ns=job.entry.mtime_ns, **_columns(job))
                    )
                    metadata.keep_keywords(session, row.id, job.meta, new=False)
                    report.unchanged += 1
                    self._clear_failure(session, path)
                    continue
                moved_from = self._claim_missing(data.content_hash) if row is None else None
                if moved_from is not None:
                    session.execute(
                        ImageRow.__table__.update()
                        .where(ImageRow.id == moved_from.id)
                        .values(path=path, size=job.entry.size, mtime_ns=job.entry.mtime_ns, **_columns(job))
                    )
                    metadata.keep_keywords(session, moved_from.id, job.meta, new=False)
                    report.moved += 1
                    self._clear_failure(session, path)
                    continue
                values = dict(
                    path=path,
                    size=job.entry.size,
                    mtime_ns=job.entry.mtime_ns,
                    content_hash=data.content_hash,
                    model=self.fp,
                    indexed_at=now,
                    **_columns(job),
                )
                if id(job) in new_vectors:
                    vector = new_vectors[id(job)]
                    values.update(vector=vector_to_bytes(vector), width=data.width, height=data.height)
                elif (twin := copies.get(data.content_hash)) is not None:
                    # Same bytes as an image already embedded: reuse its vector and metadata.
                    vector = np.frombuffer(twin["vector"], np.float32)
                    values.update({k: v for k, v in twin.items() if k != "content_hash"})
                else:
                    # Its only twin vanished during the run: it is decoded next run.
                    self._fail(session, job, "content changed while indexing; run again", now, remember=False)
                    report.failed += 1
                    continue
                if row is None:
                    image = ImageRow(**values)
                    session.add(image)
                    session.flush()
                    image_id = image.id
                    metadata.keep_keywords(session, image_id, job.meta, new=True)
                    report.added += 1
                else:
                    session.execute(ImageRow.__table__.update().where(ImageRow.id == row.id).values(**values))
                    image_id = row.id
                    metadata.keep_keywords(session, image_id, job.meta, new=False)
                    report.updated += 1
                faiss_add.append((image_id, pooled_one(vector, self.vectors.dim)))
                self._clear_failure(session, path)
            # Touched files and failures of files never indexed change no image row that a vector
            # file or the full-text index mirrors: readers keep theirs.
            changed = faiss_add or faiss_remove or report.moved
            generation = self.db.bump_generation(session) if changed else None
            if faiss_add:
                self.db.mark_generation(session, [i for i, _ in faiss_add], generation)  # type: ignore[arg-type]
        # Committed: now mirror it in the in-memory vector index.
        with self.vectors_lock:
            self.vectors.remove(faiss_remove)
            if faiss_add:
                ids = np.array([i for i, _ in faiss_add], np.int64)
                self.vectors.replace(ids, np.stack([v for _, v in faiss_add]).astype(np.float32))
        self._known_hashes.update(j.data.content_hash for j in embed if j.data is not None)
        for key in ("added", "updated", "moved", "unchanged", "failed"):
            setattr(self.report, key, getattr(self.report, key) + getattr(report, key))
        self.report.embedded += len(embed)
        self.report.errors.extend((j.entry.path, j.error) for j in batch if j.error)
        if generation is not None:
            self.on_commit(generation)

    def _claim_missing(self, content_hash: str) -> StoredRow | None:
        rows = self._missing_by_hash.get(content_hash)
        if not rows:
            return None
        row = rows.pop()
        if not rows:
            del self._missing_by_hash[content_hash]
        self._claimed.add(row.id)
        return row

    @staticmethod
    def _fail(session, job: _Job, reason: str, now, remember: bool) -> None:  # type: ignore[no-untyped-def]
        """Record a failure; ``remember`` keeps the file's size and time, so that an unchanged file
        is not read again (see :meth:`run`)."""
        size, mtime_ns = (job.entry.size, job.entry.mtime_ns) if remember else (None, None)
        session.merge(FailureRow(path=job.entry.path, reason=reason, size=size, mtime_ns=mtime_ns, failed_at=now))

    @staticmethod
    def _clear_failure(session, path: bytes) -> None:  # type: ignore[no-untyped-def]
        session.execute(delete(FailureRow).where(FailureRow.path == path))

    def _record_walk_errors(self, errors: list[tuple[bytes, str]]) -> None:
        if not errors:
            return
        now = utcnow()
        with self.db.transaction() as session:
            for path, reason in errors:
                session.merge(FailureRow(path=path, reason=reason, size=None, mtime_ns=None, failed_at=now))
        self.report.failed += len(errors)
        self.report.errors.extend(errors)

    def _remove_missing(
        self,
        missing: dict[bytes, StoredRow],
        roots: list[bytes],
        seen: dict[bytes, FileEntry],
        error_paths: set[bytes],
        unreadable: list[bytes],
    ) -> None:
        gone = [row.id for row in missing.values() if row.id not in self._claimed]
        # Failures recorded earlier for files that are no longer there.
        stale_failures = [
            f.path
            for f in self.db.failures()
            if _below_any(f.path, roots, inclusive=True)
            and f.path not in seen
            and f.path not in error_paths
            and not _below_any(f.path, unreadable)
        ]
        if not gone and not stale_failures:
            return
        with self.db.transaction() as session:
            generation = self.db.bump_generation(session, by=1 if gone else 0)
            for start in range(0, len(gone), 500):
                session.execute(delete(ImageRow).where(ImageRow.id.in_(gone[start : start + 500])))
            cascade.forget_keywords(session, gone)
            for start in range(0, len(stale_failures), 500):
                session.execute(delete(FailureRow).where(FailureRow.path.in_(stale_failures[start : start + 500])))
        with self.vectors_lock:
            self.vectors.remove(gone)
        self.report.removed += len(gone)
        if gone:
            self.on_commit(generation)


def _refuse_emptied_roots(roots: list[bytes], found: WalkResult, stored: dict[bytes, StoredRow]) -> None:
    """A folder with indexed images and now no image at all is most likely an unmounted disk's
    mount point (empty, not missing): deleting its images would cost a full re-embedding."""
    walked = [f.path for f in found.files] + [path for path, _ in found.errors]
    for root in roots:
        if not os.path.isdir(root) or any(_below_any(p, [root]) for p in walked):
            continue
        indexed = sum(_below_any(p, [root]) for p in stored)
        if indexed:
            raise InputPathError(
                f"{os.fsdecode(root)} holds no images now, but {indexed} indexed images were in it: is a disk "
                "unmounted? Nothing was changed. If they were deleted on purpose, run again with --allow-empty."
            )


def _columns(job: _Job) -> dict[str, object]:
    """The metadata columns of a job's image (none when its metadata was not read)."""
    return job.meta.columns() if job.meta is not None else {}


def _below_any(path: bytes, folders: list[bytes], inclusive: bool = False) -> bool:
    for folder in folders:
        if inclusive and path == folder:
            return True
        if path.startswith(folder.rstrip(b"/") + b"/"):
            return True
    return False
