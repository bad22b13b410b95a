"""Database access: engine set-up, the library row, and the queries the engine needs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    URL,
    Engine,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .. import failpoints
from ..errors import LibraryError, SchemaError
from ..filters import Filters
from ..similarity import pooled
from . import cascade, fulltext, revisions
from .migrations import LEGACY_SCHEMA, upgrade
from .schema import (
    SCHEMA_VERSION,
    Base,
    CaptionRow,
    FailureRow,
    ImageRow,
    LibraryRow,
    TagRow,
    TextRow,
)
from .where import filtered_ids, kept_tags, path_range

VECTOR_DTYPE = np.float32
# The PostgreSQL advisory lock an index run holds (any 64-bit number; this one spells "blipsrch").
WRITER_LOCK_KEY = 0x626C69707372_6368


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def vector_to_bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()


def bytes_to_query_vectors(blobs: list[bytes], dim: int) -> npt.NDArray[np.float32]:
    """Stored image vectors as ``(n, queries, dim)`` (queries is 1 for BLIP, BLIP-2's query count)."""
    if not blobs:
        return np.zeros((0, 1, dim), VECTOR_DTYPE)
    return np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(blobs), -1, dim).copy()


def bytes_to_vectors(blobs: list[bytes], dim: int) -> npt.NDArray[np.float32]:
    """Stored vectors as ``(n, dim)``: an image's own vector, or its pooled one where it has several
    (see :mod:`blipsearch.similarity`); what the vector index holds."""
    if not blobs:
        return np.zeros((0, dim), VECTOR_DTYPE)
    return pooled(bytes_to_query_vectors(blobs, dim))


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL lets a search read while an index run writes; NORMAL sync is durable
    # for committed batches across process crashes (kill -9) in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@dataclass(frozen=True)
class StoredRow:
    id: int
    path: bytes
    size: int
    mtime_ns: int
    content_hash: str
    model: str | None
    metadata_version: int | None = None  # of the metadata reading that filled the row (None: before it)
    sidecar: str | None = None  # the sidecar read then (see blipsearch.metadata.read)


class ImageRef(NamedTuple):
    id: int
    path: bytes
    content_hash: str
    size: int
    mtime_ns: int


