"""Hostile texts and arguments: every text that reaches the full-text engine or SQL is data.

A fixed list of hostile texts (FTS5 and PostgreSQL query syntax, SQL, LIKE wildcards, 100 KB
of text, NUL and control characters, lone surrogates, right-to-left text, combining marks,
emoji, empty strings) goes through every entry point that takes text: the Python API, the
command line (click's runner, ``--json``) and the HTTP API. Each must answer with a result or
one clear sentence (a ``BlipsearchError``; exit code 1 or 2 with ``Error: ...``; HTTP 4xx with
a JSON message), never a traceback, an SQL error or HTTP 500. Hypothesis then feeds arbitrary
text to the full-text query path and the filters, and arbitrary numbers, strings and paths to
the command line's arguments. ``benchmarks/reliability/hostile.py`` runs the same drivers and
counts the outcomes.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from blipsearch import Library
from blipsearch.errors import BlipsearchError
from blipsearch.filters import Filters
from blipsearch.options import AnswerSettings, CaptionSettings
from blipsearch.search.query import text_term
from blipsearch.store.fulltext import TextIndex, query_words
from blipsearch.texts import TextEntry

MODEL = "builtin:shapes"
QUERY = "a red circle left of a blue square"
QUESTION = "what shape is on the left?"

# -- the hostile texts ------------------------------------------------------------------------------
HOSTILE_TEXTS: list[tuple[str, str]] = [
    # FTS5 query syntax
    ("double quote", '"'), ("single quote", "'"), ("star", "*"), ("caret", "^"), ("minus", "-"),
    ("plus", "+"), ("colon", ":"), ("open paren", "("), ("close paren", ")"),
    ("NEAR group", "NEAR(a b, 3)"), ("NEAR words", "red NEAR circle"), ("OR", "a OR b"), ("NOT", "NOT"),
    ("AND", "AND"), ("column filter", "caption:dog"),
    ("column set", "{path name}: x"), ("unbalanced quote", '"unbalanced'), ("prefix", "red*"),
    ("minus column", "- caption : red"),
    # SQL and LIKE
    ("drop table", "'; DROP TABLE images; --"), ("or 1=1", '" OR 1=1 --'), ("percent", "%"),
    ("underscore", "_"), ("backslash", "\\"), ("like wildcards", "%_\\%[a-z]"),
    # PostgreSQL tsquery syntax
    ("tsquery", "a & !b | c:*"), ("followed by", "<->"), ("phrase", "red <2> circle"),
    ("weights", "red:AB & 'circle':*"),
    # size
    ("100 KB of one query", (QUERY + " ") * (100_000 // (len(QUERY) + 1))),
    ("100 KB of distinct words", " ".join(f"w{i}" for i in range(17_000))[:100_000]),
    ("100 KB of one word", "x" * 100_000),
    # NUL and control characters
    ("NUL inside", "red\x00circle"), ("NUL alone", "\x00"), ("C0 controls", "\x01\x02\x03\x07\x08\x7f"),
    ("tab newline CR", "red\tcircle\nsquare\r"), ("ANSI escape", "\x1b[31mred\x1b[0m circle"),
    ("C1 controls", "\x85\x9b\x9c"),
    # lone surrogates (bytes that are not UTF-8, as Python keeps them from a shell)
    ("surrogate escape", "\udcff"), ("surrogate inside", "red \udce9 circle"), ("lone high surrogate", "\ud800"),
    # other scripts and symbols
    ("RTL marks", "\u200fred\u200e circle\u202e"), ("Arabic", "دائرة حمراء"), ("Hebrew", "עיגול אדום"),
    ("combining marks", "e\u0301\u0301\u0301 ci\u0327rcle"), ("emoji", "🔴 ⭕ 🟦"),
    ("ZWJ sequence", "👩\u200d👩\u200d👧\u200d👦"), ("BOM", "\ufeffred circle"),
    ("line separators", "red\u2028circle\u2029"), ("case folding", "ǅ ß İ ﬁ ² Ⅻ"),
    # empty
    ("empty", ""), ("space", " "), ("whitespace", "\t\n \r"), ("ideographic space", "\u3000"),
    ("zero-width space", "\u200b"),
]
TEXTS = [t for _, t in HOSTILE_TEXTS]
NAMES = [n for n, _ in HOSTILE_TEXTS]

def _examples(n: int) -> int:
    """Hypothesis examples per test: sized for a run of about 40 s; HOSTILE_SCALE=10 searches longer."""
    return max(1, int(n * float(os.environ.get("HOSTILE_SCALE", "1"))))


# What an error message must never show: the text is data, never part of a query.
LEAKS = ("Traceback", "OperationalError", "ProgrammingError", "DataError", "IntegrityError", "syntax error",
         "fts5", "sqlite3", "psycopg", "Database error", "Internal Server Error")


class Failure(AssertionError):
    """An entry point answered a hostile input with a traceback, an SQL error or a server error."""


def clear(message: str, given: str = "") -> None:
    """``message`` is one clear sentence: not empty, no traceback, no database's own error."""
    if not message.strip():
        raise Failure("an empty error message")
    leaked = [w for w in LEAKS if w in message and w not in given]
    if leaked:
        raise Failure(f"the message shows {leaked}: {message[:500]}")


