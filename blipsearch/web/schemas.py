"""What the HTTP API's routes answer with when they succeed, as pydantic models: the routes use them
as ``response_model``, so the OpenAPI document at ``/openapi.json`` gives each answer's fields and
types, and an answer that strays from its model is a server error rather than a surprise to a
client. The fields are the CLI's ``--json`` ones (see :mod:`blipsearch.results`).

A field that an answer leaves out when it does not apply (a hit's ``match``, a filter not set) is
optional in the document without being nullable: the routes answer with ``exclude_unset``, so such
a field is either there with its type or absent. ``None`` where the CLI prints ``null`` is nullable.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from ..images.formats import FORMAT_EXTENSIONS
from .errors import NOT_BLANK

Id = Annotated[int, Field(ge=1, description="An indexed image's id.")]
Rank = Annotated[int, Field(ge=1, description="1 for the best.")]
Url = Annotated[str, Field(description="An address on this server.")]
LocalTime = Annotated[str, Field(description="ISO 8601 local time without a zone, as the camera or file has it: "
                                             "2024-07-14T18:30:00.")]


class Sort(str, Enum):
    """A match set's order: best first, by capture time, or newest first."""

    score = "score"
    date = "date"
    newest = "-date"


# A format a filter names ("": none, as a form's empty field sends it).
ImageFormat = Enum("ImageFormat", {"any": "", **{name: name for name in FORMAT_EXTENSIONS}},  # type: ignore[misc]
                   type=str)
_DIGITS = re.compile(r"-?[0-9]+")


def _whole(value: object) -> object:
    """A parameter's text as the document's integer: digits, a minus sign at most (pydantic alone would
    also read " 5", "\\n5", "+5", "5.0" and "5_0")."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise PydanticCustomError("int_parsing", "Input should be a valid integer")
    return value


def _real(value: object) -> object:
    """A parameter's text as a number: without the white space around it or the underscores in it that
    pydantic alone would read."""
    if isinstance(value, str) and (value != value.strip() or "_" in value):
        raise PydanticCustomError("float_parsing", "Input should be a valid number")
    return value


# After a parameter's Query or Path in its Annotated (nested, the constraints would leave the document).
WHOLE, REAL = BeforeValidator(_whole), BeforeValidator(_real)
Whole = Annotated[int, WHOLE]  # an item of a list parameter
Absent = SkipJsonSchema[None]  # `X | Absent = None`: a field an answer may leave out, never null


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hit(_Answer):
    """One search result."""

    rank: Rank
    id: Id
    path: str = Field(description="The image file's path on the server.")
    score: float = Field(description="What the ranking used: ITM logit + ITC cosine when reranked, else the ITC "
                                     "cosine; in hybrid search, the reciprocal rank fusion with the full-text ranking.")
    itc: float = Field(description="The ITC cosine of the query and the image.")
    itm: float | None = Field(description="The ITM match probability, when reranked.")
    keyword: float | None = Field(description="Full-text relevance, in hybrid search.")
    match: float | Absent = Field(None, description="In a match set: the match probability that decided it.")
    date: str | Absent = Field(None, description="In a match set: when the photo was taken (else its file time), "
                                                "ISO 8601.")
    thumbnail: Url


class AppliedFilters(_Answer):
    """The filters the answer applied; a filter not set is left out."""

    folders: list[str] | Absent = Field(None, description="Only images below these folders.")
    after: str | Absent = Field(None, description="Taken at or after this local time (ISO 8601).")
    before: str | Absent = Field(None, description="Taken before this local time (ISO 8601).")
    tag: str | Absent = Field(None, description="Only images with this tag.")
    min_probability: float | Absent = Field(None, description="With tag: the least match probability of a stored "
                                                              "label.")
    camera: str | Absent = Field(None, description="The EXIF make and model contain this (lower case).")
    min_size: str | Absent = Field(None, description="At least this wide and high: WIDTHxHEIGHT.")
    extensions: list[str] | Absent = Field(None, description="Only files with these extensions (of the formats "
                                                             "asked for).")
    keywords: list[str] | Absent = Field(None, description="Every one of these keywords (folded).")
    rating: int | Absent = Field(None, description="At least this many stars.")
    label: str | Absent = Field(None, description="This colour label (folded).")
    place: str | Absent = Field(None, description="Taken in this city, region or country (folded).")
    near: list[float] | Absent = Field(None, description="Within within_km of this latitude, longitude.")
    within_km: float | Absent = Field(None, description="With near: the distance, in km.")


class TextTerm(_Answer):
    """A text the query also looks for (positive weight) or away from (negative)."""

    text: str
    weight: float


class ImageTerm(_Answer):
    """An indexed image the query also looks like (positive weight) or unlike (negative)."""

    image: int = Field(description="The image's id, as the text gives it (a search finds no image for an id "
                                   "the library lacks: 404).")
    weight: float


class Understood(_Answer):
    """How the search box's text reads: its search text, terms, and the keys it gave (``null``: not given)."""

    text: str = Field(description="The search text: the words, keys and terms taken out.")
    terms: list[TextTerm | ImageTerm]
    folders: list[str]
    after: str | None
    before: str | None
    tag: str | None
    camera: str | None
    min_size: str | None
    formats: list[str]
    keywords: list[str]
    rating: int | None
    label: str | None
    place: str | None
    near: str | None = Field(description="LAT,LON or LAT,LON,KM as typed.")
    min_match: float | None
    sort: Sort | None
    all: bool | None


