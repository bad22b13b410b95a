"""Photo metadata in an index run: read beside each file the run reads, and read again, without
embedding, for the files it leaves alone whose metadata is out of date (read by an older
blipsearch, see :data:`blipsearch.metadata.METADATA_VERSION`, or with a sidecar changed since)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import delete, insert, update
from sqlalchemy.orm import Session

from ..errors import ImageError
from ..images.decode import read_file
from ..metadata import METADATA_VERSION
from ..metadata.read import PhotoMetadata, read_metadata
from ..metadata.xmp import keyword_terms
from ..progress import ProgressFactory, no_progress
from ..store.database import Database, StoredRow
from ..store.schema import ImageRow, KeywordRow
from .walk import FileEntry

# Rows written per transaction when only metadata changes.
BATCH = 200


def safely_read(path: bytes, data: bytes, exif: dict | None = None,  # type: ignore[type-arg]
                listing: Mapping[bytes, tuple[int, int]] | None = None) -> PhotoMetadata:
    """:func:`read_metadata`, whose unexpected failure is a warning on the photo, never its loss."""
    try:
        return read_metadata(path, data, exif, listing)
    except Exception as exc:  # noqa: BLE001 - metadata must never fail a photo
        return PhotoMetadata(exif=exif, warnings=(f"its metadata could not be read: {type(exc).__name__}: {exc}",))


def out_of_date(row: StoredRow, sidecar: str | None) -> bool:
    """Whether a stored row's metadata is to be read again: read by an older blipsearch, or its sidecar
    (``sidecar``: the one there now) is not the one read."""
    return row.metadata_version != METADATA_VERSION or row.sidecar != sidecar


def write(session: Session, image_id: int, meta: PhotoMetadata) -> None:
    """Set the metadata of image ``image_id`` in the caller's transaction."""
    session.execute(update(ImageRow).where(ImageRow.id == image_id).values(**meta.columns()))
    keep_keywords(session, image_id, meta, new=False)


def keep_keywords(session: Session, image_id: int, meta: PhotoMetadata | None, *, new: bool) -> None:
    """Make the keyword terms of image ``image_id`` those of ``meta`` (``new``: it has none yet)."""
    if meta is None:
        return
    if not new:
        session.execute(delete(KeywordRow).where(KeywordRow.image_id == image_id))
    terms = keyword_terms(meta.keywords)
    if terms:
        session.execute(insert(KeywordRow), [{"image_id": image_id, "term": t} for t in sorted(terms)])


def refresh(db: Database, stale: list[tuple[StoredRow, FileEntry]], *, workers: int,
            listing: Mapping[bytes, tuple[int, int]] | None = None,
            progress: ProgressFactory = no_progress) -> int:
    """Read the metadata of ``stale`` images again and store it; their vectors stay. A file that can't
    be read now keeps what was stored. Returns how many were stored."""
    if not stale:
        return 0
    done = 0
    bar = progress(len(stale), "Reading metadata")
    try:
        for batch in _batches(_read(stale, workers, listing), BATCH):
            with db.transaction() as session:
                for row, meta in batch:
                    write(session, row.id, meta)
            done += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    return done


def _read(stale: Iterable[tuple[StoredRow, FileEntry]], workers: int,
          listing: Mapping[bytes, tuple[int, int]] | None) -> Iterator[tuple[StoredRow, PhotoMetadata]]:
    def one(item: tuple[StoredRow, FileEntry]) -> tuple[StoredRow, PhotoMetadata] | None:
        row, entry = item
        try:
            data = read_file(entry.path)
        except ImageError:
            return None
        return row, safely_read(entry.path, data, None, listing)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="blipsearch-metadata") as pool:
        for found in pool.map(one, stale):
            if found is not None:
                yield found


def _batches(items: Iterable[tuple[StoredRow, PhotoMetadata]],
             size: int) -> Iterator[list[tuple[StoredRow, PhotoMetadata]]]:
    batch: list[tuple[StoredRow, PhotoMetadata]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