def encoded(text: str) -> bytes:
    """``text`` as the bytes a shell, a file or a URL would carry (lone surrogates as themselves)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


# -- the library every test shares ------------------------------------------------------------------
@dataclass
class World:
    lib: Library
    photos: Path  # the demo pictures' folder
    image: Path  # one indexed picture
    image_id: int
    tmp: Path
    cli_lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = make_world(tmp_path_factory.mktemp("hostile"))
    yield w
    w.lib.close()


def make_world(root: Path, database: str | None = None) -> World:
    """Twelve demo pictures indexed with the built-in model, captioned and tagged, two texts."""
    from blipsearch.shapes.world import generate, write_folder

    write_folder(root / "demo", generate("test", 12, 1))
    photos = root / "demo" / "images"
    lib = Library(root / "library", db_url=database, model=MODEL, device="cpu")
    lib.index([photos])
    lib.caption_library()
    lib.tag_library(["red circle", "blue square"])
    lib.add_texts([TextEntry("a red circle"), TextEntry("a blue square", "sku-1")])
    image = min(photos.glob("*.png"))
    row = lib.db.image_by_path(os.fsencode(image))
    assert row is not None
    return World(lib, photos, image, row.id, root)


# -- the Python API ---------------------------------------------------------------------------------
def _add_lookup_remove(w: World, text: str) -> None:
    try:
        w.lib.add_texts([TextEntry(text, external_id=text)])
        w.lib.lookup(w.image, 3, rerank_depth=2)
    finally:
        w.lib.remove_texts([text]) if "\0" not in text and _utf8(text) else None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


API: dict[str, Callable[[World, str], object]] = {
    "Library.search": lambda w, t: w.lib.search(t, 3, rerank_hits=False),
    "Library.search hybrid": lambda w, t: w.lib.search(t, 3, rerank_hits=False, hybrid=True),
    "Library.search hybrid reranked": lambda w, t: w.lib.search(t, 3, rerank_depth=1, hybrid=True),
    "Library.search terms": lambda w, t: w.lib.search(QUERY, 3, rerank_depth=1, terms=[text_term(t), text_term(t, -1)]),
    "filter camera": lambda w, t: w.lib.search(QUERY, 3, rerank_hits=False, filters=Filters.make(camera=t)),
    "filter tag": lambda w, t: w.lib.search(QUERY, 3, rerank_hits=False, tag=t),
    "filter folder": lambda w, t: w.lib.count(Filters.make(folders=[t])),
    "filter dates": lambda w, t: w.lib.count(Filters.make(after=t)) + w.lib.count(Filters.make(before=t)),
    "filter size and format": lambda w, t: w.lib.count(Filters.make(min_size=t)) + w.lib.count(
        Filters.make(formats=[t])),
    "Library.recent filtered": lambda w, t: w.lib.recent(5, filters=Filters.make(camera=t, tag=t)),
    "TextIndex.search": lambda w, t: TextIndex(w.lib.db).search(t, 10),
    "texts add, lookup, remove": _add_lookup_remove,
    "Library.tag labels": lambda w, t: w.lib.tag([w.image], [t, "red circle"], k=2, rerank_depth=2),
    # Greedy decoding: the question and the prompt are what is tested, not the beam search.
    "Library.ask": lambda w, t: w.lib.ask([w.image], t, AnswerSettings(num_beams=1)),
    "Library.caption prompt": lambda w, t: w.lib.caption([w.image], CaptionSettings(prompt=t, num_beams=1,
                                                                                    max_length=40)),
    "Library.explain": lambda w, t: w.lib.explain(w.image_id, t),
}


def run_api(w: World, entry: str, text: str) -> str:
    """``"result"`` or ``"error"`` (a clear sentence); a :class:`Failure` or any other exception otherwise."""
    try:
        API[entry](w, text)
    except BlipsearchError as exc:
        clear(str(exc), text)
        return "error"
    return "result"


# -- the command line -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLIPSEARCH_IN_PROCESS", "1")  # never hand a command to a server someone runs


def invoke(args: list[str], w: World | None = None) -> Result:
    """Run the command line in this process. With ``w``, every command opens ``w``'s library
    object (its models stay loaded between calls); without, the command opens what it is told."""
    from blipsearch import cli
    from blipsearch.cli import options

    runner = CliRunner()
    if w is None:
        return runner.invoke(cli.main, args, catch_exceptions=True)
    real = options._open
    with w.cli_lock:
        options._open = lambda *a, **k: w.lib  # type: ignore[assignment]
        try:
            return runner.invoke(cli.main, args, catch_exceptions=True)
        finally:
            options._open = real  # type: ignore[assignment]


def cli_outcome(result: Result, given: str = "") -> str:
    """``"result"`` (exit 0) or ``"error"`` (exit 1 or 2 with one clear sentence); else a Failure."""
    output = result.output or ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise Failure(f"{type(result.exception).__name__}: {result.exception}") from result.exception
    if result.exit_code == 0:
        clear_output = [w for w in LEAKS if w in output and w not in given]
        if clear_output:
            raise Failure(f"exit 0, but the output shows {clear_output}")
        return "result"
    if result.exit_code not in (1, 2):
        raise Failure(f"exit code {result.exit_code}: {output[-500:]}")
    if "Error:" not in output:
        raise Failure(f"exit {result.exit_code} without a message: {output[-500:]}")
    clear(output[output.rindex("Error:"):], given)
    return "error"


def _text_file(w: World, text: str, name: str) -> str:
    path = w.tmp / name
    path.write_bytes(encoded(text) + b"\n")
    return str(path)


def _texts_add_remove(w: World, t: str) -> list[Result]:
    path = w.tmp / "texts.jsonl"  # the text as its own id, to remove it by
    path.write_text(json.dumps({"id": t, "text": t}) + "\n")
    added = invoke(["texts", "add", str(path), "--json"], w)
    return [added] if added.exit_code else [added, invoke(["texts", "remove", t], w)]


CLI: dict[str, Callable[[World, str], list[Result]]] = {
    "search": lambda w, t: [invoke(["search", t, "--no-rerank", "--json"], w)],
    "search --hybrid": lambda w, t: [invoke(["search", t, "--hybrid", "--rerank-depth", "1", "--json"], w)],
    "search --and --not": lambda w, t: [invoke(["search", QUERY, "--and", t, "--not", t, "--no-rerank",
                                                "--json"], w)],
    "search --camera": lambda w, t: [invoke(["search", QUERY, "--camera", t, "--no-rerank", "--json"], w)],
    "search --tag": lambda w, t: [invoke(["search", QUERY, "--tag", t, "--no-rerank", "--json"], w)],
    "search --folder": lambda w, t: [invoke(["search", QUERY, "--folder", t, "--no-rerank", "--json"], w)],
    "search --after --before": lambda w, t: [invoke(["search", QUERY, "--after", t, "--no-rerank", "--json"], w),
                                             invoke(["search", QUERY, "--before", t, "--no-rerank", "--json"], w)],
    "search --min-size --format": lambda w, t: [invoke(["search", QUERY, "--min-size", t, "--no-rerank"], w),
                                                invoke(["search", QUERY, "--format", t, "--no-rerank"], w)],
    "search --ask --answer": lambda w, t: [invoke(["search", QUERY, "-k", "1", "--no-rerank", "--ask", t,
                                                   "--answer", t, "--json"], w)],
    "similar --camera": lambda w, t: [invoke(["similar", str(w.image), "--camera", t, "--json"], w)],
    "duplicates --tag": lambda w, t: [invoke(["duplicates", "--tag", t, "--json"], w)],
    "ask": lambda w, t: [invoke(["ask", str(w.image), t, "--beams", "1", "--json"], w)],
    "caption --prompt": lambda w, t: [invoke(["caption", str(w.image), "--prompt", t, "--beams", "1",
                                              "--max-length", "40", "--json"], w)],
    "explain": lambda w, t: [invoke(["explain", str(w.image), t, "--out", str(w.tmp / "heat.png"), "--size", "16"],
                                    w)],
    "texts add, remove": _texts_add_remove,
    "tag --labels": lambda w, t: [invoke(["tag", str(w.image), "--labels", _text_file(w, t, "labels.txt"),
                                          "--json"], w)],
    "ask --choices": lambda w, t: [invoke(["ask", str(w.image), QUESTION, "--beams", "1", "--choices",
                                           _text_file(w, t, "choices.txt"), "--json"], w)],
}


def run_cli(w: World, entry: str, text: str) -> str:
    outcomes = [cli_outcome(r, text) for r in CLI[entry](w, text)]
    return "result" if all(o == "result" for o in outcomes) else "error"


# -- the HTTP API -----------------------------------------------------------------------------------
def client(w: World):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from blipsearch.web import ServeSettings, create_app

    return TestClient(create_app(w.lib, ServeSettings(warm=False)), base_url="http://127.0.0.1:8000",
                      raise_server_exceptions=False)


# Clients refuse longer addresses (httpx: 64 KB, percent-encoded up to 3 characters a byte); a server
# takes far less (the search text: 2,000 characters). Each value is cut to its first bytes.
URL_BYTES = 5_000


def _url(path: str, **params: str) -> str:
    """A query string carrying the text's bytes as they are (HTTP carries bytes, not Python strings)."""
    return path + "?" + "&".join(f"{k}={quote(encoded(v)[:URL_BYTES], safe='')}" for k, v in params.items())


