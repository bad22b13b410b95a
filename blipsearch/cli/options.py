"""What the commands share: parameter types, the library options and how a command opens its
library, the filter, output and caption options, and how hits and answers are printed."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# Only light modules here and in every command module: `--help`, and a command a running
# `blipsearch serve` answers, never import numpy, torch, SQLAlchemy or FAISS (the library and its
# models load inside the commands).
from ..errors import BlipsearchError
from ..filters import DEFAULT_MIN_PROBABILITY, Filters
from ..options import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_MODEL,
    DEFAULT_VQA_MODEL,
    LENGTH_RULES,
    MAX_BEAMS,
    CaptionSettings,
    open_settings,
)
from ..store.location import LIBRARY_ENV
from ..system import shown_path
from ..text import checked

if TYPE_CHECKING:
    from ..library import Hit, Library

EXIT_INTERRUPTED = 130


class PositiveInt(click.ParamType):
    name = "N"

    def __init__(self, minimum: int = 1, maximum: int = 10**9) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number.", param, ctx)
        if number < self.minimum:
            self.fail(f"{number} is too small: it must be at least {self.minimum}.", param, ctx)
        if number > self.maximum:
            self.fail(f"{number} is too large: it must be at most {self.maximum}.", param, ctx)
        return number


class Amount(click.ParamType):
    """A finite number, at least ``minimum`` (above it when ``strict``) and at most ``maximum``."""

    name = "X"

    def __init__(self, minimum: float = 0.0, strict: bool = False, maximum: float = 1e9) -> None:
        self.minimum, self.strict, self.maximum = minimum, strict, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number) or number < self.minimum or (self.strict and number == self.minimum):
            self.fail(f"{value} must be a number {'above' if self.strict else 'of at least'} {self.minimum:g}.",
                      param, ctx)
        if number > self.maximum:  # sizes in bytes or pixels made from it must stay finite
            self.fail(f"{value} is too large: it must be at most {self.maximum:,.0f}.", param, ctx)
        return number


class Text(click.ParamType):
    """Text, refused with one sentence when it is not valid UTF-8 (see :func:`blipsearch.text.checked`)."""

    name = "TEXT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return checked(str(value), "It")
        except BlipsearchError as exc:
            self.fail(str(exc), param, ctx)


TEXT = Text()


def library_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where the library lives and which model reads it: shared by every command."""
    options = [
        click.option(
            "--library",
            "library",
            envvar=LIBRARY_ENV,
            type=click.Path(file_okay=False),
            help=f"Library folder (database and vector index). Env: {LIBRARY_ENV}. "
            "Default: a per-user data folder (see `blipsearch status`).",
        ),
        click.option(
            "--db",
            "db_url",
            envvar="BLIPSEARCH_DB",
            type=TEXT,
            metavar="URL",
            help="SQLAlchemy database URL instead of the library's SQLite file, "
            "e.g. postgresql+psycopg://user@host/photos. Env: BLIPSEARCH_DB.",
        ),
        click.option(
            "--model",
            envvar="BLIPSEARCH_MODEL",
            metavar="MODEL",
            help=f"BLIP retrieval checkpoint: a hub id, a local folder, or builtin:shapes. "
            f"Default: the library's model ({DEFAULT_MODEL} for a new library). Env: BLIPSEARCH_MODEL.",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            help="auto, cpu, cuda, cuda:N or mps. fp16 on GPUs, fp32 on CPUs.",
        ),
        click.option(
            "--quantize",
            type=click.Choice(["none", "int8"]),
            envvar="BLIPSEARCH_QUANTIZE",
            default=None,
            help="int8: a faster CPU route for the vision encoder (a library remembers its route). "
            "Default: the library's route, else none.",
        ),
        click.option(
            "--token-cache-gb",
            type=Amount(0),
            envvar="BLIPSEARCH_TOKEN_CACHE_GB",
            default=0.0,
            help="Disk for cached vision tokens (in the library folder; ~0.9 MB an image at base size), "
            "filled while indexing and reranking: reranking a cached image skips the vision encoder. "
            "0 turns it off. Env: BLIPSEARCH_TOKEN_CACHE_GB.",
        ),
        click.option(
            "--itm-token",
            type=click.Choice(["enc", "cls"]),
            default="enc",
            show_default=True,
            help="First token of the text for image-text matching: BLIP's [ENC] or plain [CLS].",
        ),
        click.option(
            "--caption-model",
            envvar="BLIPSEARCH_CAPTION_MODEL",
            metavar="MODEL",
            help=f"BLIP captioning checkpoint (default {DEFAULT_CAPTION_MODEL}, or the built-in family of "
            "--model). Env: BLIPSEARCH_CAPTION_MODEL.",
        ),
        click.option(
            "--vqa-model",
            envvar="BLIPSEARCH_VQA_MODEL",
            metavar="MODEL",
            help=f"BLIP question-answering checkpoint (default {DEFAULT_VQA_MODEL}, or the built-in family of "
            "--model). Env: BLIPSEARCH_VQA_MODEL.",
        ),
        click.option(
            "--max-megapixels",
            type=Amount(0, strict=True),
            default=None,
            help="Refuse images larger than this (decompression-bomb guard). Default: Pillow's, about 89.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _open(library: str | None, db_url: str | None, model: str | None, device: str, itm_token: str,
          max_megapixels: float | None, caption_model: str | None = None, vqa_model: str | None = None,
          quantize: str | None = None, token_cache_gb: float = 0.0, create: bool = True) -> Library:
    if max_megapixels is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1_000_000)
    from ..library import Library

    return Library(library, db_url=db_url, model=model, device=device, itm_token=itm_token,  # type: ignore[arg-type]
                   caption_model=caption_model, vqa_model=vqa_model, quantize=quantize,
                   token_cache_gb=token_cache_gb, create=create)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can cause into one sentence and a non-zero exit, never a traceback."""
    try:
        yield
    except BlipsearchError as exc:  # (in the command line's words, where an error has them apart)
        raise click.ClickException(getattr(exc, "command_line", None) or str(exc)) from None
    except BrokenPipeError:  # `blipsearch search ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
    except OSError as exc:  # a full disk, an I/O error, a read-only folder: what the system said, and where
        where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
        raise click.ClickException(f"{exc.strerror or exc}{where}. Everything committed before it is kept; "
                                   "run the same command again once that is fixed.") from None
    except Exception as exc:
        database = sys.modules.get("sqlalchemy.exc")  # never imported: not a database error
        if database is not None and isinstance(exc, database.SQLAlchemyError):
            raise click.ClickException(f"Database error: {getattr(exc, 'orig', None) or exc}") from None
        raise
    except KeyboardInterrupt:
        click.echo("\nInterrupted: everything finished so far is saved; run the same command again to resume.",
                   err=True)
        sys.exit(EXIT_INTERRUPTED)


def with_library(func: Callable[..., Any], create: bool = True, served: bool = False) -> Callable[..., Any]:
    """Open the library for ``func``. ``served``: when a `blipsearch serve` of this library runs
    with the same options, ``func`` gets a stand-in that has the server answer its calls
    (see :mod:`blipsearch.engine`): no model to load here."""

    @library_options
    @functools.wraps(func)
    def wrapper(library, db_url, model, device, quantize, token_cache_gb, itm_token, caption_model,  # type: ignore[no-untyped-def]
                vqa_model, max_megapixels, **kwargs):
        if kwargs.get("as_json") and kwargs.get("paths_only"):  # usage errors before opening anything
            raise click.UsageError("--json and --paths (or --paths0) can't be used together.")
        with _errors():
            found = None
            if served and max_megapixels is None:
                from ..engine import Engine
                from ..store.location import library_location

                location = library_location(library, db_url)
                settings = open_settings(db_url=db_url, model=model, device=device, itm_token=itm_token,
                                         caption_model=caption_model, vqa_model=vqa_model, quantize=quantize,
                                         token_cache_gb=token_cache_gb)
                engine, found = Engine.locate(location, settings)
                if engine is not None:
                    try:
                        return func(engine, **kwargs)
                    finally:
                        engine.close()
            lib = _open(library, db_url, model, device, itm_token, max_megapixels, caption_model, vqa_model,
                        quantize, token_cache_gb, create)
            loaded: list[str] = []
            try:
                return func(lib, **kwargs)
            except KeyboardInterrupt:
                found = None
                raise
            finally:
                if found is not None:
                    loaded = lib.loaded_models()
                discarded = lib.discard_if_unused()  # a first command that failed, or stored nothing, leaves no library
                if loaded and not discarded:  # for the next command: an engine of its own, its models loaded
                    _start_engine(location, settings, loaded, found == "going")

    return wrapper


def _start_engine(location: Path, settings: dict[str, Any], loaded: list[str], replacing: bool) -> None:
    from .. import background

    started = background.start(location, settings, loaded, replacing)
    note = background.announce(started is not None)
    if note is not None and sys.stderr.isatty():
        click.echo(note, err=True)


def with_existing_library(func: Callable[..., Any]) -> Callable[..., Any]:
    """For commands that only read a library: a mistyped --library is an error, not a new library."""
    return with_library(func, create=False)


def with_served_library(func: Callable[..., Any]) -> Callable[..., Any]:
    """An existing library, or the `blipsearch serve` that runs for it."""
    return with_library(func, create=False, served=True)


def _nonempty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("it is empty: say what to look for.")
    return value


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Narrow the images before ranking: -k N gives the N best of those that match. The command gets
    them as one ``filters`` argument (its ``--tag`` as well); a bad value is a usage error."""

    @functools.wraps(func)
    def wrapper(*args: Any, folders: tuple[bytes, ...], after: str | None, before: str | None, camera: str | None,
                min_size: str | None, formats: tuple[str, ...], min_probability: float, keywords: tuple[str, ...],
                rating: int | None, label: str | None, place: str | None, near: str | None, within: float | None,
                **kwargs: Any) -> Any:
        try:
            filters = Filters.make(folders=list(folders), after=after, before=before, tag=kwargs.get("tag"),
                                   min_probability=min_probability, camera=camera, min_size=min_size,
                                   formats=[f for value in formats for f in value.split(",")], keyword=keywords,
                                   rating=rating, label=label, place=place, near=near, within_km=within)
        except BlipsearchError as exc:
            raise click.UsageError(str(exc)) from None
        return func(*args, filters=filters, **kwargs)

    options = [
        click.option("--folder", "folders", multiple=True, type=click.Path(path_type=bytes),
                     help="Only images below this folder (repeatable)."),
        click.option("--after", metavar="DATE",
                     help="Only images taken on or after DATE (EXIF capture time, else file time): 2024, "
                          "2024-07, 2024-07-14."),
        click.option("--before", metavar="DATE", help="Only images taken before DATE."),
        click.option("--camera", type=TEXT, metavar="TEXT",
                     help="Only images whose EXIF camera (make and model) contains TEXT, any case: canon, 'iphone 13'."),
        click.option("--min-size", metavar="WxH", help="Only images at least W pixels wide and H high: 1920x1080."),
        click.option("--format", "formats", multiple=True, metavar="NAME",
                     help="Only images of this format, by file extension: jpeg, png, heic, webp, ... "
                          "(repeatable, or comma-separated)."),
        click.option("--keyword", "keywords", multiple=True, type=TEXT, metavar="WORD",
                     help="Only images with this keyword, or a level of a hierarchical one (Places|France|Paris), "
                          "any case and accents (repeatable: all of them)."),
        click.option("--rating", type=PositiveInt(0, 5), metavar="N",
                     help="Only images rated at least N stars, 0 to 5 (unrated counts as 0; 0 leaves out the "
                          "rejected)."),
        click.option("--label", type=TEXT, metavar="TEXT", help="Only images with this colour label, any case: red."),
        click.option("--place", type=TEXT, metavar="NAME",
                     help="Only images taken in this city, region or country (their GPS position's place), or "
                          "country code; any case and accents: paris, 'ile-de-france', france, fr."),
        click.option("--near", metavar="LAT,LON",
                     help="Only images taken near this position, in decimal degrees (south and west negative): "
                          "48.8584,2.2945."),
        click.option("--within", type=Amount(0, strict=True, maximum=20015.1), metavar="KM",
                     help="With --near: how near, in kilometres  [default: 1]."),
        click.option("--min-probability", type=Amount(0), default=DEFAULT_MIN_PROBABILITY, show_default=True,
                     help="With --tag: a stored label counts as an image's tag when ITM's match probability "
                          "for it is at least this."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _output_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("-0", "--paths0", "paths_only", flag_value="\0",
                        help="Print only paths, each ended by a NUL byte: safe for any file name "
                             "(`... --paths0 | xargs -0 ls -l`).")(func)
    func = click.option("--paths", "paths_only", flag_value="\n", help="Print only paths, one per line (for piping).")(func)
    func = click.option("--json", "as_json", is_flag=True, help="One JSON object per hit per line.")(func)
    return click.option("-k", "--top-k", "k", type=PositiveInt(), default=10, show_default=True,
                        help="Number of results.")(func)


def caption_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decoding settings for captions; the defaults are the BLIP paper's."""
    func = click.option("--min-length", type=PositiveInt(), default=5, show_default=True,
                        help="Minimum caption length in tokens, prompt included.")(func)
    func = click.option("--max-length", type=PositiveInt(), default=20, show_default=True,
                        help="Maximum caption length in tokens, prompt included.")(func)
    func = click.option("--beams", type=PositiveInt(1, MAX_BEAMS), default=3, show_default=True,
                        help="Beam-search width.")(func)
    func = _length_rule_option(func)
    return click.option("--prompt", type=TEXT, default="a picture of ", show_default=True,
                        help="Text the caption starts from (not part of the result).")(func)


_length_rule_option = click.option(
    "--length-rule", type=click.Choice(LENGTH_RULES), default="paper", show_default=True,
    help="How beam search ranks finished beams. paper: their summed log-probability over the whole "
         "length, prompt included, end token not (transformers 4.15, which BLIP's published results "
         "used); transformers: over the generated tokens, end token included (today's generate()).")


def _caption_settings(prompt: str, beams: int, max_length: int, min_length: int,
                      length_rule: str) -> CaptionSettings:
    if min_length > max_length:
        raise click.UsageError("--min-length can't be larger than --max-length.")
    return CaptionSettings(prompt=prompt, num_beams=beams, max_length=max_length, min_length=min_length,
                           length_rule=length_rule)


def _choices_option(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--shortlist", type=PositiveInt(), default=128, show_default=True,
                        help="With --choices: how many choices, those of likeliest first word-piece, "
                             "are scored in full (the paper's k_test).")(func)
    return click.option("--choices", "choices_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        metavar="FILE",
                        help="Rank these answers (one per line) instead of generating one, as the BLIP "
                             "paper's VQA results do: the best-scoring line is the answer.")(func)


def _read_choices(path: Path | None) -> tuple[str, ...]:
    """The answers listed in ``path``, one per line: blank lines and repeats dropped."""
    if path is None:
        return ()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise click.UsageError(f"--choices {path} is not UTF-8 text.") from None
    except OSError as exc:
        raise click.UsageError(f"Can't read --choices {path}: {exc.strerror}.") from None
    choices = tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not choices:
        raise click.UsageError(f"--choices {path} lists no answers (one per line).")
    return choices


def _progress(total: int, desc: str):  # type: ignore[no-untyped-def]
    """A progress bar on a terminal, nothing when output goes to a file or a pipe."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), file=sys.stderr)


def _echo_path(path: str, end: str = "\n") -> None:
    """Write a path exactly as the file system has it, even when it is not valid UTF-8."""
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        click.echo(path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), nl=False)
        click.echo(end, nl=False)
    else:
        out.write(os.fsencode(path) + end.encode())
        out.flush()


def _percent(probability: float | None) -> str:
    """A match probability as a fixed-width percentage; a dash when not reranked."""
    return f"{probability * 100:5.1f}%" if probability is not None else "     -"


def _json_line(obj: dict[str, Any]) -> None:
    # Paths that are not UTF-8 keep their raw bytes as \udcXX escapes, which
    # json.loads in Python turns back into the same os.fsencode-able string.
    click.echo(json.dumps(obj, ensure_ascii=True))


# Above the human-readable hits (scripts read --json or --paths).
HEADER = f"{'#':>3}  {'score':>7}  {'match':>6}  "


def _print_hits(hits: list[Hit], as_json: bool, paths_only: str | None) -> None:
    if hits and not as_json and not paths_only:
        click.echo(HEADER + "path")
    for hit in hits:
        if paths_only:  # the character that ends each path
            _echo_path(hit.path, paths_only)
        elif as_json:
            _json_line(hit.to_dict())
        else:
            click.echo(f"{hit.rank:3d}  {hit.score:7.3f}  {_percent(hit.itm)}  {shown_path(hit.path)}")
            if hit.caption is not None:
                click.echo(f"{'':22}{hit.caption}")
            if hit.answer is not None:
                click.echo(f"{'':22}answer: {hit.answer}")


def _print_described(results: list[Any], field: str, as_json: bool, question: str | None = None) -> None:
    failed = 0
    for result in results:
        if result.text is None:
            failed += 1
            click.echo(f"{shown_path(result.path)}: {result.error}", err=True)
            continue
        if as_json:
            obj = {"path": result.path}
            if question is not None:
                obj["question"] = question
            obj[field] = result.text
            if getattr(result, "choices", None) is not None:
                obj["choices"] = [c.to_dict() for c in result.choices]
            _json_line(obj)
        else:
            click.echo(f"{shown_path(result.path)}: {result.text}")
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} images could not be read.")
