"""The search box's query language: one line of words, phrases, signs and keys, parsed into a search.

``beach sunset -people camera:canon after:2024-06 before:2024-09 in:~/Pictures/Trips sort:date``

* Plain words are the search text, joined by single spaces in the order typed. ``"a red car"`` is a
  phrase: its words join the search text, or it is one value (``camera:"iphone 13"``).
* ``-word`` / ``-"a phrase"`` is a negative text term (``--not``), ``+word`` a positive one (``--and``);
  ``2*sunset``, ``+2*sunset`` and ``-0.5*people`` weigh one (:func:`~.query.weighted`'s reading).
* ``KEY:VALUE`` narrows or steers the search; :data:`SEARCH_KEYS` lists the keys. ``in:``, ``keyword:`` and
  ``format:`` may repeat (``format:jpeg,png`` too), ``like:``/``unlike:`` too (an image's id or a file, as
  :func:`~.query.image_term` reads it, ``like:2*1042`` weighted); any other key is given at most once.
  Keys are case-insensitive, values keep their case (``sort:`` and ``all:`` values are read in any case).

Quoting: only double quotes quote; inside them ``\\"`` is a quote and ``\\\\`` a backslash, any other
backslash is itself (``"C:\\Photos"``). Quoted parts join the unquoted ones next to them into one token.
An unclosed quote is an error. Apostrophes are letters (``don't``).

Which words are keys: a token is a key when its unquoted start is ASCII letters and a colon
(``[A-Za-z]+:``) not followed by ``//``. So ``12:30``, ``10am:``, ``über:x`` and ``http://x.org`` are
plain words, as is anything quoted (``"colour:red"``); ``colour:red`` and ``beach:`` are errors, never a
silent plain-text search. Keys take no sign or weight in front (``-tag:dog`` is an error).

Errors are :class:`~blipsearch.errors.InputPathError`, one sentence naming the token's 1-based character
position and the token. Values are checked as :meth:`Filters.make <blipsearch.filters.Filters.make>`
and :func:`~.query.image_term` check them, token by token. ``plain=True`` (``--plain``) takes the whole
input as the search text, nothing parsed. A query of keys only has an empty search text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

from ..errors import InputPathError
from ..filters import Filters
from ..text import checked
from .query import Term, image_term, weighted

SEARCH_KEYS: dict[str, str] = {
    "after": "after:DATE  taken at or after the start of DATE: 2024, 2024-06, 2024-06-15, 2024-06-15T18:30",
    "all": "all:yes  every photo that matches (a match set) rather than the best k; yes|no|true|false|1|0",
    "before": "before:DATE  taken before the start of DATE",
    "camera": 'camera:TEXT  the EXIF camera (make and model) contains TEXT, any case: canon, "iphone 13"',
    "format": "format:NAME  of this format: jpeg, png, heic, webp, ... (repeatable, or comma-separated)",
    "in": "in:FOLDER  below this folder, ~ for home (repeatable)",
    "keyword": 'keyword:WORD  has this keyword or level of one, any case and accents: paris, "new york" '
               "(repeatable: all of them)",
    "label": "label:TEXT  has this colour label, any case: red",
    "like": "like:IMAGE  also look like this image: an indexed image's id or a file (like:2*ID weighs it)",
    "near": "near:LAT,LON  taken within 1 km of this position, in decimal degrees (near:LAT,LON,KM within KM)",
    "min": "min:P  with all: the least match probability, 0 to 1 (e.g. min:0.7)",
    "place": 'place:NAME  taken in this city, region or country, or country code: paris, "ile-de-france", fr',
    "rating": "rating:N  rated at least N stars, 0 to 5 (rating:0 leaves out only the rejected)",
    "size": "size:WxH  at least W pixels wide and H high: size:1920x1080",
    "sort": "sort:ORDER  with all: score (best first), date (oldest first) or -date (newest first)",
    "tag": "tag:LABEL  tagged with LABEL (index --tags)",
    "unlike": "unlike:IMAGE  look away from this image",
}
SORTS = ("score", "date", "-date")  # as the searcher's match sets sort
_YES_NO = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
_REPEATABLE = {"in", "format", "like", "unlike", "keyword"}
_KEY = re.compile(r"([A-Za-z]+):(?!//)")
_SHOWN = 60  # characters of a token an error message shows


@dataclass(frozen=True)
class ParsedQuery:
    """What one line of the query language asks for."""

    text: str  # the search text
    terms: tuple[Term, ...]  # +/- texts and like/unlike images, in the order typed
    folders: tuple[str, ...] = ()
    after: str | None = None  # as typed, validated with parse_date
    before: str | None = None
    tag: str | None = None
    camera: str | None = None
    min_size: str | None = None  # "WxH", validated
    formats: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()  # as typed
    rating: int | None = None
    label: str | None = None
    place: str | None = None
    near: str | None = None  # "LAT,LON" or "LAT,LON,KM", validated
    min_match: float | None = None
    sort: str | None = None  # "score" | "date" | "-date"
    all: bool | None = None

    def filters(self) -> Filters:
        return Filters.make(folders=self.folders, after=self.after, before=self.before, tag=self.tag,
                            camera=self.camera, min_size=self.min_size, formats=self.formats,
                            keyword=self.keywords, rating=self.rating, label=self.label, place=self.place,
                            near=self.near)

    def narrow(self, filters: Filters) -> Filters:
        """``filters`` (a command's options, a request's parameters) with the keys' added: the keys'
        folders and keywords besides the given ones, each other key in place of the given value."""
        made, empty = self.filters(), Filters()
        given = {f.name: getattr(made, f.name) for f in fields(Filters) if f.name != "min_probability"
                 and getattr(made, f.name) != getattr(empty, f.name)}
        if "folders" in given:
            given["folders"] = tuple(dict.fromkeys(filters.folders + given["folders"]))
        if "keywords" in given:
            given["keywords"] = tuple(dict.fromkeys(filters.keywords + given["keywords"]))
        if "near" in given and "within_km" not in given and self.near and self.near.count(",") == 1:
            given["within_km"] = made.within_km  # near:LAT,LON is 1 km, whatever --within said
        return replace(filters, **given)

    @property
    def searches(self) -> bool:
        """Whether it asks for a search: it has words or a text term (keys alone only narrow)."""
        return bool(self.text.strip()) or any(t.text is not None for t in self.terms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, every field present: for the HTTP API to echo what it understood."""
        return {"text": self.text, "terms": [_term_dict(t) for t in self.terms], "folders": list(self.folders),
                "after": self.after, "before": self.before, "tag": self.tag, "camera": self.camera,
                "min_size": self.min_size, "formats": list(self.formats), "keywords": list(self.keywords),
                "rating": self.rating, "label": self.label, "place": self.place, "near": self.near,
                "min_match": self.min_match,
                "sort": self.sort, "all": self.all}