HTTP: dict[str, Callable[[Any, World, str], Any]] = {
    "GET /api/search": lambda c, w, t: c.get(_url("/api/search", q=t, no_rerank="true")),
    "GET /api/search hybrid": lambda c, w, t: c.get(_url("/api/search", q=t, hybrid="true", rerank_depth="1")),
    "GET /api/search and, not": lambda c, w, t: c.get(_url("/api/search", q=QUERY, **{"and": t, "not": t},
                                                           no_rerank="true")),
    "GET /api/search camera, tag": lambda c, w, t: c.get(_url("/api/search", q=QUERY, camera=t, tag=t,
                                                              no_rerank="true")),
    "GET /api/search folder, dates": lambda c, w, t: c.get(_url("/api/search", q=QUERY, folder=t, after=t,
                                                                no_rerank="true")),
    "GET /api/search size, format": lambda c, w, t: c.get(_url("/api/search", q=QUERY, min_size=t, format=t,
                                                               no_rerank="true")),
    "GET /api/images filtered": lambda c, w, t: c.get(_url("/api/images", camera=t, before=t)),
    "GET /api/images/{id}/similar filtered": lambda c, w, t: c.get(_url(f"/api/images/{w.image_id}/similar",
                                                                        tag=t, folder=t)),
    "POST /api/images/{id}/ask": lambda c, w, t: c.post(f"/api/images/{w.image_id}/ask",
                                                        content=json.dumps({"question": t}),
                                                        headers={"content-type": "application/json"}),
    "GET /api/images/{id}/explain": lambda c, w, t: c.get(_url(f"/api/images/{w.image_id}/explain", q=t)),
}


def run_http(c: Any, w: World, entry: str, text: str) -> str:
    response = HTTP[entry](c, w, text)
    if response.status_code >= 500:
        raise Failure(f"HTTP {response.status_code}: {response.text[:500]}")
    if response.status_code < 400:
        return "result"
    try:
        body = response.json()
    except ValueError:
        raise Failure(f"HTTP {response.status_code} without a JSON body: {response.text[:200]}") from None
    message = body.get("error") or body.get("detail") if isinstance(body, dict) else None
    if not isinstance(message, str):
        raise Failure(f"HTTP {response.status_code} without a message: {response.text[:200]}")
    clear(message, text)
    return "error"


