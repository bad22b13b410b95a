"""What the library answers with: search hits, failures, image details, explanations, and the
kinds of image a query can be."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Union

import numpy as np
from PIL import Image
from PIL.Image import Image as PILImage


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is what the ranking used: ITM logit + ITC cosine when
    reranked (the BLIP paper's score), else the ITC cosine; in hybrid search, the reciprocal
    rank fusion of that ranking with the full-text one."""

    rank: int
    id: int
    path: str
    score: float
    itc: float
    itm: float | None = None  # match probability, softmax of the ITM logits
    keyword: float | None = None  # full-text relevance, in hybrid search
    caption: str | None = None
    answer: str | None = None
    match: float | None = None  # in a match set: the match probability that decided it (``itm``)
    date: str | None = None  # in a match set: when the photo was taken (else its file time), ISO 8601

    def to_dict(self) -> dict[str, Any]:
        """Ranking fields always; ``caption``, ``answer``, ``match`` and ``date`` when they were asked for."""
        out = asdict(self)
        for key in ("caption", "answer", "match", "date"):
            if out[key] is None:
                del out[key]
        return out


@dataclass(frozen=True)
class MatchSet:
    """Every photo whose match probability for the search text is at least ``min_match``, found by
    scoring the ITC ranking with ITM in growing batches until a stopping rule says the rest are
    unlikely to match (see :meth:`blipsearch.search.searcher.Searcher.matches`). Iterating it gives
    the matches, in ``sort`` order; ``others`` are the best of the photos checked that did not match."""

    hits: list[Hit]
    others: list[Hit]
    min_match: float
    sort: str
    checked: int  # photos scored with ITM, the closest by ITC first
    searched: int  # photos the search could reach (those that pass the filters)
    stopped: str  # "all" (every photo checked), "rule" (the stopping rule) or "max-check" (the bound)
    expected_missed: float  # matches beyond those checked, if they are no denser than in the last batch

    def __iter__(self) -> Any:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> Hit:
        return self.hits[index]

    def summary(self) -> dict[str, Any]:
        """The set's counts and how far the search went, for a JSON summary line."""
        return {"matches": len(self.hits), "min_match": self.min_match, "sort": self.sort, "checked": self.checked,
                "searched": self.searched, "stopped": self.stopped,
                "expected_missed": round(self.expected_missed, 2)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "hits": [h.to_dict() for h in self.hits],
                "others": [h.to_dict() for h in self.others]}


@dataclass(frozen=True)
class Failure:
    """A file that could not be indexed. ``retried``: when an index run over its folder reads it
    again: ``"once changed"`` (it could not be decoded: unchanged, it would fail again; ``index
    --retry-failed`` reads it anyway) or ``"every run"`` (it could not be read, or was refused for a
    setting)."""

    path: str
    reason: str
    retried: str = "every run"


@dataclass(frozen=True)
class ImageData:
    """An image given by its bytes (an upload) rather than by a file: used as a query, never stored."""

    data: bytes


# What a query image can be: a file (path), an indexed image (its id), or bytes.
ImageQuery = Union[str, "os.PathLike[str]", bytes, int, ImageData]


@dataclass(frozen=True)
class Explanation:
    """Where the ITM head found a text in a photo: ``heat`` over the ViT's patch grid (summing
    to 1), the pair's match probability ``itm``, and the upright photo it was computed for."""

    heat: np.ndarray
    itm: float
    image: PILImage

    def overlay(self, size: int | None = None) -> PILImage:
        """The photo (longest side ``size``, when given) with the heat map over it."""
        from .images.heat import overlay

        photo = self.image
        if size is not None and max(photo.size) != size:
            scale = size / max(photo.size)
            photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                                 Image.Resampling.LANCZOS)
        return overlay(photo, self.heat)


def _offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "\u2212"  # a minus sign, as a time zone is written
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@dataclass(frozen=True)
class ImageInfo:
    """What the library knows of one indexed image: its file, its capture time and where that came
    from, the metadata its photo manager wrote (title, description, keywords, rating, colour label)
    and where it was taken (GPS position and place)."""

    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    taken_at: datetime | None  # the camera's capture time (its local time), when recorded
    modified: datetime  # the file's modification time, local
    camera: str | None
    exif: dict[str, Any] | None
    content_hash: str
    indexed_at: datetime
    tags: list[dict[str, Any]]
    taken_offset: int | None = None  # minutes from UTC, when the photo says
    taken_source: str | None = None  # the field the capture time came from ("DateTimeOriginal")
    title: str | None = None
    description: str | None = None
    keywords: list[str] = field(default_factory=list)  # as written, hierarchies joined by "|"
    rating: int | None = None  # -1 (rejected) .. 5 stars
    label: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    place: dict[str, str | None] | None = None  # city, region, country, country_code

    @property
    def taken(self) -> str:
        """When the photo was taken, and from what: "taken 2021-04-11 15:47:53 −05:00 (DateTimeOriginal)",
        or its file's modification time when the photo doesn't say."""
        if self.taken_at is None:
            return f"file time {self.modified:%Y-%m-%d %H:%M:%S}"
        zone = f" {_offset(self.taken_offset)}" if self.taken_offset is not None else ""
        source = f" ({self.taken_source})" if self.taken_source else ""
        return f"taken {self.taken_at:%Y-%m-%d %H:%M:%S}{zone}{source}"

    @property
    def place_name(self) -> str | None:
        """"Paris, Île-de-France, France" (a region named as its city said once)."""
        if not self.place:
            return None
        city, region, country = (self.place.get(k) for k in ("city", "region", "country"))
        return ", ".join(p for p in (city, None if region == city else region, country) if p) or None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("taken_at", "modified", "indexed_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        out["taken"] = self.taken
        if self.place:
            out["place"] = {**self.place, "name": self.place_name}
        return out
