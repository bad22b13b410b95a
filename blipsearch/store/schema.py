"""The database tables (SQLAlchemy 2.x). The database is the source of truth.

Paths are stored as the file system's raw bytes (``os.fsencode``), so names
that are not valid UTF-8 are kept exactly and can be opened again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# 2: images.generation; 3: caption keys name the beam length rule;
# 4: library.recall_target; 5: library.family and library.queries (see blipsearch/store/migrations.py);
# 6 (revision 0002): the full-text index kept up by triggers (text_pending; text_index_state gone);
# 7 (revision 0003): photo metadata (capture time's offset and source, XMP, places) and keywords;
# 8 (revision 0004): title, description and keywords in the full-text index; keywords go with their image.
SCHEMA_VERSION = 8


class Base(DeclarativeBase):
    pass


class LibraryRow(Base):
    """One row: the library's identity, its model, and a write counter."""

    __tablename__ = "library"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schema_version: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(Text)
    model_fingerprint: Mapped[str | None] = mapped_column(String(64))
    dim: Mapped[int | None] = mapped_column(Integer)
    # Bumped by every transaction that changes vectors; the FAISS file records
    # the generation it was built from, so a stale file is detected and rebuilt.
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # The recall@10 an approximate vector index is tuned to (None: blipsearch's default).
    recall_target: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The model family ("blip", "blip-2") and its ITC vectors per image (1 for BLIP, BLIP-2's query
    # count): an image's stored vector holds ``queries`` x ``dim`` numbers.
    family: Mapped[str | None] = mapped_column(String(16), nullable=True)
    queries: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ImageRow(Base):
    """An indexed image file. ``id`` is also its id in the vector index."""

    __tablename__ = "images"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)
    exif: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Fingerprint of the model that made ``vector``; rows whose model is not
    # the library's are waiting for `index --reindex` and are not searchable.
    model: Mapped[str | None] = mapped_column(String(64), index=True)
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    indexed_at: Mapped[datetime] = mapped_column(DateTime)
    # The library generation whose transaction last set ``vector``: a reader whose vector index
    # mirrors generation G catches up by reading only the rows above G.
    generation: Mapped[int | None] = mapped_column(BigInteger, index=True)
    # -- photo metadata (blipsearch/metadata), re-read without re-embedding when ``metadata_version``
    # is older than blipsearch's or the sidecar changed. ``taken_at`` is the wall-clock time where the
    # photo was taken; ``taken_offset`` its offset from UTC in minutes, when known (then ``taken_utc``
    # is the instant, in UTC); ``taken_source`` names the field it came from ("DateTimeOriginal").
    taken_offset: Mapped[int | None] = mapped_column(Integer, nullable=True)
    taken_utc: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    taken_source: Mapped[str | None] = mapped_column(String(40), nullable=True)
    title: Mapped[str | None] = mapped_column(Text, nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    keywords: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # as written, hierarchies by "|"
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # XMP's -1 (rejected) .. 5 stars
    label: Mapped[str | None] = mapped_column(Text, nullable=True)  # a colour label ("Red")
    latitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    place_city: Mapped[str | None] = mapped_column(Text, nullable=True)
    place_region: Mapped[str | None] = mapped_column(Text, nullable=True)
    place_country: Mapped[str | None] = mapped_column(Text, nullable=True)
    place_country_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # The sidecar read ("IMG_1.jpg.xmp:SIZE:MTIME_NS"), so a changed one is noticed; None: none found.
    sidecar: Mapped[str | None] = mapped_column(Text, nullable=True)
    metadata_warnings: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    metadata_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class KeywordRow(Base):
    """A term an image's keywords hold, folded (case and accents) for matching: each keyword, and each
    level of a hierarchical one ("Places|France|Paris" gives "places", "france", "paris" and the
    whole path)."""

    __tablename__ = "keywords"

    image_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    term: Mapped[str] = mapped_column(String(400), primary_key=True, index=True)


class FailureRow(Base):
    """A file that could not be indexed, with the reason, until it indexes or disappears."""

    __tablename__ = "failures"

    path: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    failed_at: Mapped[datetime] = mapped_column(DateTime)


class CaptionRow(Base):
    """A generated caption, keyed by image content so moved or copied files share it."""

    __tablename__ = "captions"

    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)  # caption model fingerprint
    prompt: Mapped[str] = mapped_column(String(200), primary_key=True)  # CaptionSettings.cache_key
    caption: Mapped[str] = mapped_column(Text)
    model_spec: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class TextPendingRow(Base):
    """An image whose full-text row is to be rewritten, queued by triggers on ``images`` and ``captions``
    and emptied by the writing transaction before it commits (see :mod:`blipsearch.store.fulltext`)."""

    __tablename__ = "text_pending"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    image_id: Mapped[int] = mapped_column(BigInteger)


class TextRow(Base):
    """A text to match images against: a user's collection (``source="user"``) or a caption."""

    __tablename__ = "texts"
    __table_args__ = (UniqueConstraint("source", "text_hash"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16), index=True)
    external_id: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model: Mapped[str | None] = mapped_column(String(64))
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    added_at: Mapped[datetime] = mapped_column(DateTime)


class TagRow(Base):
    """One of an image's top labels from a vocabulary, keyed by content so moved files keep it."""

    __tablename__ = "tags"

    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)  # retrieval model fingerprint
    vocabulary: Mapped[str] = mapped_column(String(64), primary_key=True)  # hash of labels + template
    label: Mapped[str] = mapped_column(String(400), primary_key=True, index=True)
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    probability: Mapped[float | None] = mapped_column(Float)  # ITM match probability, when reranked