# -- the fixed list through every entry point -------------------------------------------------------
@pytest.mark.parametrize("entry", list(API))
def test_api_takes_hostile_texts_as_data(world: World, entry: str) -> None:
    outcomes = {name: run_api(world, entry, text) for name, text in HOSTILE_TEXTS}
    assert "result" in outcomes.values(), outcomes


@pytest.mark.parametrize("entry", list(CLI))
def test_cli_takes_hostile_texts_as_data(world: World, entry: str) -> None:
    outcomes = {name: run_cli(world, entry, text) for name, text in HOSTILE_TEXTS}
    assert "result" in outcomes.values(), outcomes


def test_http_takes_hostile_texts_as_data(world: World) -> None:
    with client(world) as c:
        for entry in HTTP:
            outcomes = {name: run_http(c, world, entry, text) for name, text in HOSTILE_TEXTS}
            assert "result" in outcomes.values(), (entry, outcomes)
        # Bytes that are not UTF-8 in the address itself, and a body that is not UTF-8.
        for raw in ("/api/search?q=%FF&hybrid=true&no_rerank=true", "/api/search?q=red&camera=%FF%00&tag=%C0%80",
                    "/api/search?q=%ED%A0%80&folder=%FF&no_rerank=true"):
            assert c.get(raw).status_code < 500
        bad_body = c.post(f"/api/images/{world.image_id}/ask", content=b'{"question": "\xff"}',
                          headers={"content-type": "application/json"})
        assert 400 <= bad_body.status_code < 500


def test_hostile_texts_leave_the_library_intact(world: World) -> None:
    """After every drop-table and quote, the library still holds what it held."""
    status = world.lib.status()
    assert status["images"] == status["vectors"] == 12 and status["texts"] >= 2
    hits = world.lib.search("circle", 12, rerank_hits=False, hybrid=True)
    assert len(hits) == 12 and any(h.keyword for h in hits)


# -- regressions: each defect these inputs found ----------------------------------------------------
def test_image_ids_beyond_64_bits_are_unknown(world: World) -> None:
    """--like 99999999999999999999 and /api/search?like=... raised OverflowError (HTTP 500)."""
    for image_id in (2**63, -(2**63) - 1, 10**30, 0):
        with pytest.raises(BlipsearchError, match="No indexed image has the id"):
            world.lib.similar(image_id)
        with pytest.raises(BlipsearchError, match="No indexed image has the id"):
            world.lib.image(image_id)
    result = invoke(["search", QUERY, "--like", str(2**64), "--no-rerank"], world)
    assert cli_outcome(result) == "error" and "No indexed image has the id" in result.output
    with client(world) as c:
        response = c.get("/api/search", params={"q": QUERY, "like": str(10**30), "unlike": str(-(10**30))})
        assert response.status_code == 404 and "No indexed image" in response.json()["error"]


def test_dates_with_an_offset_past_the_calendar_are_one_sentence(world: World) -> None:
    """--after 0001-01-01T00:00+14:00 raised OverflowError converting to local time."""
    for value in ("0001-01-01T00:00+14:00", "9999-12-31T23:59:59-14:00"):
        result = invoke(["search", QUERY, "--after", value, "--no-rerank"], world)
        assert cli_outcome(result) == "error" and result.exit_code == 2
        with client(world) as c:
            assert c.get("/api/images", params={"before": value}).status_code == 400


def test_a_camera_longer_than_sqlites_like_limit_is_refused(world: World) -> None:
    """--camera of 60,000 characters was SQLite's "LIKE or GLOB pattern too complex" (HTTP 500)."""
    result = invoke(["search", QUERY, "--camera", "x" * 60_000, "--no-rerank"], world)
    assert cli_outcome(result) == "error" and result.exit_code == 2 and "camera" in result.output
    assert world.lib.count(Filters.make(camera="c" * 1000)) == 0  # still a filter up to the limit
    with client(world) as c:
        assert c.get("/api/search", params={"q": QUERY, "camera": "%_" * 10_000}).status_code == 400


def test_nul_in_camera_and_tag_filters_is_refused() -> None:
    """PostgreSQL refuses NUL in text parameters (psycopg's DataError, HTTP 500 there)."""
    for kwargs in ({"camera": "canon\x00"}, {"tag": "\x00"}):
        with pytest.raises(BlipsearchError, match="NUL"):
            Filters.make(**kwargs)  # type: ignore[arg-type]


def test_texts_remove_refuses_ids_that_are_not_utf8(world: World) -> None:
    """`blipsearch texts remove $'\\xff'` raised UnicodeEncodeError."""
    result = invoke(["texts", "remove", "\udcff"], world)
    assert cli_outcome(result) == "error" and "UTF-8" in result.output
    with pytest.raises(BlipsearchError, match="UTF-8"):
        world.lib.remove_texts(["\udcff"])
    with pytest.raises(BlipsearchError, match="UTF-8"):
        TextEntry("a \udcff b")  # add_texts raised UnicodeEncodeError hashing it


def test_beam_widths_past_the_limit_are_refused(world: World) -> None:
    """caption --beams 1000000000 tried to allocate 32 GB and died with a RuntimeError."""
    for command in (["caption", str(world.image)], ["ask", str(world.image), QUESTION]):
        result = invoke([*command, "--beams", "1000000000"], world)
        assert cli_outcome(result) == "error" and result.exit_code == 2 and "at most 32" in result.output
    with pytest.raises(BlipsearchError, match="beams"):
        CaptionSettings(num_beams=33)


@pytest.mark.parametrize("args", [
    ["status", "--token-cache-gb", "1e300"],
    ["status", "--max-megapixels", "1e308"],
    ["serve", "--max-upload-mb", "1e308", "--port", "1"],
    ["serve", "--max-upload-megapixels", "1.7e308", "--port", "1"],
])
def test_huge_amounts_are_refused(world: World, args: list[str]) -> None:
    """Finite amounts whose bytes or pixels overflowed: OverflowError converting to int."""
    result = invoke([*args, "--library", str(world.tmp / "library")])
    assert cli_outcome(result) == "error" and result.exit_code == 2 and "too large" in result.output


