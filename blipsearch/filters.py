"""Filters that narrow a search before ranking: folder, capture date, camera, size, format, tag.

Tags: ``index --tags`` stores each image's top labels with the ITM match
probability of each; a label counts as the image's tag when that probability
is at least ``min_probability`` (50 % by default: ITM finds the label in the
picture more likely than not). A label stored without a probability (tagged by
cosine alone, ``--rerank-depth 0``) counts whatever its rank.

Camera: the EXIF make and model ("Canon EOS R6"), matched as a case-insensitive
part (``camera="canon"``, ``camera="iphone 13"``). Size: at least so many pixels
wide and high (``min_size="1920x1080"``; a portrait photo must then be 1920 wide
too). Format: by file name extension, a format's name or one of its extensions
(``jpeg`` takes .jpg, .jpeg and .jpe; ``heic`` takes .heif too); several are or-ed.

A filtered search ranks only the matching images, so ``k=10`` returns the ten
best matching photos, not the matching ones among the ten best of all.

Dates: an image's date is its EXIF capture time when the camera recorded
one, else its file's modification time (local time). ``after`` keeps images
taken at or after the start of the given period, ``before`` those taken
before its start: ``after=2024, before=2025`` is the year 2024, and
``after=2024-07-01, before=2024-07-02`` is one day.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from .errors import InputPathError
from .images.formats import FORMAT_EXTENSIONS, format_extensions
from .text import checked

DEFAULT_MIN_PROBABILITY = 0.5
# A camera's make and model are a few words; SQLite refuses LIKE patterns over 50,000 bytes.
MAX_CAMERA = 1000
MAX_SIZE = 999_999  # pixels, as WxH has at most 6 digits each
_DATE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` (``1920x1080``) as (width, height), both at least 1."""
    match = _SIZE.match(text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise InputPathError(f"{text!r} is not a size: use WIDTHxHEIGHT in pixels, both at least 1, e.g. 1920x1080.")
    return int(match[1]), int(match[2])


def parse_formats(names: Sequence[str]) -> tuple[str, ...]:
    """The file extensions of the formats ``names``, in a stable order."""
    found: list[str] = []
    for name in names:
        if not name.strip():
            continue
        exts = format_extensions(name)
        if exts is None:
            raise InputPathError(f"{name!r} is not an image format blipsearch knows: use one of "
                                 f"{', '.join(FORMAT_EXTENSIONS)} (or an extension such as jpg).")
        found += exts
    return tuple(dict.fromkeys(found))


def parse_date(text: str) -> datetime:
    """The start of a year (``2024``), a month (``2024-07``), a day (``2024-07-14``) or an
    ISO time (``2024-07-14T18:30``), as a naive local datetime."""
    value = text.strip()
    match = _DATE.match(value)
    try:
        if match:
            year, month, day = (int(g) if g else 1 for g in match.groups())
            return datetime(year, month, day)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputPathError(f"{text!r} is not a date: use 2024, 2024-07, 2024-07-14 or 2024-07-14T18:30.") from None
    if parsed.tzinfo is not None:  # capture times are the camera's local time, without a zone
        try:
            parsed = parsed.astimezone().replace(tzinfo=None)
        except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 here
            raise InputPathError(f"{text!r} lies outside the years 1 to 9999 in local time.") from None
    return parsed


def _as_datetime(value: str | date | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return parse_date(value)


def _filter_text(text: str | None, what: str) -> str:
    """A filter's text, stripped, as the database compares it: valid UTF-8 and without NUL characters,
    which no stored text holds (PostgreSQL can't store them)."""
    value = checked(text or "", what).strip()
    if "\0" in value:
        raise InputPathError(f"{what} holds a NUL character, which no stored text has.")
    return value


@dataclass(frozen=True)
class Filters:
    """What a search may return. Empty fields filter nothing."""

    folders: tuple[bytes, ...] = ()  # absolute paths, as the file system has them; images below any
    after: datetime | None = None
    before: datetime | None = None
    tag: str | None = None
    min_probability: float = DEFAULT_MIN_PROBABILITY
    camera: str | None = None  # a part of the EXIF make and model, lower case
    min_width: int = 0
    min_height: int = 0
    extensions: tuple[str, ...] = ()  # lower case, with the dot

    @classmethod
    def make(
        cls,
        folders: Sequence[str | os.PathLike[str] | bytes] = (),
        after: str | date | datetime | None = None,
        before: str | date | datetime | None = None,
        tag: str | None = None,
        min_probability: float | None = None,
        camera: str | None = None,
        min_size: str | tuple[int, int] | None = None,
        formats: Sequence[str] = (),
        *,
        empty_range: bool = False,
    ) -> Filters:
        """Filters from what a user typed: folders expanded (``~``) and made absolute, dates parsed. An
        ``after`` not earlier than ``before`` is an error, unless ``empty_range``: then nothing passes."""
        roots = []
        for folder in folders:
            if folder in ("", b""):
                continue
            try:
                raw = folder if isinstance(folder, bytes) else os.fsencode(os.path.expanduser(os.fspath(folder)))
            except UnicodeEncodeError:  # a lone surrogate no file system name decodes to
                raise InputPathError(f"The folder {folder!r} is not a name a file system can hold.") from None
            roots.append(os.path.abspath(raw).rstrip(b"/") or b"/")
        start, end = _as_datetime(after), _as_datetime(before)
        if start is not None and end is not None and start >= end and not empty_range:
            raise InputPathError("The date range is empty: `after` must be earlier than `before`.")
        probability = DEFAULT_MIN_PROBABILITY if min_probability is None else float(min_probability)
        if not 0.0 <= probability <= 1.0:
            raise InputPathError(f"The tag's least match probability must lie in 0..1, not {min_probability}.")
        if isinstance(min_size, tuple):
            width, height = min_size
            if min(width, height) < 0 or max(width, height) > MAX_SIZE:
                raise InputPathError(f"A least size must lie in 0..{MAX_SIZE} pixels: {width}x{height}.")
        else:
            width, height = parse_size(min_size) if min_size else (0, 0)
        camera = _filter_text(camera, "The camera") or None  # its length as given ("İ".lower() is longer)
        if camera is not None and len(camera) > MAX_CAMERA:
            raise InputPathError(f"The camera is {len(camera):,} characters long: a camera's make and model "
                                 f"are at most {MAX_CAMERA:,}.")
        camera = camera.lower() if camera else None
        return cls(tuple(dict.fromkeys(roots)), start, end, _filter_text(tag, "The tag") or None,
                   probability, camera, width, height, parse_formats(formats))

    def __bool__(self) -> bool:
        return bool(self.folders or self.after or self.before or self.tag or self.camera or self.min_width
                    or self.min_height or self.extensions)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.folders:
            out["folders"] = [os.fsdecode(f) for f in self.folders]
        if self.after:
            out["after"] = self.after.isoformat()
        if self.before:
            out["before"] = self.before.isoformat()
        if self.tag:
            out["tag"] = self.tag
            out["min_probability"] = self.min_probability
        if self.camera:
            out["camera"] = self.camera
        if self.min_width or self.min_height:
            out["min_size"] = f"{self.min_width}x{self.min_height}"
        if self.extensions:
            out["extensions"] = list(self.extensions)
        return out


NO_FILTERS = Filters()
