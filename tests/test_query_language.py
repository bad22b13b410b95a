"""The search box's query language (blipsearch.search.language): what each query parses to, and the
error each unreadable one gives, with the token's position."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blipsearch.errors import InputPathError
from blipsearch.filters import Filters
from blipsearch.search.language import SEARCH_KEYS, ParsedQuery, help_text, parse_query
from blipsearch.search.query import Term


def Q(text: str = "", *terms: Term, **fields: object) -> ParsedQuery:
    return ParsedQuery(text=text, terms=tuple(terms), **fields)  # type: ignore[arg-type]


def T(text: str, weight: float = 1.0) -> Term:
    return Term(text=text, weight=weight)


def I(image: int, weight: float = 1.0) -> Term:
    return Term(image=image, weight=weight)


PARSED = [
    # plain words and phrases
    ("beach sunset", Q("beach sunset")),
    ("  beach   sunset  ", Q("beach sunset")),
    ("beach\tsunset\nsea", Q("beach sunset sea")),
    ("", Q("")),
    ('"a red car" parked', Q("a red car parked")),
    ('"a   red"  car', Q("a red car")),
    ('say "a \\"quoted\\" word"', Q('say a "quoted" word')),
    ('"back\\\\slash"', Q("back\\slash")),
    ('"C:\\Photos"', Q("C:\\Photos")),
    ('""', Q("")),
    ("don't stop", Q("don't stop")),
    ("t-shirt a*b", Q("t-shirt a*b")),
    ("café crème 東京 夜景", Q("café crème 東京 夜景")),
    # signs and weights
    ("-people", Q("", T("people", -1))),
    ("+sunset", Q("", T("sunset"))),
    ('-"a crowd of people"', Q("", T("a crowd of people", -1))),
    ("2*sunset", Q("", T("sunset", 2))),
    ("-0.5*people", Q("", T("people", -0.5))),
    ('+.5*"red car"', Q("", T("red car", 0.5))),
    ('-"2*x"', Q("", T("2*x", -1))),
    ("-12:30", Q("", T("12:30", -1))),
    ("beach -people +sunset like:3 -crowd", Q("beach", T("people", -1), T("sunset"), I(3), T("crowd", -1))),
    # keys
    ("camera:canon", Q(camera="canon")),
    ('camera:"iPhone 13"', Q(camera="iPhone 13")),
    ("CAMERA:Canon", Q(camera="Canon")),
    ("Tag:Dog", Q(tag="Dog")),
    ('tag:"a \\"b\\""', Q(tag='a "b"')),
    ("after:2024-06 before:2024-09", Q(after="2024-06", before="2024-09")),
    ("before:2024 after:2023", Q(after="2023", before="2024")),
    ("after:2024-07-14T18:30", Q(after="2024-07-14T18:30")),
    ("after:2024-07-14T18:30+02:00", Q(after="2024-07-14T18:30+02:00")),
    ("in:~/Pictures/Trips In:/srv/photos", Q(folders=("~/Pictures/Trips", "/srv/photos"))),
    ('in:"/my photos/2024"', Q(folders=("/my photos/2024",))),
    ("format:heic FORMAT:jpg", Q(formats=("heic", "jpg"))),
    ("format:jpeg,png", Q(formats=("jpeg", "png"))),
    ("size:1920x1080", Q(min_size="1920x1080")),
    ("size:1920X1080", Q(min_size="1920x1080")),
    ("like:1042 unlike:7", Q("", I(1042), I(7, -1))),
    ("like:2*1042 unlike:0.5*7", Q("", I(1042, 2), I(7, -0.5))),
    ("min:0.7", Q(min_match=0.7)),
    ("min:0 all:1", Q(min_match=0.0, all=True)),
    ("min:1", Q(min_match=1.0)),
    ("sort:date", Q(sort="date")),
    ("sort:-date", Q(sort="-date")),
    ("sort:Score", Q(sort="score")),
    ("all:yes", Q(all=True)),
    ("all:NO", Q(all=False)),
    ("all:false", Q(all=False)),
    ("tag:dog sort:date", Q(tag="dog", sort="date")),
    # colon words that are not keys
    ("12:30 sunset", Q("12:30 sunset")),
    ("http://example.com/cat.jpg", Q("http://example.com/cat.jpg")),
    ("10am: coffee", Q("10am: coffee")),
    ('"colour:red"', Q("colour:red")),
    ("über:alles", Q("über:alles")),
    # the whole language at once
    (("beach sunset -people camera:canon after:2024-06 before:2024-09 in:~/Pictures/Trips tag:x "
      "format:heic like:1042 min:0.7 sort:date"),
     Q("beach sunset", T("people", -1), I(1042), folders=("~/Pictures/Trips",), after="2024-06",
       before="2024-09", tag="x", camera="canon", formats=("heic",), min_match=0.7, sort="date")),
]

PLAIN = [
    'colour:red -people "unclosed', '  two  spaces  ', "tag:dog", "2*x", "",
]


@pytest.mark.parametrize(("query", "expected"), PARSED, ids=[repr(q) for q, _ in PARSED])
def test_a_query_parses_to(query: str, expected: ParsedQuery) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize("query", PLAIN)
def test_plain_takes_the_whole_input_as_the_search_text(query: str) -> None:
    assert parse_query(query, plain=True) == Q(query)


ERRORS = [
    # (query, 1-based position, token, part of the reason)
    ("beach colour:red", 7, "colour:red", ("colour is not a search key; keys are after, all, before, camera, "
                                           "format, in, keyword, label, like, min, near, place, rating, size, "
                                           "sort, tag, unlike (to search for "
                                           'the words as typed: --plain, or "Words as typed" on the page).')),
    ("東京 colour:red", 4, "colour:red", "colour is not a search key"),
    ("dogs beach: sand", 6, "beach:", "beach is not a search key"),
    ("mailto:me", 1, "mailto:me", "mailto is not a search key"),
    ("after:yesterday", 1, "after:yesterday", "'yesterday' is not a date"),
    ("x min:2", 3, "min:2", "min takes a match probability from 0 to 1"),
    ("min:nan", 1, "min:nan", "min takes a match probability from 0 to 1"),
    ("cats sort:size", 6, "sort:size", "sort takes score, date or -date, not 'size'."),
    ("all:maybe", 1, "all:maybe", "all takes yes or no"),
    ("size:big", 1, "size:big", "'big' is not a size"),
    ("format:jpeg format:xyz", 13, "format:xyz", "'xyz' is not an image format"),
    ("format:,", 1, "format:,", "format: has no value"),
    ("dog tag:", 5, "tag:", "tag: has no value; write tag:LABEL."),
    ('camera:""', 1, 'camera:""', "camera: has no value"),
    ('a "red car', 3, '"red car', "the quote at character 3 is not closed."),
    ('camera:"iphone 13', 1, 'camera:"iphone 13', "the quote at character 8 is not closed."),
    ("-tag:dog", 1, "-tag:dog", "a search key takes no sign or weight"),
    ("2*like:1042", 1, "2*like:1042", "a search key takes no sign or weight"),
    ("camera:canon CAMERA:nikon", 14, "CAMERA:nikon", "camera is given already at character 1, and takes one value."),
    ("after:2025 before:2024", 12, "before:2024", "the date range is empty"),
    ("0*sunset", 1, "0*sunset", "a query term's weight must be a nonzero number"),
    ("rock - paper", 6, "-", "a query text is empty."),
    ("like:/no/such/file.jpg", 1, "like:/no/such/file.jpg", "/no/such/file.jpg is not a file"),
    ('tag:"a\x00b"', 1, 'tag:"a\x00b"', "the tag holds a NUL character"),
    ("colour:" + "r" * 100, 1, "colour:" + "r" * 50 + "...", "colour is not a search key"),
]


@pytest.mark.parametrize(("query", "position", "token", "reason"), ERRORS, ids=[repr(e[0]) for e in ERRORS])
def test_an_unreadable_query_names_the_token_and_where_it_is(query: str, position: int, token: str,
                                                             reason: str) -> None:
    with pytest.raises(InputPathError) as caught:
        parse_query(query)
    message = str(caught.value)
    prefix = f'At character {position}, "{token}": '
    assert message.startswith(prefix), message
    assert reason in message[len(prefix):], message
    assert message.endswith(".") and "\n" not in message, message


def test_the_example_error_reads_in_full() -> None:
    with pytest.raises(InputPathError) as caught:
        parse_query("beach sunset colour:red")
    assert str(caught.value) == (
        'At character 14, "colour:red": colour is not a search key; keys are after, all, before, camera, format, '
        "in, keyword, label, like, min, near, place, rating, size, sort, tag, unlike (to search for the words as "
        "typed: --plain, or "
        '"Words as typed" on the page).')


def test_images_given_as_paths(tmp_path: Path) -> None:
    photo, other = tmp_path / "beach.jpg", tmp_path / "my photo.png"
    photo.write_bytes(b"x")
    other.write_bytes(b"x")
    parsed = parse_query(f'sea like:{photo} unlike:"{other}" like:2*{photo}')
    assert parsed == Q("sea", Term(image=os.fsencode(photo)), Term(image=os.fsencode(other), weight=-1.0),
                       Term(image=os.fsencode(photo), weight=2.0))
    assert parsed.to_dict()["terms"] == [{"image": str(photo), "weight": 1.0},
                                         {"image": str(other), "weight": -1.0},
                                         {"image": str(photo), "weight": 2.0}]


def test_filters_are_those_filters_make_makes(tmp_path: Path) -> None:
    parsed = parse_query(f"dog in:~/Pictures in:{tmp_path} after:2024-06 before:2024-09 tag:Beach "
                         'camera:"iPhone 13" size:1920x1080 format:heic format:JPG')
    made = Filters.make(folders=["~/Pictures", str(tmp_path)], after="2024-06", before="2024-09", tag="Beach",
                        camera="iPhone 13", min_size="1920x1080", formats=["heic", "JPG"])
    assert parsed.filters() == made
    assert made.folders == (os.fsencode(os.path.expanduser("~/Pictures")), os.fsencode(tmp_path))
    assert made.extensions == (".heic", ".heif", ".jpg", ".jpeg", ".jpe")
    assert parse_query("dog sort:date").filters() == Filters()


def test_to_dict_is_json_and_echoes_every_field() -> None:
    parsed = parse_query('cat -dog 2*"a toy" like:5 in:/p format:png after:2024 tag:t camera:c size:10x20 '
                         "min:0.25 sort:-date all:true")
    assert json.loads(json.dumps(parsed.to_dict())) == {
        "text": "cat", "terms": [{"text": "dog", "weight": -1.0}, {"text": "a toy", "weight": 2.0},
                                 {"image": 5, "weight": 1.0}],
        "folders": ["/p"], "after": "2024", "before": None, "tag": "t", "camera": "c", "min_size": "10x20",
        "formats": ["png"], "keywords": [], "rating": None, "label": None, "place": None, "near": None,
        "min_match": 0.25, "sort": "-date", "all": True}


def test_help_names_every_key() -> None:
    assert sorted(SEARCH_KEYS) == ["after", "all", "before", "camera", "format", "in", "keyword", "label", "like",
                                   "min", "near", "place", "rating", "size", "sort", "tag", "unlike"]
    text = help_text()
    for key, line in SEARCH_KEYS.items():
        assert line.startswith(f"{key}:") and "\n" not in line
        assert f"  {line}\n" in text
    assert "--plain" in text and "12:30" in text


def test_the_parser_loads_nothing_heavy() -> None:
    code = ("import sys, blipsearch.search.language; "
            "print(sorted(m for m in ('numpy', 'torch', 'sqlalchemy', 'PIL', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