class SearchResults(_Answer):
    """The best ``k`` images for a text (after ``offset`` of them)."""

    query: str
    understood: Understood
    k: int
    offset: int
    reranked: bool = Field(description="Whether the ITC candidates were rescored by ITM.")
    filters: AppliedFilters
    matched: int = Field(description="How many images pass the filters: what the search ranked.")
    hits: list[Hit]


class MatchSet(_Answer):
    """Every image that matches a text (``all``), found by scoring the ITC ranking with ITM in growing
    batches until a stopping rule says the rest are unlikely to match."""

    query: str
    understood: Understood
    filters: AppliedFilters
    matches: int
    min_match: float
    sort: Sort
    checked: int = Field(description="Images scored with ITM, the closest by ITC first.")
    searched: int = Field(description="Images the search could reach (those that pass the filters).")
    stopped: Literal["all", "rule", "max-check"] = Field(
        description="all: every image checked; rule: the stopping rule; max-check: the bound.")
    expected_missed: float = Field(description="Matches expected beyond those checked.")
    hits: list[Hit] = Field(description="The matches, each with `match` and `date`.")
    others: list[Hit] = Field(description="The best images checked that did not match.")


class QueryReading(_Answer):
    query: str
    understood: Understood
    filters: AppliedFilters = Field(description="The request's filters narrowed by the text's keys.")
    searches: bool = Field(description="Whether the text searches (words or a text term) or only narrows.")


class ImageSearchResults(_Answer):
    k: int
    offset: int
    filters: AppliedFilters
    hits: list[Hit]


class SimilarImages(_Answer):
    id: Id
    k: int
    offset: int
    filters: AppliedFilters
    hits: list[Hit]


class BrowsedImage(_Answer):
    id: Id
    path: str
    thumbnail: Url


class Browse(_Answer):
    k: int
    offset: int
    filters: AppliedFilters
    images: list[BrowsedImage] = Field(description="The most recently added first.")


class ImageTag(_Answer):
    """A label of the library's vocabulary stored for the image, with why it is (or is not) a tag."""

    label: str
    rank: Rank
    score: float
    itm: float | None = Field(description="The match probability, when reranked.")
    kept: bool = Field(description="Whether it counts as a tag (its match probability is high enough).")


class PlaceName(_Answer):
    city: str | None
    region: str | None
    country: str | None
    country_code: str | None
    name: str = Field(description="'Paris, Île-de-France, France'.")


