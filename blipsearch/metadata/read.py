"""Everything the library keeps of a photo besides its vector, read from its file's bytes (and its
sidecar): the EXIF subset, the capture time with its offset and source, XMP, the place of its GPS
position. Reading never fails a photo: what can't be read is a warning kept with it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..images.decode import exif_of
from . import METADATA_VERSION
from .dates import CaptureTime, capture_time, media_created


def find_sidecar(path: bytes, listing: Mapping[bytes, tuple[int, int]] | None = None) -> tuple[bytes, int, int] | None:
    root, _ = os.path.splitext(path)
    for candidate in (path + b".xmp", path + b".XMP", root + b".xmp", root + b".XMP"):
        if listing is not None:
            if candidate in listing:
                return (candidate, *listing[candidate])
            continue
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        return candidate, st.st_size, st.st_mtime_ns
    return None


@dataclass(frozen=True)
class PhotoMetadata:
    exif: dict[str, Any] | None = None
    taken: CaptureTime | None = None
    title: str | None = None
    description: str | None = None
    keywords: tuple[str, ...] = ()
    rating: int | None = None
    label: str | None = None
    sidecar: str | None = None  # the sidecar read: "NAME:SIZE:MTIME_NS"
    warnings: tuple[str, ...] = field(default=())

    @property
    def latitude(self) -> float | None:
        return (self.exif or {}).get("GPSLatitude")

    @property
    def longitude(self) -> float | None:
        return (self.exif or {}).get("GPSLongitude")

    def columns(self) -> dict[str, Any]:
        """The image row's values (:class:`blipsearch.store.schema.ImageRow`)."""
        taken = self.taken
        return {
            "exif": self.exif, "taken_at": taken.local if taken else None,
            "taken_offset": taken.offset if taken else None, "taken_utc": taken.utc if taken else None,
            "taken_source": taken.source if taken else None, "title": self.title, "description": self.description,
            "keywords": list(self.keywords) or None, "rating": self.rating, "label": self.label,
            "latitude": self.latitude, "longitude": self.longitude, "sidecar": self.sidecar,
            "metadata_warnings": list(self.warnings) or None, "metadata_version": METADATA_VERSION,
        }


def sidecar_signature(path: bytes, listing: Mapping[bytes, tuple[int, int]] | None = None) -> str | None:
    """How the sidecar of ``path`` is now ("NAME:SIZE:MTIME_NS"), or None when it has none."""
    found = find_sidecar(path, listing)
    if found is None:
        return None
    where, size, mtime_ns = found
    return f"{os.fsdecode(os.path.basename(where))}:{size}:{mtime_ns}"


def read_metadata(path: bytes, data: bytes, exif: dict[str, Any] | None = None,
                  listing: Mapping[bytes, tuple[int, int]] | None = None) -> PhotoMetadata:
    """The metadata of the file at ``path`` whose bytes are ``data`` (``exif``: its EXIF subset, when
    decoding read it already; ``listing``: the sidecars a folder walk saw, {path: (size, mtime_ns)})."""
    if exif is None:
        exif = exif_of(data)
    taken = capture_time(exif, (), media_created(data))
    return PhotoMetadata(exif=exif, taken=taken, sidecar=sidecar_signature(path, listing))
