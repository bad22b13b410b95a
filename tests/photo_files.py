"""Photo files as cameras and photo managers write them, for the tests and the benchmarks that index
them: a camera's EXIF (capture time, offset, GPS position) and a darktable-style XMP sidecar."""

from __future__ import annotations

from fractions import Fraction
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.TiffImagePlugin import IFDRational


def _rational(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction((value - degrees - minutes / 60) * 3600).limit_denominator(10000)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(seconds.numerator, seconds.denominator)


def camera_exif(latitude: float | None, longitude: float | None, offset: int | None = None) -> Image.Exif:
    """A camera's EXIF: a capture time (and its offset, in minutes, when given) and, when given, a GPS
    position."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2021:04:11 15:47:53"  # DateTimeOriginal
    if offset is not None:
        exif.get_ifd(0x8769)[0x9011] = f"{'+' if offset >= 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    if latitude is not None and longitude is not None:
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = ("N" if latitude >= 0 else "S"), _rational(abs(latitude))
        gps[3], gps[4] = ("E" if longitude >= 0 else "W"), _rational(abs(longitude))
    return exif


def write_sidecar(photo: Path, columns: dict[str, Any]) -> None:
    """A darktable-style sidecar (``photo.jpg.xmp``) holding the XMP fields of ``columns``; flat keywords
    in dc:subject, hierarchical ones in lr:hierarchicalSubject. ``taken_offset`` goes into the photo."""
    def bag(items: list[str]) -> str:
        return "<rdf:Bag>" + "".join(f"<rdf:li>{escape(i)}</rdf:li>" for i in items) + "</rdf:Bag>"

    keywords = columns.get("keywords") or []
    body = ""
    if flat := [k for k in keywords if "|" not in k]:
        body += f"<dc:subject>{bag(flat)}</dc:subject>"
    if tree := [k for k in keywords if "|" in k]:
        body += f"<lr:hierarchicalSubject>{bag(tree)}</lr:hierarchicalSubject>"
    for name in ("title", "description"):
        if name in columns:
            body += f'<dc:{name}><rdf:Alt><rdf:li xml:lang="x-default">{escape(columns[name])}</rdf:li></rdf:Alt></dc:{name}>'
    attributes = "".join(f' xmp:{key.capitalize()}="{columns[key]}"' for key in ("rating", "label") if key in columns)
    photo.with_name(photo.name + ".xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp='
        f'"http://ns.adobe.com/xap/1.0/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"{attributes}>{body}'
        "</rdf:Description></rdf:RDF></x:xmpmeta>", encoding="utf-8")
