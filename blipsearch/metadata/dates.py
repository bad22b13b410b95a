"""When a photo was taken, as the tools built on exiftool (immich, digiKam) read it.

The first of these that holds a valid time is the capture time:

1. EXIF ``DateTimeOriginal``, with ``SubsecTimeOriginal`` and ``OffsetTimeOriginal``;
2. EXIF ``DateTimeDigitized`` (exiftool's ``CreateDate``), with its sub-seconds and offset;
3. XMP ``exif:DateTimeOriginal``, ``xmp:CreateDate``, ``photoshop:DateCreated`` (sidecar first,
   then the file's own XMP), ISO 8601 with or without an offset;
4. the creation time of an ISO media file's movie header (``QuickTime:CreateDate`` of HEIF image
   sequences), which is UTC;
5. else none: the file's modification time stands in (``file time``).

Never IFD0's ``DateTime``: that is ``ModifyDate``, the last edit (an export of a 2008 photo is not
taken on the day of the export).

A capture time is the wall-clock time where the photo was taken (:attr:`CaptureTime.local`) and,
when the camera recorded it, its offset from UTC: an EXIF time without an offset whose wall clock an
XMP date with an offset repeats takes that offset.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

# (EXIF date tag, its sub-seconds tag, its offset tag, the name shown as the date's source)
_EXIF_TAGS = (
    ("DateTimeOriginal", "SubsecTimeOriginal", "OffsetTimeOriginal", "DateTimeOriginal"),
    ("DateTimeDigitized", "SubsecTimeDigitized", "OffsetTimeDigitized", "CreateDate"),
)
# XMP dates in the order they are preferred (their names as the XMP reader gives them).
XMP_DATE_FIELDS = ("exif:DateTimeOriginal", "xmp:CreateDate", "photoshop:DateCreated", "xmp:DateCreated")
FILE_TIME = "file time"
QUICKTIME = "QuickTime:CreateDate"

_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")
_ISO = re.compile(
    r"^\s*(\d{4})(?:[-:](\d{2})(?:[-:](\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$"
)
# 1904-01-01, the epoch of ISO media files' times; later than 1970 is taken as set.
_MEDIA_EPOCH = datetime(1904, 1, 1)
_MEDIA_FLOOR = datetime(1970, 1, 2)
# Offsets lie within -12:00 .. +14:00; a camera writing more is wrong.
_MAX_OFFSET = 14 * 60


@dataclass(frozen=True)
class CaptureTime:
    """A photo's capture time: the wall clock where it was taken, its offset from UTC in minutes when
    known, and the field it came from."""

    local: datetime
    offset: int | None
    source: str

    @property
    def utc(self) -> datetime | None:
        """The instant, as a naive UTC datetime, when the offset is known."""
        if self.offset is None:
            return None
        try:
            return self.local - timedelta(minutes=self.offset)
        except OverflowError:
            return None

    @property
    def aware(self) -> datetime:
        """The time with its offset attached (naive when the offset is unknown)."""
        if self.offset is None:
            return self.local
        return self.local.replace(tzinfo=timezone(timedelta(minutes=self.offset)))


def parse_offset(text: object) -> int | None:
    """``"+05:30"`` or ``"-0500"`` as minutes east of UTC, or None."""
    match = _OFFSET.match(text) if isinstance(text, str) else None
    if not match:
        return None
    minutes = int(match[2]) * 60 + int(match[3])
    if int(match[3]) >= 60 or minutes > _MAX_OFFSET:
        return None
    return -minutes if match[1] == "-" else minutes


def parse_iso(text: object) -> tuple[datetime, int | None] | None:
    """An XMP date (``2021-04-11T15:47:53.12-05:00``, ``2021-04-11``, ``2021``; EXIF's colons too)
    as (wall clock, offset in minutes or None), or None when it is not a valid date."""
    match = _ISO.match(text) if isinstance(text, str) else None
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        local = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                         int(second or 0), int((fraction or "0")[:6].ljust(6, "0")))
    except ValueError:
        return None
    if local.year < 1:
        return None
    offset = 0 if zone == "Z" else parse_offset(zone) if zone else None
    return local, offset


def _exif_time(exif: Mapping[str, Any], stamp_tag: str, subsec_tag: str) -> datetime | None:
    stamp = exif.get(stamp_tag)
    if not isinstance(stamp, str):
        return None
    try:
        taken = datetime.strptime(stamp.strip()[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # "0000:00:00 00:00:00", blanks: the next tag may hold it
    digits = str(exif.get(subsec_tag, "")).strip()
    if digits.isdigit():
        taken = taken.replace(microsecond=int((digits + "000000")[:6]))
    return taken


def capture_time(exif: Mapping[str, Any] | None, xmp_dates: Iterable[tuple[str, str]] = (),
                 media_created: datetime | None = None) -> CaptureTime | None:
    """The capture time from :func:`blipsearch.images.decode.read_exif`'s subset, the XMP dates
    (field, value) in the order read, and an ISO media file's creation time (see the module)."""
    exif = exif or {}
    xmp = [(name, parsed) for name, value in xmp_dates if name in XMP_DATE_FIELDS
           and (parsed := parse_iso(value)) is not None]
    xmp.sort(key=lambda item: XMP_DATE_FIELDS.index(item[0]))
    for stamp_tag, subsec_tag, offset_tag, source in _EXIF_TAGS:
        local = _exif_time(exif, stamp_tag, subsec_tag)
        if local is None:
            continue
        offset = parse_offset(exif.get(offset_tag))
        if offset is None:  # an XMP date of the same wall clock may say where it was
            offset = next((o for _, (t, o) in xmp if o is not None and t.replace(microsecond=0)
                           == local.replace(microsecond=0)), None)
        return CaptureTime(local, offset, source)
    if xmp:
        name, (local, offset) = xmp[0]
        return CaptureTime(local, offset, name)
    if media_created is not None:
        return CaptureTime(media_created, 0, QUICKTIME)
    return None


def media_created(data: bytes) -> datetime | None:
    """The creation time in an ISO media file's movie header (``moov/mvhd``, UTC), when set: HEIF
    image sequences and QuickTime files carry one. Reads box headers only."""
    if data[4:8] != b"ftyp":
        return None
    moov = _box(data, 0, len(data), b"moov")
    if moov is None:
        return None
    mvhd = _box(data, moov[0], moov[1], b"mvhd")
    if mvhd is None or mvhd[1] - mvhd[0] < 12:
        return None
    start = mvhd[0]
    try:
        version = data[start]
        seconds = (struct.unpack_from(">Q", data, start + 4)[0] if version == 1
                   else struct.unpack_from(">I", data, start + 4)[0])
        created = _MEDIA_EPOCH + timedelta(seconds=seconds)
    except (struct.error, OverflowError, IndexError):
        return None
    return created if created >= _MEDIA_FLOOR else None


def _box(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(content start, end) of the first box ``kind`` among the boxes in ``data[start:end]``."""
    at = start
    while at + 8 <= end:
        size, name = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1 and at + 16 <= end:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return None
        if name == kind:
            return at + header, at + size
        at += size
    return None
