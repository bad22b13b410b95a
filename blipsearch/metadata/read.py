"""Everything the library keeps of a photo besides its vector, read from its file's bytes (and its
sidecar): the EXIF subset, the capture time with its offset and source, XMP, the place of its GPS
position (none for a position no GPS fix gives: out of range, or exactly 0, 0). Reading never fails a photo: what can't be read is a warning kept with it."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from ..images.decode import read_exif
from . import METADATA_VERSION, xmp
from .dates import CaptureTime, capture_time, media_created
from .places import Place, place_at, valid_position


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
    place: Place | None = None  # where its GPS position lies

    @property
    def latitude(self) -> float | None:
        return (self.exif or {}).get("GPSLatitude") if self.position else None

    @property
    def longitude(self) -> float | None:
        return (self.exif or {}).get("GPSLongitude") if self.position else None

    @property
    def position(self) -> bool:
        """Whether the EXIF holds a real GPS position (see :func:`.places.valid_position`)."""
        exif = self.exif or {}
        return valid_position(exif.get("GPSLatitude"), exif.get("GPSLongitude"))

    def columns(self) -> dict[str, Any]:
        """The image row's values (:class:`blipsearch.store.schema.ImageRow`)."""
        taken, place = self.taken, self.place
        return {
            "exif": self.exif, "taken_at": taken.local if taken else None,
            "taken_offset": taken.offset if taken else None, "taken_utc": taken.utc if taken else None,
            "taken_source": taken.source if taken else None, "title": self.title, "description": self.description,
            "keywords": list(self.keywords) or None, "rating": self.rating, "label": self.label,
            "latitude": self.latitude, "longitude": self.longitude, "sidecar": self.sidecar,
            "metadata_warnings": list(self.warnings) or None, "metadata_version": METADATA_VERSION,
            "place_city": place.city if place else None, "place_region": place.region if place else None,
            "place_country": place.country if place else None,
            "place_country_code": place.country_code if place else None,
        }


def read_metadata(path: bytes, data: bytes, exif: dict[str, Any] | None = None,
                  listing: Mapping[bytes, tuple[int, int]] | None = None) -> PhotoMetadata:
    """The metadata of the file at ``path`` whose bytes are ``data`` (``exif``: its EXIF subset, when
    decoding read it already; ``listing``: the sidecars a folder walk saw, {path: (size, mtime_ns)}).
    The sidecar's XMP wins over the file's own where both say a thing."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if exif is None:
                exif = read_exif(image)
            inside = xmp.embedded(data, image)
    except Exception:  # noqa: BLE001 - a file Pillow can't open may still hold a packet
        inside = xmp.embedded(data)
    found = xmp.find_sidecar(path, listing)
    facts = xmp.merged(inside, xmp.read_sidecar(found[0])) if found is not None else inside
    meta = PhotoMetadata(
        exif=exif, taken=capture_time(exif, facts.dates, media_created(data)), title=facts.title,
        description=facts.description, keywords=facts.keywords, rating=facts.rating, label=facts.label,
        sidecar=_signature(found), warnings=facts.warnings,
    )
    if meta.latitude is None or meta.longitude is None:
        return meta
    return replace(meta, place=place_at(meta.latitude, meta.longitude))


def sidecar_signature(path: bytes, listing: Mapping[bytes, tuple[int, int]] | None = None) -> str | None:
    """How the sidecar of ``path`` is now ("NAME:SIZE:MTIME_NS"), or None when it has none."""
    return _signature(xmp.find_sidecar(path, listing))


def _signature(found: tuple[bytes, int, int] | None) -> str | None:
    if found is None:
        return None
    where, size, mtime_ns = found
    return f"{os.fsdecode(os.path.basename(where))}:{size}:{mtime_ns}"
