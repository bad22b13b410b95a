"""Filters that narrow a search before ranking: folder, capture date, tag.

Tags: ``index --tags`` stores each image's top labels with the ITM match
probability of each; a label counts as the image's tag when that probability
is at least ``min_probability`` (50 % by default: ITM finds the label in the
picture more likely than not). A label stored without a probability (tagged by
cosine alone, ``--rerank-depth 0``) counts whatever its rank.

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
from .text import checked

DEFAULT_MIN_PROBABILITY = 0.5
_DATE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")


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
        parsed = parsed.astimezone().replace(tzinfo=None)
    return parsed


def _as_datetime(value: str | date | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return parse_date(value)


@dataclass(frozen=True)
class Filters:
    """What a search may return. Empty fields filter nothing."""

    folders: tuple[bytes, ...] = ()  # absolute paths, as the file system has them; images below any
    after: datetime | None = None
    before: datetime | None = None
    tag: str | None = None
    min_probability: float = DEFAULT_MIN_PROBABILITY

    @classmethod
    def make(
        cls,
        folders: Sequence[str | os.PathLike[str] | bytes] = (),
        after: str | date | datetime | None = None,
        before: str | date | datetime | None = None,
        tag: str | None = None,
        min_probability: float | None = None,
    ) -> Filters:
        """Filters from what a user typed: folders expanded (``~``) and made absolute, dates parsed."""
        roots = []
        for folder in folders:
            if folder in ("", b""):
                continue
            raw = folder if isinstance(folder, bytes) else os.fsencode(os.path.expanduser(os.fspath(folder)))
            roots.append(os.path.abspath(raw).rstrip(b"/") or b"/")
        start, end = _as_datetime(after), _as_datetime(before)
        if start is not None and end is not None and start >= end:
            raise InputPathError("The date range is empty: `after` must be earlier than `before`.")
        probability = DEFAULT_MIN_PROBABILITY if min_probability is None else float(min_probability)
        if not 0.0 <= probability <= 1.0:
            raise InputPathError(f"The tag's least match probability must lie in 0..1, not {min_probability}.")
        return cls(tuple(dict.fromkeys(roots)), start, end, checked(tag or "", "The tag").strip() or None,
                   probability)

    def __bool__(self) -> bool:
        return bool(self.folders or self.after or self.before or self.tag)

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
        return out


NO_FILTERS = Filters()