def _term_dict(term: Term) -> dict[str, Any]:
    if term.text is not None:
        return {"text": term.text, "weight": term.weight}
    image = term.image if isinstance(term.image, int) else os.fsdecode(term.image or b"")
    return {"image": image, "weight": term.weight}


class _Token(NamedTuple):
    start: int  # 0-based, in the input
    raw: str  # as typed
    head: str  # the unquoted part before the first quote
    value: str  # the whole token, quotes taken out


def _error(start: int, raw: str, why: str) -> InputPathError:
    shown = raw if len(raw) <= _SHOWN else raw[: _SHOWN - 3] + "..."
    return InputPathError(f'At character {start + 1}, "{shown}": {why}')


def _because(exc: InputPathError) -> str:
    """Another check's message, to go on after a comma."""
    why = str(exc)
    return why[0].lower() + why[1:] if why[:1].isupper() and not why[1:2].isupper() else why


def _tokens(text: str) -> Iterator[_Token]:
    """The whitespace-separated tokens of ``text``, double quotes joining and escaping as described above."""
    i, n = 0, len(text)
    parts: list[str]
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start, parts = i, []
        head: str | None = None  # set at the first quote
        while i < n and not text[i].isspace():
            if text[i] != '"':
                parts.append(text[i])
                i += 1
                continue
            if head is None:
                head = "".join(parts)
            quote, i = i, i + 1
            while i < n and text[i] != '"':
                escaped = text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\'
                parts.append(text[i + 1] if escaped else text[i])
                i += 2 if escaped else 1
            if i >= n:
                raise _error(start, text[start:], f"the quote at character {quote + 1} is not closed.")
            i += 1
        value = "".join(parts)
        yield _Token(start, text[start:i], value if head is None else head, value)


def parse_query(text: str, *, plain: bool = False) -> ParsedQuery:
    """``text`` in the query language (see the module's docstring); ``plain``: all of it is the search text."""
    checked(text, "The query")
    if plain:
        return ParsedQuery(text=text, terms=())
    words: list[str] = []
    terms: list[Term] = []
    found: dict[str, Any] = {"folders": [], "formats": [], "keywords": []}
    given: dict[str, int] = {}  # a key -> where it was first given
    for token in _tokens(text):
        head, value = token.head, token.value
        sign = {"-": -1.0, "+": 1.0}.get(head[:1])
        if sign is not None:
            head, value = head[1:], value[1:]
        weight, rest = weighted(head)
        has_weight = rest != head
        key = _KEY.match(head[len(head) - len(rest):] if has_weight else head)
        if key and (sign is not None or has_weight):
            raise _error(token.start, token.raw, "a search key takes no sign or weight in front of it (weigh "
                                                 "an image as like:2*ID, and look away from one with unlike:ID).")
        name = key[1].lower() if key else ""
        if name in given and name not in _REPEATABLE:
            raise _error(token.start, token.raw, f"{name} is given already at character {given[name] + 1}, "
                                                 "and takes one value.")
        try:
            if key:
                _read_key(name, value[key.end():], found, terms)
                given.setdefault(name, token.start)
            elif sign is not None or has_weight:
                rest_value = value[len(head) - len(rest):] if has_weight else value
                terms.append(Term(text=rest_value, weight=(sign or 1.0) * weight))
            else:
                words += value.split()
        except InputPathError as exc:
            raise _error(token.start, token.raw, _because(exc)) from None
    return ParsedQuery(text=" ".join(words), terms=tuple(terms), folders=tuple(found.pop("folders")),
                       formats=tuple(found.pop("formats")), keywords=tuple(found.pop("keywords")), **found)