def test_token_cache_size_is_checked_by_the_library(world: World) -> None:
    for size in (float("inf"), float("nan"), 1e300, -1):
        with pytest.raises(BlipsearchError, match="token cache"):
            Library(world.tmp / "library", token_cache_gb=size)


@pytest.mark.parametrize("args", [
    ["search", QUERY, "--folder", "a\x00b"], ["index", "a\x00b"], ["similar", "\x00"],
    ["search", "red\x00circle"], ["search", QUERY, "--db", "sqlite:///\x00"],
])
def test_a_nul_in_an_argument_is_a_usage_error(world: World, args: list[str]) -> None:
    """click.Path's stat raised "ValueError: embedded null byte"; no shell can pass a NUL anyway."""
    result = invoke(args, world)
    assert cli_outcome(result) == "error" and result.exit_code == 2 and "NUL" in result.output


def test_database_urls_with_bad_bytes_are_one_sentence(world: World) -> None:
    """--db with bytes that are not UTF-8 raised UnicodeEncodeError, with %00 ValueError."""
    result = invoke(["status", "--db", f"sqlite:///{world.tmp}/\udcff.db"])
    assert cli_outcome(result) == "error" and "UTF-8" in result.output
    result = invoke(["status", "--library", str(world.tmp / "elsewhere"), "--db", f"sqlite:///{world.tmp}/a%00.db"])
    assert cli_outcome(result) == "error" and "Can't open the database" in result.output


def test_demo_photos_into_a_name_too_long(world: World) -> None:
    """`demo-photos` raised OSError (File name too long) looking at the folder."""
    result = invoke(["demo-photos", str(world.tmp / ("d" * 300))])
    assert cli_outcome(result) == "error"


def test_eval_with_a_captions_file_that_is_not_text(world: World) -> None:
    """`eval IMAGES photo.png` raised UnicodeDecodeError."""
    result = invoke(["eval", str(world.photos), str(world.image), "--model", MODEL])
    assert cli_outcome(result) == "error" and "not UTF-8 text" in result.output


def test_full_text_reads_the_first_words_of_a_long_query(world: World) -> None:
    """20,000 distinct words made a tsquery PostgreSQL could not parse (stack depth limit)."""
    from blipsearch.store.fulltext import MAX_QUERY_WORDS

    words = " ".join(f"w{i}" for i in range(20_000))
    assert TextIndex(world.lib.db).search(words + " circle", 5) == []  # "circle" is past the first words
    assert TextIndex(world.lib.db).search("circle " + words, 5)
    assert MAX_QUERY_WORDS >= 30


def test_stored_texts_refuse_what_postgresql_cannot_store(world: World) -> None:
    """NUL characters, labels past 400 and prompts past 150 characters: psycopg's DataError there."""
    with pytest.raises(BlipsearchError, match="NUL"):
        world.lib.add_texts([TextEntry("a red\x00circle")])
    with pytest.raises(BlipsearchError, match="label"):
        world.lib.tag([world.image], ["x" * 401])
    with pytest.raises(BlipsearchError, match="label"):
        world.lib.tag_library(["red\x00circle"])
    with pytest.raises(BlipsearchError, match="prompt"):
        CaptionSettings(prompt="a" * 151)
    assert world.lib.remove_texts(["\x00"]) == 0


def test_an_empty_question_is_refused_by_search_as_by_ask(world: World) -> None:
    """`search --ask ''` asked every hit an empty question; `ask IMAGE ''` refuses it."""
    for question in ("", "   "):
        result = invoke(["search", QUERY, "--no-rerank", "--ask", question], world)
        assert cli_outcome(result) == "error" and "The question is empty" in result.output


def test_least_sizes_out_of_range_are_refused() -> None:
    with pytest.raises(BlipsearchError):
        Filters.make(min_size=(10**30, 1))


# -- property tests: the full-text query path and the filters ----------------------------------------
@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory: pytest.TempPathFactory) -> TextIndex:
    """A small real SQLite database whose captions and names are hostile texts themselves."""
    from sqlalchemy import URL

    from blipsearch.store.database import Database, utcnow
    from blipsearch.store.schema import CaptionRow, ImageRow

    folder = tmp_path_factory.mktemp("fulltext")
    db = Database(URL.create("sqlite", database=str(folder / "fts.db")))
    with db.transaction() as session:
        for n, text in enumerate(TEXTS[:40] + ["a red circle", "a blue square"]):
            digest = f"{n:064x}"
            name = b"%03d " % n + encoded(text[:50]).replace(b"/", b"_").replace(b"\0", b"_")
            session.add(ImageRow(path=os.path.join(os.fsencode(folder), name + b".png"), size=1, mtime_ns=n,
                                 content_hash=digest, indexed_at=utcnow()))
            caption = encoded(text[:2000]).decode("utf-8", "replace").replace("\0", " ")
            session.add(CaptionRow(content_hash=digest, model="m", prompt="p", caption=caption, model_spec="m",
                                   created_at=utcnow()))
    return TextIndex(db)


@settings(max_examples=_examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text())
def test_any_text_is_a_full_text_query(hostile_index: TextIndex, query: str) -> None:
    words = query_words(query)
    assert all(w.strip() and '"' not in w for w in words)
    found = hostile_index.search(query, 10)
    assert all(isinstance(i, int) and isinstance(r, float) for i, r in found)
    assert (not found) or words