class ImageDetails(_Answer):
    id: Id
    path: str
    size: int = Field(description="Bytes.")
    width: int | None
    height: int | None
    taken_at: LocalTime | None
    modified: LocalTime
    camera: str | None = Field(description="EXIF make and model.")
    exif: dict[str, Any] | None = Field(description="The EXIF tags kept, by name.")
    content_hash: str
    indexed_at: LocalTime
    tags: list[ImageTag]
    taken_offset: int | None = Field(None, description="The capture time's offset from UTC, in minutes, when known.")
    taken_source: str | None = Field(None, description="Where the capture time came from: DateTimeOriginal, "
                                                       "CreateDate, xmp:CreateDate, ...; none: the file time.")
    taken: str = Field(description="The date as shown: 'taken 2021-04-11 15:47:53 -05:00 (DateTimeOriginal)'.")
    title: str | None = None
    description: str | None = None
    keywords: list[str] | None = Field(None, description="As written; hierarchies joined by '|'.")
    rating: int | None = Field(None, ge=-1, le=5, description="XMP stars, -1 for rejected.")
    label: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    place: PlaceName | None = Field(None, description="Where its GPS position lies.")
    thumbnail: Url
    preview: Url
    original: Url


class Caption(_Answer):
    id: Id
    caption: str


class Answer(_Answer):
    id: Id
    question: str
    answer: str


class TextHit(_Answer):
    """A text of the library matched to an image."""

    rank: Rank
    id: int = Field(description="The text's id.")
    text: str
    score: float = Field(description="ITM logit + ITC cosine when reranked, else the cosine.")
    itc: float
    itm: float | None
    external_id: str | None = Field(description="The id the text was added with.")


class Lookup(_Answer):
    id: Id
    source: Literal["texts", "captions"]
    texts: list[TextHit]


class Status(_Answer):
    """The CLI's ``status --json``."""

    images: int
    vectors: int = Field(description="Searchable vectors.")
    failures: int
    stale: int = Field(description="Images still to embed with the library's model.")
    texts: int
    model: str | None
    model_fingerprint: str | None
    dim: int | None
    family: str | None
    vectors_per_image: int | None
    index: str | None = Field(description="The vector index: exact, or the approximate index's kind; null: none yet.")
    index_nprobe: int | None = Field(None, description="An approximate index: the lists a search scans.")
    index_recall_at_10: float | None = Field(None, description="An approximate index: its recall@10, measured when "
                                                               "built.")
    index_filtered_nprobe: int | None = Field(None, description="The lists a filtered search scans.")
    index_filtered_recall_at_10: float | None = Field(None, description="Its recall@10 for filtered searches.")
    recall_target: float
    library: str
    database: str


class Failure(_Answer):
    path: str
    reason: str


class Failures(_Answer):
    failures: list[Failure]


class TagCount(_Answer):
    label: str
    images: int


class Tags(_Answer):
    tags: list[TagCount] = Field(description="Most used first.")


class Question(BaseModel):
    """The body of an ask."""

    question: str = Field(min_length=1, max_length=500, pattern=NOT_BLANK,
                          examples=["How many people are there?"], description="A question about the image.")


_CACHED = {"ETag": "The content's version (for If-None-Match).",
           "Cache-Control": "Cached for a year when the address carries the version (`?v=`), else revalidated."}


def file_answer(description: str, *media_types: str, headers: dict[str, str] = _CACHED,
                revalidated: bool = True) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that answers with a file's bytes (``media_types``) and ``headers``;
    ``revalidated``: also 304, when If-None-Match names the file's version."""
    said = {name: {"description": text, "required": True, "schema": {"type": "string"}}
            for name, text in headers.items()}
    answers: dict[int | str, dict[str, Any]] = {200: {
        "description": description, "headers": said,
        "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in media_types}}}
    if revalidated:
        answers[304] = {"description": "Not modified: the version If-None-Match names is the file's.",
                        "headers": said}
    return answers