def _read_key(key: str, value: str, found: dict[str, Any], terms: list[Term]) -> None:
    """Check ``key``'s ``value`` and record it in ``found`` (ParsedQuery's fields) or ``terms``."""
    if key not in SEARCH_KEYS:
        raise InputPathError(f"{key} is not a search key; keys are {', '.join(sorted(SEARCH_KEYS))} (to search for "
                             "the words as typed: --plain, or \"Words as typed\" on the page).")
    if not value.strip() or (key == "format" and not value.replace(",", "").strip()):
        raise InputPathError(f"{key}: has no value; write {SEARCH_KEYS[key].split()[0]}.")
    if key in ("like", "unlike"):
        terms.append(image_term(value, 1.0 if key == "like" else -1.0))
    elif key == "in":
        Filters.make(folders=[value])
        found["folders"].append(value)
    elif key == "format":
        names = [name for name in value.split(",") if name.strip()]
        Filters.make(formats=names)
        found["formats"] += names
    elif key in ("after", "before"):
        dates = {"after": found.get("after"), "before": found.get("before"), key: value}
        Filters.make(**dates)  # a valid date, and with the other one a range that is not empty
        found[key] = value
    elif key == "size":
        made = Filters.make(min_size=value)
        found["min_size"] = f"{made.min_width}x{made.min_height}"
    elif key in ("tag", "camera", "label", "place"):
        Filters.make(**{key: value})
        found[key] = value
    elif key == "keyword":
        Filters.make(keyword=value)
        found["keywords"].append(value)
    elif key == "rating":
        found["rating"] = Filters.make(rating=value.strip()).rating
    elif key == "near":
        Filters.make(near=value)
        found["near"] = value.strip()
    elif key == "min":
        try:
            probability = float(value)
        except ValueError:
            probability = float("nan")
        if not 0.0 <= probability <= 1.0:
            raise InputPathError(f"min takes a match probability from 0 to 1, such as min:0.7, not {value!r}.")
        found["min_match"] = probability
    elif key == "sort":
        if value.lower() not in SORTS:
            raise InputPathError(f"sort takes {', '.join(SORTS[:-1])} or {SORTS[-1]}, not {value!r}.")
        found["sort"] = value.lower()
    else:  # all
        if value.lower() not in _YES_NO:
            raise InputPathError(f"all takes yes or no (true, false, 1, 0), not {value!r}.")
        found["all"] = _YES_NO[value.lower()]


def help_rows() -> list[tuple[str, str]]:
    """Each key's syntax and meaning, for the page's help table."""
    return [tuple(line.split("  ", 1)) for line in SEARCH_KEYS.values()]  # type: ignore[misc]


def help_text() -> str:
    """The language in a few lines, with examples: for --help, the README and the page's "?"."""
    keys = "\n".join(f"  {line}" for line in SEARCH_KEYS.values())
    return (
        'Words are the search text; "a phrase" in double quotes stays together (\\" is a quote in it).\n'
        "-word or -\"a phrase\" looks away from a text, +word adds one, 2*word or -0.5*word weighs it.\n"
        f"KEY:VALUE narrows the search (keys in any case, values quoted when they hold spaces):\n{keys}\n"
        "A word is a key only when it starts with letters and a colon: 12:30 and http://x.org stay words,\n"
        'and so does anything quoted ("colour:red"); an unknown key is an error. --plain (on the page,\n'
        '"Words as typed") takes all of it as typed.\n'
        "Examples:\n"
        "  beach sunset -people camera:canon after:2024-06 before:2024-09\n"
        '  "a red car" in:~/Pictures/Trips format:heic size:1920x1080 camera:"iphone 13"\n'
        "  a dog on the beach all:yes min:0.7 sort:-date like:1042 unlike:~/blurry.jpg\n"
        '  sunset place:lisbon keyword:family rating:4 label:red near:38.69,-9.21,2'

    )