@settings(max_examples=_examples(80), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(max_size=300), camera=st.one_of(st.none(), st.text(max_size=40)),
       tag=st.one_of(st.none(), st.text(max_size=40)), folder=st.text(max_size=40),
       after=st.one_of(st.none(), st.text(max_size=25)), min_size=st.one_of(st.none(), st.text(max_size=12)),
       fmt=st.text(max_size=8))
def test_any_text_is_a_search_and_a_filter(world: World, query: str, camera: str | None, tag: str | None,
                                           folder: str, after: str | None, min_size: str | None, fmt: str) -> None:
    try:
        filters = Filters.make(folders=[folder], after=after, camera=camera, tag=tag, min_size=min_size,
                               formats=[fmt])
    except BlipsearchError as exc:
        clear(str(exc))
        filters = Filters.make(camera=camera) if camera is not None and "\0" not in camera and _utf8(camera) else \
            Filters()
    try:
        hits = world.lib.search(query, 3, rerank_hits=False, hybrid=True, filters=filters)
    except BlipsearchError as exc:
        clear(str(exc))
        return
    assert len(hits) <= 3


# -- property tests: the command line's numbers ------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(min_value=-3, max_value=70).map(str),
    st.integers().map(str),
    st.integers(min_value=2**31, max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-2, max_value=2).map(str),
    st.sampled_from(["", " ", "-0", "0.0", "1e309", "-1e309", "nan", "NaN", "inf", "-inf", "Infinity", "0x10",
                     "1_000", "１２", "٣", "9" * 40, "1e-320", " 2", "2 ", "+3", "1/2", "ten", "\x00", "\udcff"]),
    st.text(max_size=8),
)