class Database:
    """Thin wrapper over a SQLAlchemy engine holding one library."""

    def __init__(self, url: str | URL) -> None:
        self.url = url
        try:
            kwargs: dict = {}
            if (url.drivername if isinstance(url, URL) else url).startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 30}
            self.engine: Engine = create_engine(url, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise LibraryError(f"Can't use database URL {url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Whether the full-text index exists and is kept up at every commit (set by _init_schema).
        self.fulltext = False
        self._init_schema()

    def _init_schema(self) -> None:
        """Create a new library's tables at the newest schema, or bring an older one up to it: the
        numbered steps of :mod:`.migrations` up to schema 5, then the Alembic revisions
        (:mod:`.revisions`), all in one transaction, a SQLite file backed up first."""
        version: int | None = None
        outdated = False
        try:
            tables = set(inspect(self.engine).get_table_names())
            revision = None
            if "library" in tables:
                with self._sessions() as session:
                    version = session.scalar(select(LibraryRow.schema_version).where(LibraryRow.id == 1))
                if "alembic_version" in tables:
                    with self.engine.connect() as conn:
                        revision = revisions.current(conn)
                if (version is not None and version > SCHEMA_VERSION) or (
                        revision not in (None, revisions.HEAD) and not revisions.known(revision)):
                    raise SchemaError(
                        f"This library was written by a newer blipsearch (schema {version}, revision {revision}; "
                        f"this one knows schema {SCHEMA_VERSION}, revision {revisions.HEAD}): upgrade blipsearch."
                    )
            outdated = version is not None and (version < SCHEMA_VERSION or revision != revisions.HEAD)
            self.fulltext = not outdated and "text_index" in tables
            if outdated:
                self._backup(version)
            Base.metadata.create_all(self.engine)
            with self.transaction() as session:
                # (only the id: an older schema's row lacks columns until upgraded below)
                if session.scalar(select(LibraryRow.id).where(LibraryRow.id == 1)) is None:
                    session.add(
                        LibraryRow(id=1, schema_version=SCHEMA_VERSION, generation=0, created_at=utcnow())
                    )
                    session.flush()
                    revisions.stamp(session.connection(), revisions.HEAD)
                    self.fulltext = fulltext.install(session.connection())
                    cascade.install(session.connection())
                elif outdated:
                    self.bump_generation(session, by=0)  # the write lock, then look again
                    conn = session.connection()
                    current = int(session.scalar(select(LibraryRow.schema_version).where(LibraryRow.id == 1)) or 0)
                    if current < LEGACY_SCHEMA:
                        upgrade(conn, current, LEGACY_SCHEMA)
                        session.execute(update(LibraryRow).where(LibraryRow.id == 1)
                                        .values(schema_version=LEGACY_SCHEMA))
                    if revisions.current(conn) is None:
                        revisions.stamp(conn, revisions.BASELINE)
                    if revisions.current(conn) != revisions.HEAD:
                        revisions.upgrade(conn)
                    self.fulltext = "text_index" in set(inspect(conn).get_table_names())
        except OperationalError as exc:
            if outdated or "readonly" in str(exc.orig).lower():
                raise SchemaError(self._cannot_upgrade(version, exc.orig)) from None
            raise LibraryError(f"Can't open the database {self.display_url}: {exc.orig}") from None

    def _cannot_upgrade(self, version: int | None, reason: object) -> str:
        return (f"This library's database is at schema {version} and this blipsearch uses schema "
                f"{SCHEMA_VERSION}, but it can't be upgraded here ({reason}). Run `blipsearch upgrade` on it "
                "(with --library or --db as for the other commands) as a user who can write to it; until "
                "then an older blipsearch still reads it.")

    def _backup(self, version: int | None) -> Path | None:
        """A copy of a SQLite library file before its schema changes (``library.db.schema-N.bak``)."""
        if self.engine.dialect.name != "sqlite":
            return None
        database = self.engine.url.database
        if not database or database == ":memory:" or not os.path.exists(database):
            return None
        import sqlite3

        target = Path(f"{database}.schema-{version}.bak")
        if target.exists():
            target = target.with_name(f"{target.name}.{utcnow():%Y%m%dT%H%M%S}")
        try:
            with sqlite3.connect(database) as source, sqlite3.connect(target) as copy:
                source.backup(copy)
        except (sqlite3.Error, OSError) as exc:
            target.unlink(missing_ok=True)
            raise SchemaError(self._cannot_upgrade(version, f"no backup could be written: {exc}")) from None
        return target

    @property
    def display_url(self) -> str:
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database:  # a file name need not be UTF-8
            return "sqlite:///" + url.database.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits together or not at all, the full-text rows of the images it
        changed included."""
        with self._sessions() as session:
            with session.begin():
                yield session
                if self.fulltext:
                    fulltext.apply_pending(session)
                failpoints.check("db.commit")
            failpoints.check("db.committed")

    @contextmanager
    def reader(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    # -- one writer -----------------------------------------------------------
    @contextmanager
    def writer_lock(self) -> Iterator[bool]:
        """Held by an index run for its whole length, by whichever library folder opened this database:
        on PostgreSQL a session-level advisory lock, on a SQLite file a lock file beside it. Yields
        False when another process holds it (the caller refuses to start), True once taken."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                taken = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": WRITER_LOCK_KEY}).scalar())
                conn.commit()
                try:
                    yield taken
                finally:
                    if taken:
                        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": WRITER_LOCK_KEY})
                        conn.commit()
            return
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            yield True  # nothing another process could open (other databases: the library folder's lock)
            return
        from filelock import FileLock, Timeout

        lock = FileLock(os.fsencode(database).decode("utf-8", "surrogateescape") + ".writer.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    # -- the library row ----------------------------------------------------
    def library(self) -> LibraryRow:
        with self.reader() as session:
            row = session.get(LibraryRow, 1)
            assert row is not None
            return row

    @staticmethod
    def bump_generation(session: Session, by: int = 1) -> int:
        """Count one more change of the vectors; returns the generation this transaction makes.

        With ``by=0`` as the first statement of a write transaction: it takes SQLite's
        write lock up front, so two writers queue instead of deadlocking on lock upgrade.
        """
        session.execute(update(LibraryRow).where(LibraryRow.id == 1).values(generation=LibraryRow.generation + by))
        return int(session.scalar(select(LibraryRow.generation).where(LibraryRow.id == 1)) or 0)

    def set_model(self, spec: str, fp: str, dim: int, family: str = "blip", queries: int = 1) -> None:
        with self.transaction() as session:
            self.bump_generation(session)
            session.execute(
                update(LibraryRow).where(LibraryRow.id == 1).values(model=spec, model_fingerprint=fp, dim=dim,
                                                                    family=family, queries=queries)
            )

    def set_recall_target(self, target: float | None) -> None:
        with self.transaction() as session:
            session.execute(update(LibraryRow).where(LibraryRow.id == 1).values(recall_target=target))

    # -- images ----------------------------------------------------------------
    def rows_under(self, roots: list[bytes]) -> dict[bytes, StoredRow]:
        """Stored images at or below each root (a file or a directory)."""
        found: dict[bytes, StoredRow] = {}
        # One query per folder and chunked IN lists for files: thousands of
        # file roots (an evaluation set) must not build one giant expression.
        files = [r for r in roots if not os.path.isdir(r)]
        for root in roots:
            if os.path.isdir(root):
                lo, hi = path_range(root)
                found.update(self._rows((ImageRow.path >= lo) & (ImageRow.path < hi)))
        for start in range(0, len(files), 500):
            found.update(self._rows(ImageRow.path.in_(files[start : start + 500])))
        return found

    def rows_not_of_model(self, fp: str) -> dict[bytes, StoredRow]:
        return self._rows(or_(ImageRow.model.is_(None), ImageRow.model != fp))

    def _rows(self, where) -> dict[bytes, StoredRow]:  # type: ignore[no-untyped-def]
        cols = (ImageRow.id, ImageRow.path, ImageRow.size, ImageRow.mtime_ns, ImageRow.content_hash, ImageRow.model,
                ImageRow.metadata_version, ImageRow.sidecar)
        with self.reader() as session:
            return {r.path: StoredRow(*r) for r in session.execute(select(*cols).where(where))}

    @staticmethod
    def embedded_by_hash(session: Session, hashes: set[str], fp: str) -> dict[str, dict]:
        """For each content hash already embedded by model ``fp``: its vector and pixel size (the rest of
        the metadata is read from each file: its sidecar and file time are its own)."""
        found: dict[str, dict] = {}
        hashes_list = list(hashes)
        cols = (ImageRow.content_hash, ImageRow.vector, ImageRow.width, ImageRow.height)
        for start in range(0, len(hashes_list), 500):
            chunk = hashes_list[start : start + 500]
            stmt = select(*cols).where(
                ImageRow.content_hash.in_(chunk), ImageRow.model == fp, ImageRow.vector.is_not(None)
            )
            for row in session.execute(stmt):
                found.setdefault(row.content_hash, row._asdict())
        return found

    def iter_vectors(self, fp: str, chunk: int = 20000) -> Iterator[tuple[npt.NDArray[np.int64], list[bytes]]]:
        """All searchable (id, vector) pairs of model ``fp``, in chunks."""
        with self.reader() as session:
            stmt = (
                select(ImageRow.id, ImageRow.vector)
                .where(ImageRow.model == fp, ImageRow.vector.is_not(None))
                .order_by(ImageRow.id)
                .execution_options(yield_per=chunk)
            )
            for part in session.execute(stmt).partitions(chunk):
                yield np.fromiter((r[0] for r in part), np.int64, len(part)), [r[1] for r in part]

    def _vectors_where(self, key, keys: list, fp: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
        """{key: stored vector} of model ``fp`` for rows whose ``key`` column is in ``keys``."""
        found: dict = {}  # type: ignore[type-arg]
        with self.reader() as session:
            for start in range(0, len(keys), 500):
                stmt = select(key, ImageRow.vector).where(
                    key.in_(keys[start : start + 500]), ImageRow.model == fp, ImageRow.vector.is_not(None)
                )
                found.update((k, v) for k, v in session.execute(stmt))
        return found

    def vectors_for_paths(self, paths: list[bytes], fp: str) -> dict[bytes, bytes]:
        """Stored vectors of model ``fp`` for the given paths (those that have one)."""
        return self._vectors_where(ImageRow.path, paths, fp)

    def vectors_by_ids(self, ids: list[int], fp: str, dim: int, queries: bool = False) -> npt.NDArray[np.float32]:
        """Stored vectors of model ``fp`` for ``ids``, in that order (zeros where there is none): each
        image's pooled vector (n, dim), or with ``queries`` all of its vectors (n, queries, dim)."""
        found = self._vectors_where(ImageRow.id, ids, fp)
        zero = bytes(len(next(iter(found.values()))) if found else 4 * dim)
        blobs = [found.get(i, zero) for i in ids]
        return bytes_to_query_vectors(blobs, dim) if queries else bytes_to_vectors(blobs, dim)

    @staticmethod
    def mark_generation(session: Session, ids: list[int], generation: int) -> None:
        """Record that ``generation`` set these images' vectors (see :meth:`vectors_since`)."""
        for start in range(0, len(ids), 500):
            session.execute(update(ImageRow).where(ImageRow.id.in_(ids[start : start + 500]))
                            .values(generation=generation))

    def vectors_since(self, fp: str, generation: int) -> tuple[npt.NDArray[np.int64], list[bytes]]:
        """(ids, vectors) of model ``fp`` set by a transaction after ``generation``."""
        with self.reader() as session:
            rows = session.execute(select(ImageRow.id, ImageRow.vector).where(
                ImageRow.generation > generation, ImageRow.model == fp, ImageRow.vector.is_not(None))).all()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows)), [cast(bytes, r[1]) for r in rows]

    def vector_ids(self, fp: str) -> npt.NDArray[np.int64]:
        """Ids of every searchable image of model ``fp``, ascending."""
        with self.reader() as session:
            ids = session.scalars(select(ImageRow.id).where(ImageRow.model == fp, ImageRow.vector.is_not(None))
                                  .order_by(ImageRow.id)).all()
        return np.asarray(ids, np.int64)

    def filtered_ids(self, fp: str, filters: Filters) -> npt.NDArray[np.int64]:
        """Ids of the searchable images of model ``fp`` that pass ``filters`` (see :mod:`.where`)."""
        with self.reader() as session:
            return filtered_ids(session, fp, filters)

    def labels(self, fp: str, min_probability: float) -> list[tuple[str, int]]:
        """(tag label, number of images it is a tag of) of model ``fp``, most used first."""
        with self.reader() as session:
            stmt = (select(TagRow.label, func.count(func.distinct(TagRow.content_hash)).label("n"))
                    .where(TagRow.model == fp, kept_tags(min_probability)).group_by(TagRow.label)
                    .order_by(text("n DESC"), TagRow.label))
            return [(label, int(n)) for label, n in session.execute(stmt)]

    def tags_of(self, content_hash: str, fp: str) -> list[TagRow]:
        with self.reader() as session:
            return list(session.scalars(select(TagRow).where(TagRow.content_hash == content_hash, TagRow.model == fp)
                                        .order_by(TagRow.rank, TagRow.label)))

    def refs_by_id(self, ids: list[int]) -> dict[int, ImageRef]:
        """What results need of each image (path, content, file stat), without its vector and EXIF."""
        found: dict[int, ImageRef] = {}
        cols = (ImageRow.id, ImageRow.path, ImageRow.content_hash, ImageRow.size, ImageRow.mtime_ns)
        with self.reader() as session:
            for start in range(0, len(ids), 500):
                found.update((r[0], ImageRef(*r)) for r in
                             session.execute(select(*cols).where(ImageRow.id.in_(ids[start : start + 500]))))
        return found

    def capture_times(self, ids: list[int]) -> dict[int, datetime]:
        """{id: when the photo was taken}, or its file's modification time when that is unknown (as the
        date filters compare them)."""
        found: dict[int, datetime] = {}
        with self.reader() as session:
            for start in range(0, len(ids), 500):
                for i, taken, mtime_ns in session.execute(select(ImageRow.id, ImageRow.taken_at, ImageRow.mtime_ns)
                                                          .where(ImageRow.id.in_(ids[start : start + 500]))):
                    found[i] = taken if taken is not None else datetime.fromtimestamp(mtime_ns / 1e9)
        return found

    def images_by_id(self, ids: list[int]) -> dict[int, ImageRow]:
        with self.reader() as session:
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(ids))).all()
            return {row.id: row for row in rows}

    def image_by_path(self, path: bytes) -> ImageRow | None:
        with self.reader() as session:
            return session.scalar(select(ImageRow).where(ImageRow.path == path))

    def content_hashes(self) -> set[str]:
        with self.reader() as session:
            return set(session.scalars(select(ImageRow.content_hash).distinct()))

    def counts(self, fp: str | None) -> tuple[int, int, int]:
        """(images, searchable vectors of model ``fp``, failures)."""
        with self.reader() as session:
            images = session.scalar(select(func.count()).select_from(ImageRow)) or 0
            vectors = (
                session.scalar(
                    select(func.count()).where(ImageRow.model == fp, ImageRow.vector.is_not(None))
                )
                if fp
                else 0
            ) or 0
            failures = session.scalar(select(func.count()).select_from(FailureRow)) or 0
        return images, vectors, failures

    def failed_files_under(self, roots: list[bytes]) -> dict[bytes, tuple[int, int]]:
        """{path: (size, mtime)} of the recorded failures at or below ``roots`` that kept the file's stat."""
        where: list[Any] = [FailureRow.path.in_([r for r in roots if not os.path.isdir(r)])]
        where += [(FailureRow.path >= lo) & (FailureRow.path < hi)
                  for lo, hi in (path_range(r) for r in roots if os.path.isdir(r))]
        with self.reader() as session:
            rows = session.execute(select(FailureRow.path, FailureRow.size, FailureRow.mtime_ns).where(
                or_(*where), FailureRow.size.is_not(None), FailureRow.mtime_ns.is_not(None)))
            return {path: (int(size or 0), int(mtime or 0)) for path, size, mtime in rows}

    def unused(self) -> bool:
        """Whether nothing was ever stored: no image, failure, caption, text or tag."""
        with self.reader() as session:
            return not any(session.scalar(select(table).limit(1)) is not None
                           for table in (ImageRow, FailureRow, CaptionRow, TextRow, TagRow))

    def failures(self) -> list[FailureRow]:
        with self.reader() as session:
            return list(session.scalars(select(FailureRow).order_by(FailureRow.path)).all())

    # -- captions ------------------------------------------------------------------
    def captions(self, hashes: list[str], model_fp: str, key: str) -> dict[str, str]:
        found: dict[str, str] = {}
        with self.reader() as session:
            for start in range(0, len(hashes), 500):
                stmt = select(CaptionRow.content_hash, CaptionRow.caption).where(
                    CaptionRow.content_hash.in_(hashes[start : start + 500]),
                    CaptionRow.model == model_fp,
                    CaptionRow.prompt == key,  # the settings key (CaptionSettings.cache_key)
                )
                found.update((h, c) for h, c in session.execute(stmt))
        return found

    def save_captions(self, captions: dict[str, str], model_fp: str, model_spec: str, key: str) -> None:
        now = utcnow()
        with self.transaction() as session:
            for content_hash, caption in captions.items():
                session.merge(CaptionRow(content_hash=content_hash, model=model_fp, prompt=key, caption=caption,
                                         model_spec=model_spec, created_at=now))

    def one_path_per_content(self, roots: list[bytes] | None, model_fp: str | None = None) -> dict[str, bytes]:
        """{content hash: its first path} of indexed images below ``roots`` (all when None),
        optionally only those whose vector model ``model_fp`` made: duplicates are worked on once."""
        rows = self.rows_under(roots) if roots else self._rows(ImageRow.id.is_not(None))
        by_hash: dict[str, bytes] = {}
        for path, row in sorted(rows.items()):
            if model_fp is None or row.model == model_fp:
                by_hash.setdefault(row.content_hash, path)
        return by_hash

    def uncaptioned(self, roots: list[bytes] | None, model_fp: str, key: str) -> list[tuple[str, bytes]]:
        """(content hash, one path) of indexed images without a caption from this model and settings key."""
        by_hash = self.one_path_per_content(roots)
        have = self.captions(list(by_hash), model_fp, key)
        return [(h, p) for h, p in by_hash.items() if h not in have]

    # -- tags ----------------------------------------------------------------------------
    def untagged(self, roots: list[bytes] | None, model_fp: str, vocabulary: str) -> list[tuple[str, bytes, bytes]]:
        """(content hash, one path, vector) of indexed images not yet tagged with this vocabulary."""
        by_hash = self.one_path_per_content(roots, model_fp)
        with self.reader() as session:
            done = set(session.scalars(
                select(TagRow.content_hash).where(TagRow.model == model_fp, TagRow.vocabulary == vocabulary)
            ))
        vectors = self.vectors_for_paths([p for h, p in by_hash.items() if h not in done], model_fp)
        return [(h, p, vectors[p]) for h, p in by_hash.items() if h not in done and p in vectors]

    def save_tags(self, content_hash: str, model_fp: str, vocabulary: str, tags: list) -> None:  # type: ignore[type-arg]
        with self.transaction() as session:
            for tag in tags:
                session.merge(TagRow(content_hash=content_hash, model=model_fp, vocabulary=vocabulary,
                                     label=tag.label, rank=tag.rank, score=tag.score, probability=tag.itm))

    def dispose(self) -> None:
        self.engine.dispose()


__all__ = [
    "Database",
    "ImageRef",
    "SQLAlchemyError",
    "StoredRow",
    "bytes_to_query_vectors",
    "bytes_to_vectors",
    "path_range",
    "utcnow",
    "vector_to_bytes",
]
