"""One indexed photo: what the library knows of it, its file (once checked to be the one indexed),
and its renditions for a screen."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from ..errors import ImageChangedError, LibraryError, UnknownImageError
from ..filters import DEFAULT_MIN_PROBABILITY, NO_FILTERS, Filters
from ..images.decode import open_image, read_file
from ..results import ImageInfo
from .database import Database, ImageRef
from .schema import ImageRow
from .thumbnails import SIZES, ThumbnailStore


def possible_id(image_id: int) -> bool:
    """Whether ``image_id`` can be a stored id (a 64-bit integer from 1): a database can't compare
    a larger number."""
    return 1 <= image_id < 2**63


def _place(row: ImageRow) -> dict[str, str | None] | None:
    place = {"city": row.place_city, "region": row.place_region, "country": row.place_country,
             "country_code": row.place_country_code}
    return place if any(place.values()) else None


class Photos:
    """The indexed photos of one database, one at a time, with their thumbnails in ``thumbnails``."""

    def __init__(self, db: Database, thumbnails: ThumbnailStore) -> None:
        self.db = db
        self.thumbnails = thumbnails

    def row(self, image_id: int) -> ImageRow:
        row = self.db.images_by_id([image_id]).get(image_id) if possible_id(image_id) else None
        if row is None:
            raise UnknownImageError(f"No indexed image has the id {image_id}.")
        return row

    def ref(self, image_id: int) -> ImageRef:
        ref = self.db.refs_by_id([image_id]).get(image_id) if possible_id(image_id) else None
        if ref is None:
            raise UnknownImageError(f"No indexed image has the id {image_id}.")
        return ref

    def info(self, image_id: int) -> ImageInfo:
        """What the library knows of the indexed image ``image_id``."""
        row = self.row(image_id)
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
            taken_offset=row.taken_offset, taken_source=row.taken_source, title=row.title,
            description=row.description, keywords=list(row.keywords or []), rating=row.rating, label=row.label,
            latitude=row.latitude, longitude=row.longitude, place=_place(row),
        )

    def file(self, image_id: int) -> bytes:
        """The path of indexed image ``image_id``, once the file there is still the one indexed
        (same size and modification time, following links): a file replaced since, by
        anything, a link to another file included, is refused rather than read."""
        row = self.ref(image_id)
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
        row = self.ref(image_id)
        found = self.thumbnails.get(row.content_hash, kind)
        if found is not None:
            return found, row.content_hash
        data = read_file(self.file(image_id))
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