def _is_int(value: str, low: int, high: int) -> bool:
    try:
        return low <= int(value) <= high
    except ValueError:
        return False


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` and `watch` return at once instead of running until Ctrl-C."""
    import blipsearch.index.run
    import blipsearch.web.server

    monkeypatch.setattr(blipsearch.web.server, "serve", lambda lib, settings, announce: None)
    monkeypatch.setattr(blipsearch.index.run, "watch", lambda *args, **kwargs: None)


def numeric_cases(w: World) -> list[tuple[list[str], str]]:
    img, labels, choices = str(w.image), str(w.tmp / "num-labels.txt"), str(w.tmp / "num-choices.txt")
    return [
        (["search", QUERY, "--no-rerank"], "--top-k"),
        (["search", QUERY], "--rerank-depth"),
        (["search", QUERY, "--no-rerank", "-k", "2", "--ask", QUESTION, "--answer", "circle"], "--examine"),
        (["search", QUERY, "--no-rerank", "-k", "2", "--ask", QUESTION, "--choices", choices], "--shortlist"),
        (["search", QUERY, "--no-rerank", "--tag", "red circle"], "--min-probability"),
        (["similar", img], "--top-k"),
        (["duplicates"], "--threshold"),
        (["lookup", img, "--source", "captions"], "--top-k"),
        (["lookup", img], "--rerank-depth"),
        (["tag", img, "--labels", labels], "--top-k"),
        (["tag", img, "--labels", labels], "--rerank-depth"),
        (["caption", img], "--beams"),
        (["caption", img], "--min-length"),
        (["caption", img], "--max-length"),
        (["ask", img, QUESTION], "--beams"),
        (["ask", img, QUESTION], "--max-length"),
        (["ask", img, QUESTION, "--choices", choices], "--shortlist"),
        (["explain", img, QUERY, "--out", str(w.tmp / "num-heat.png")], "--size"),
        (["index", str(w.photos)], "--batch-size"),
        (["index", str(w.photos)], "--workers"),
        (["index", str(w.photos), "--tags", labels], "--tags-k"),
        (["index", str(w.photos)], "--recall-target"),
        (["watch", str(w.photos)], "--settle"),
        (["serve"], "--port"),
        (["serve"], "--rerank-depth"),
        (["serve"], "--max-upload-mb"),
        (["serve"], "--max-upload-megapixels"),
    ]


@pytest.mark.parametrize("case", range(27))
def test_any_number_for_a_numeric_option(world: World, stubbed: None, case: int) -> None:
    (world.tmp / "num-labels.txt").write_text("red circle\nblue square\n")
    (world.tmp / "num-choices.txt").write_text("circle\nsquare\nstar\n")
    command, option = numeric_cases(world)[case]

    @settings(max_examples=_examples(8), deadline=None, database=None)
    @given(value=NUMBERS)
    def check(value: str) -> None:
        if option == "--size":  # a valid size writes a picture that large: a few are enough
            assume(not _is_int(value, 1000, 4096))
        cli_outcome(invoke([*command, f"{option}={value}"], world), value)

    check()


@settings(max_examples=_examples(25), deadline=None, database=None)
@given(value=NUMBERS, option=st.sampled_from(["--token-cache-gb", "--max-megapixels"]))
def test_any_number_for_a_library_option(world: World, value: str, option: str) -> None:
    cli_outcome(invoke(["status", "--library", str(world.tmp / "library"), f"{option}={value}"]), value)


@settings(max_examples=_examples(25), deadline=None, database=None)
@given(value=NUMBERS, option=st.sampled_from(["--count", "--seed"]))
def test_any_number_for_demo_photos(world: World, value: str, option: str) -> None:
    if option == "--count":  # a valid count writes that many pictures
        assume(not _is_int(value, 4, 10**9))
    folder = world.tmp / "demo-numbers"
    shutil.rmtree(folder, ignore_errors=True)
    extra = ["--count", "1"] if option == "--seed" else []
    cli_outcome(invoke(["demo-photos", str(folder), *extra, f"{option}={value}"]), value)


_OFFSET = st.integers(min_value=-1439, max_value=1439).map(lambda m: timezone(timedelta(minutes=m)))
DATES = st.one_of(
    st.text(max_size=30),
    st.datetimes().map(datetime.isoformat),
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), st.datetimes(), _OFFSET),
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(),
              st.sampled_from([datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)]), _OFFSET),
    st.from_regex(r"\A-?\d{1,6}(-\d{1,3}(-\d{1,3}(T\d{1,2}:\d{1,2}(:\d{1,2})?(Z|[+-]\d\d:\d\d)?)?)?)?\Z"),
)
SIZES = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, b, x: f"{a}{x}{b}", st.integers(), st.integers(),
              st.sampled_from(["x", "X", "×", " x ", "*"])),
)


@settings(max_examples=_examples(40), deadline=None, database=None)
@given(after=DATES, before=st.one_of(st.none(), DATES), min_size=st.one_of(st.none(), SIZES))
def test_any_dates_and_sizes_for_the_filters(world: World, after: str, before: str | None,
                                              min_size: str | None) -> None:
    args = ["search", QUERY, "--no-rerank", "--json", f"--after={after}"]
    args += [f"--before={before}"] if before is not None else []
    args += [f"--min-size={min_size}"] if min_size is not None else []
    cli_outcome(invoke(args, world), f"{after} {before} {min_size}")
    with client(world) as c:
        params = {"after": after, "before": before or "", "min_size": min_size or ""}
        assert c.get(_url("/api/images", **params)).status_code < 500


# -- property tests: the command line's paths --------------------------------------------------------
PATH_KINDS = ["missing", "folder", "text file", "image", "fifo", "symlink loop", "dev null", "dash", "empty",
              "too long", "path too long"]


def _make_path(w: World, kind: str, name: str) -> str:
    """A path of ``kind`` named ``name`` (any string, lone surrogates for bytes that are not UTF-8)."""
    base = w.tmp / "paths"
    base.mkdir(exist_ok=True)
    # Prefixed: "." and ".." name no new file (and must never be replaced).
    raw = os.path.join(os.fsencode(base), b"p-" + encoded(name).replace(b"/", b"_").replace(b"\0", b"_")[:200])
    target = os.fsdecode(raw)
    if kind in ("folder", "text file", "image", "fifo", "symlink loop"):
        if os.path.lexists(raw):
            shutil.rmtree(raw) if os.path.isdir(raw) and not os.path.islink(raw) else os.unlink(raw)
        if kind == "folder":
            os.mkdir(raw)
        elif kind == "text file":
            with open(raw, "wb") as fh:
                fh.write(b"not an image\n")
        elif kind == "image":
            shutil.copyfile(w.image, raw)
        elif kind == "fifo":
            os.mkfifo(raw)
        else:
            os.symlink(raw, raw)
        return target
    return {"missing": target + "-missing", "dev null": "/dev/null", "dash": "-", "empty": "",
            "too long": os.path.join(str(base), "n" * 300), "path too long": "/" + "/".join(["p" * 200] * 30)}[kind]


def _path_slots(w: World) -> dict[str, tuple[list[str], bool]]:
    """Command lines with a path slot ``{}``, and whether the command reads the path as a text file
    (a FIFO then waits for a writer, as ``cat`` does: that slot gets no FIFO)."""
    img, out = str(w.image), str(w.tmp / "slot-heat.png")
    return {
        "index PATH": (["index", "{}", "--json"], False),
        "similar IMAGE": (["similar", "{}", "--json"], False),
        "caption IMAGE": (["caption", "{}", "--json"], False),
        "ask IMAGE": (["ask", "{}", QUESTION, "--json"], False),
        "lookup IMAGE": (["lookup", "{}", "--no-rerank", "--json"], False),
        "explain IMAGE": (["explain", "{}", QUERY, "--out", out], False),
        "explain --out": (["explain", img, QUERY, "--out", "{}"], False),
        "tag --labels": (["tag", img, "--labels", "{}"], True),
        "texts add FILE": (["texts", "add", "{}"], True),
        "search --choices": (["search", QUERY, "--no-rerank", "-k", "1", "--ask", QUESTION, "--choices", "{}"], True),
        "search --folder": (["search", QUERY, "--no-rerank", "--folder", "{}", "--json"], False),
        "search --like": (["search", QUERY, "--no-rerank", "--like", "{}", "--json"], False),
        "watch FOLDER": (["watch", "{}"], False),
        "status --library": (["status", "--library", "{}"], False),
        "demo-photos FOLDER": (["demo-photos", "{}", "--count", "1"], False),
        "eval IMAGES CAPTIONS": (["eval", "{}", "{}", "--model", MODEL], True),
    }


NAMES_ST = st.one_of(
    st.text(min_size=1, max_size=30),
    st.binary(min_size=1, max_size=30).map(os.fsdecode),
    st.sampled_from(["new\nline", "tab\there", " leading", "trailing ", "-dash", "--json", "é", "\u202eevil.png",
                     "x.png", "*.png", "$(touch owned)", "..", "."]),
)


@settings(max_examples=_examples(80), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slot=st.sampled_from(["index PATH", "similar IMAGE", "caption IMAGE", "ask IMAGE", "lookup IMAGE",
                             "explain IMAGE", "explain --out", "tag --labels", "texts add FILE", "search --choices",
                             "search --folder", "search --like", "watch FOLDER", "status --library",
                             "demo-photos FOLDER", "eval IMAGES CAPTIONS"]),
       kind=st.sampled_from(PATH_KINDS), name=NAMES_ST)
def test_any_path_for_a_path_argument(world: World, stubbed: None, slot: str, kind: str, name: str) -> None:
    template, reads_text = _path_slots(world)[slot]
    if kind == "fifo" and reads_text:
        return  # a text file read from a pipe waits for its writer (`texts add <(make-texts)`)
    if slot == "eval IMAGES CAPTIONS" and kind in ("folder", "image"):
        return  # a real evaluation, minutes of it: kept to the paths it refuses
    if slot in ("index PATH", "search --folder") and kind == "image":
        return  # indexing a copy would change the shared library's counts
    try:
        path = _make_path(world, kind, name)
    except OSError:
        path = _make_path(world, "missing", name)  # a name this file system can't hold
    args = [path if a == "{}" else a for a in template]
    shared = slot not in ("status --library", "demo-photos FOLDER", "eval IMAGES CAPTIONS")
    here = os.getcwd()
    os.chdir(world.tmp / "paths")  # "-" and "" are relative: what they make is made there
    try:
        cli_outcome(invoke(args, world if shared else None), path)
    finally:
        os.chdir(here)


# -- PostgreSQL (a real server: see postgres_url in conftest.py) ------------------------------------


# Where the text reaches only the models (a question, labels, a reranked query), never a database
# statement: the same on either database, so tested on SQLite only.
MODELS_ONLY = {"Library.search hybrid reranked", "Library.search terms", "Library.tag labels", "Library.ask",
               "Library.explain", "POST /api/images/{id}/ask", "GET /api/images/{id}/explain"}


def test_postgresql_takes_hostile_texts_as_data(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL's full text (to_tsquery) and its text columns: NUL, lengths, tsquery syntax."""
    w = make_world(tmp_path, postgres_url)
    try:
        assert w.lib.db.engine.dialect.name == "postgresql"
        for entry in sorted(API.keys() - MODELS_ONLY):
            outcomes = {name: run_api(w, entry, text) for name, text in HOSTILE_TEXTS}
            assert "result" in outcomes.values(), (entry, outcomes)
        with client(w) as c:
            for entry in sorted(HTTP.keys() - MODELS_ONLY):
                for _, text in HOSTILE_TEXTS:
                    run_http(c, w, entry, text)
        for entry in ("search --hybrid", "search --camera", "search --tag", "texts add, remove", "tag --labels"):
            for _, text in HOSTILE_TEXTS:
                run_cli(w, entry, text)
        # What psycopg refused as DataError (text with NUL; longer than a column) and to_tsquery
        # could not parse (20,000 words: "stack depth limit exceeded").
        for kwargs in ({"camera": "canon\x00"}, {"tag": "\x00"}):
            with pytest.raises(BlipsearchError, match="NUL"):
                Filters.make(**kwargs)  # type: ignore[arg-type]
        with pytest.raises(BlipsearchError, match="NUL"):
            w.lib.add_texts([TextEntry("a red\x00circle")])
        with pytest.raises(BlipsearchError, match="label"):
            w.lib.tag_library(["x" * 401])
        assert w.lib.remove_texts(["\x00", "%", "_"]) == 0
        assert TextIndex(w.lib.db).search("circle " + " ".join(f"w{i}" for i in range(20_000)), 5)
        long_prompt = "abcdefghijklmnop " * 8 + "x"  # 137 characters: with its settings, under 200
        assert w.lib.caption([w.image], CaptionSettings(prompt=long_prompt, num_beams=1, max_length=40))
        status = w.lib.status()
        assert status["images"] == status["vectors"] == 12
    finally:
        w.lib.close()


def _tiff_with_a_bad_strip(path: Path) -> None:
    """A Group 4 fax TIFF whose strip is garbage: libtiff prints "Fax4Decode: Bad code word ..." on fd 2."""
    import io

    from PIL import Image

    image = Image.new("1", (64, 64), 1)
    for x in range(0, 64, 3):
        for y in range(0, 64, 2):
            image.putpixel((x, y), 0)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF", compression="group4")
    data = bytearray(buffer.getvalue())
    with Image.open(io.BytesIO(bytes(data))) as tiff:
        offset, count = tiff.tag_v2[273], tiff.tag_v2[279]
    offset, count = (v[0] if isinstance(v, tuple) else v for v in (offset, count))
    for k in range(offset, offset + count):
        data[k] = 0xFF if k % 2 else 0x00
    path.write_bytes(bytes(data))


def test_what_libtiff_prints_goes_with_the_file_not_to_stderr(tmp_path: Path, tiny_model: Path) -> None:
    import subprocess
    import sys

    from conftest import draw_image

    folder = tmp_path / "photos"
    folder.mkdir()
    _tiff_with_a_bad_strip(folder / "fax.tif")
    draw_image(3).save(folder / "fine.png")
    # The file really makes libtiff write to the process's standard error, past Python.
    opened = subprocess.run([sys.executable, "-c", f"from PIL import Image; Image.open({str(folder / 'fax.tif')!r}).load()"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "Fax4Decode" in opened.stderr

    def blipsearch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "blipsearch.cli", *args, "--library", str(tmp_path / "lib"),
                               "--model", str(tiny_model)], capture_output=True, text=True, timeout=300, check=False)

    done = blipsearch("index", str(folder), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "Fax4Decode" not in done.stderr and "TIFF" not in done.stderr.replace("fax.tif", "")
    assert done.stdout.startswith("1 added, 0 updated")
    # stderr: the file's own line, its reason without the decoder's words (those are kept for `failures`)
    assert done.stderr.splitlines() == [(f"failed {folder / 'fax.tif'}: can't decode the image: decoder error -2 "
                                         "(the decoder's messages: see `blipsearch failures`)")]
    listed = blipsearch("failures", "--json")
    [failure] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert failure["path"] == str(folder / "fax.tif")
    assert "decoder error" in failure["reason"] and "Fax4Decode: Bad code word" in failure["reason"]
