"""Filters that narrow a search before ranking: folder, capture date, camera, size, format, tag, and
the metadata photo managers write (keyword, rating, label) and the place a photo was taken.

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

Keywords (XMP ``dc:subject`` and ``lr:hierarchicalSubject``): ``keyword="paris"`` keeps images with
the keyword Paris or a hierarchical keyword with Paris as a level ("Places|France|Paris"); a whole
path ("places|france|paris") matches too. Case and accents don't count. Several keywords: an image
must have all of them. Rating: at least so many stars (0..5); an image without a rating counts as 0
and a rejected one (-1) as less than any, so ``rating=0`` leaves out only the rejected. Label: the
colour label, whole ("red" keeps "Red"). Place: a city, region or country name, whole, or a country
code ("paris", "ile-de-france", "france", "fr"). Near: within ``within_km`` (1 km unless told) of a
position, by great circle distance.

A filtered search ranks only the matching images, so ``k=10`` returns the ten
best matching photos, not the matching ones among the ten best of all.

Dates: an image's date is its capture time (see :mod:`blipsearch.metadata.dates`:
EXIF, then XMP) when one was recorded, else its file's modification time. ``after``
keeps images taken at or after the start of the given period, ``before`` those taken
before its start: ``after=2024, before=2025`` is the year 2024, and
``after=2024-07-01, before=2024-07-02`` is one day. A bound without an offset is a
wall-clock time, compared with the wall clock where each photo was taken (a photo
taken at 23:30 in Tokyo on 14 July is of 14 July) and with file times in this
machine's zone. A bound with an offset (``2021-04-11T15:00-05:00``, ``...Z``) is an
instant: compared with the instant of each photo whose offset is known, and with
the wall clock of those whose offset is not (the camera's zone being unknown, the
bound's own wall clock, 15:00, is the best guess).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone

from .errors import InputPathError
from .images.formats import FORMAT_EXTENSIONS, format_extensions
from .metadata.folding import fold
from .metadata.places import EARTH_KM, valid_position
from .text import checked

DEFAULT_MIN_PROBABILITY = 0.5
# A camera's make and model are a few words; SQLite refuses LIKE patterns over 50,000 bytes.
MAX_CAMERA = 1000
MAX_SIZE = 999_999  # pixels, as WxH has at most 6 digits each
MAX_TERM = 400  # a keyword term as the keywords table holds it
MAX_RATING = 5
DEFAULT_WITHIN_KM = 1.0
MAX_WITHIN_KM = round(EARTH_KM * math.pi, 1)  # half the way round: everywhere
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_NEAR = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*(?:,\s*({_NUMBER})\s*)?$")
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


_ZULU = re.compile(r"[zZ]$")
_FRACTION = re.compile(r"(?<=:\d\d)\.(\d{1,6})(?=$|[+-])")


def _iso_for_any_python(value: str) -> str:
    """``value`` as Python 3.10's ``fromisoformat`` reads it too: ``Z`` as +00:00 and a fraction of a
    second of 1 to 6 digits as 6 (3.11 reads both; 3.10 refused them, and the HTTP API documents them)."""
    return _FRACTION.sub(lambda m: "." + m.group(1).ljust(6, "0"), _ZULU.sub("+00:00", value))


def parse_date(text: str) -> datetime:
    """The start of a year (``2024``), a month (``2024-07``), a day (``2024-07-14``) or an
    ISO time (``2024-07-14T18:30``, a wall-clock time: naive), with an offset or ``Z`` when it
    has one (``2024-07-14T18:30-05:00``: an instant, aware)."""
    value = text.strip()
    match = _DATE.match(value)
    try:
        if match:
            year, month, day = (int(g) if g else 1 for g in match.groups())
            return datetime(year, month, day)
        parsed = datetime.fromisoformat(_iso_for_any_python(value))
    except ValueError:
        raise InputPathError(f"{text!r} is not a date: use 2024, 2024-07, 2024-07-14 or 2024-07-14T18:30.") from None
    if parsed.tzinfo is not None:
        try:
            parsed.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
            raise InputPathError(f"{text!r} lies outside the years 1 to 9999 in UTC.") from None
    return parsed


def instant(bound: datetime) -> datetime | None:
    """An aware bound as a naive UTC datetime (how instants are stored); None for a naive one."""
    return bound.astimezone(timezone.utc).replace(tzinfo=None) if bound.tzinfo is not None else None


def _not_before(end: datetime, start: datetime) -> bool:
    """Whether ``end`` is not after ``start``: as instants when both have offsets, else as wall clocks."""
    if (end.tzinfo is None) != (start.tzinfo is None):
        end, start = end.replace(tzinfo=None), start.replace(tzinfo=None)
    return end <= start


def parse_near(text: str) -> tuple[float, float, float | None]:
    """``LAT,LON`` or ``LAT,LON,KM`` in decimal degrees (south and west negative) as (lat, lon, km or
    None)."""
    match = _NEAR.match(text)
    if not match:
        raise InputPathError(f"{text!r} is not a position: use LATITUDE,LONGITUDE in decimal degrees, south and "
                             "west negative, e.g. 48.8584,2.2945 (optionally ,KM after them).")
    return float(match[1]), float(match[2]), float(match[3]) if match[3] else None


def _position(near: str | tuple[float, float] | None, within_km: float | str | None) -> tuple[
        tuple[float, float] | None, float]:
    if near is None or near == "":
        if within_km not in (None, ""):
            raise InputPathError("`within` needs `near`: a distance from where?")
        return None, DEFAULT_WITHIN_KM
    if isinstance(near, str):
        lat, lon, km = parse_near(near)
        if km is not None and within_km not in (None, ""):
            raise InputPathError("The distance is given twice: in `near` (LAT,LON,KM) and in `within`.")
        within_km = km if km is not None else within_km
    else:
        lat, lon = (float(x) for x in near)
    if not valid_position(lat, lon) and not (lat == 0.0 and lon == 0.0):
        raise InputPathError(f"{lat:g},{lon:g} is not a position: latitude lies in -90..90, longitude in -180..180.")
    try:
        km = DEFAULT_WITHIN_KM if within_km in (None, "") else float(within_km)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputPathError(f"{within_km!r} is not a distance: give kilometres, e.g. 2.5.") from None
    if not 0.0 < km <= MAX_WITHIN_KM:
        raise InputPathError(f"A distance must lie above 0 and at most {MAX_WITHIN_KM:,} km, not {km:g}.")
    return (lat, lon), km


def _folded(text: str | None, what: str, limit: int = MAX_TERM) -> str | None:
    value = fold(_filter_text(text, what))
    if len(value) > limit:
        raise InputPathError(f"{what} is {len(value):,} characters long: at most {limit:,} are stored.")
    return value or None


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
    keywords: tuple[str, ...] = ()  # folded (blipsearch.metadata.folding); all must match
    rating: int | None = None  # at least so many stars
    label: str | None = None  # folded
    place: str | None = None  # folded
    near: tuple[float, float] | None = None  # latitude, longitude
    within_km: float = DEFAULT_WITHIN_KM

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
        keyword: str | Sequence[str] | None = None,
        rating: int | str | None = None,
        label: str | None = None,
        place: str | None = None,
        near: str | tuple[float, float] | None = None,
        within_km: float | str | None = None,
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
        if start is not None and end is not None and _not_before(end, start) and not empty_range:
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
        words = [keyword] if isinstance(keyword, str) else list(keyword or ())
        keywords = tuple(dict.fromkeys(k for k in (_folded(w, "The keyword") for w in words) if k))
        stars: int | None = None
        if rating is not None and rating != "":
            try:
                stars = int(rating)
            except (TypeError, ValueError):
                raise InputPathError(f"{rating!r} is not a rating: give a whole number of stars, 0 to 5.") from None
            if not 0 <= stars <= MAX_RATING:
                raise InputPathError(f"A rating is 0 to {MAX_RATING} stars, not {stars}.")
        position, km = _position(near, within_km)
        return cls(tuple(dict.fromkeys(roots)), start, end, _filter_text(tag, "The tag") or None,
                   probability, camera, width, height, parse_formats(formats), keywords, stars,
                   _folded(label, "The label"), _folded(place, "The place"), position, km)

    def __bool__(self) -> bool:
        return bool(self.folders or self.after or self.before or self.tag or self.camera or self.min_width
                    or self.min_height or self.extensions or self.keywords or self.rating is not None
                    or self.label or self.place or self.near)

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
        if self.keywords:
            out["keywords"] = list(self.keywords)
        if self.rating is not None:
            out["rating"] = self.rating
        if self.label:
            out["label"] = self.label
        if self.place:
            out["place"] = self.place
        if self.near:
            out["near"] = list(self.near)
            out["within_km"] = self.within_km
        return out


NO_FILTERS = Filters()
