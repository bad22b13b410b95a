"""The ``blipsearch`` command line. It parses, calls :class:`blipsearch.Library`, prints."""

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

# Only light modules here: `--help`, and a command a running `blipsearch serve` answers, never
# import numpy, torch, SQLAlchemy or FAISS (the library and its models load inside the commands).
from .errors import BlipsearchError
from .filters import DEFAULT_MIN_PROBABILITY, Filters
from .images.formats import FORMAT_NAMES
from .options import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_MODEL,
    DEFAULT_RERANK_DEPTH,
    DEFAULT_VQA_MODEL,
    LENGTH_RULES,
    MAX_BEAMS,
    AnswerSettings,
    CaptionSettings,
    open_settings,
)
from .search.query import image_term, text_term
from .store.location import LIBRARY_ENV
from .text import checked, same_answer

if TYPE_CHECKING:
    from .library import Hit, Library

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
    from .library import Library

    return Library(library, db_url=db_url, model=model, device=device, itm_token=itm_token,  # type: ignore[arg-type]
                   caption_model=caption_model, vqa_model=vqa_model, quantize=quantize,
                   token_cache_gb=token_cache_gb, create=create)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can cause into one sentence and a non-zero exit, never a traceback."""
    try:
        yield
    except BlipsearchError as exc:
        raise click.ClickException(str(exc)) from None
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
            if served and max_megapixels is None:
                from .engine import Engine
                from .store.location import library_location

                settings = open_settings(db_url=db_url, model=model, device=device, itm_token=itm_token,
                                         caption_model=caption_model, vqa_model=vqa_model, quantize=quantize,
                                         token_cache_gb=token_cache_gb)
                engine = Engine.find(library_location(library, db_url), settings)
                if engine is not None:
                    try:
                        return func(engine, **kwargs)
                    finally:
                        engine.close()
            lib = _open(library, db_url, model, device, itm_token, max_megapixels, caption_model, vqa_model,
                        quantize, token_cache_gb, create)
            try:
                return func(lib, **kwargs)
            finally:
                lib.discard_if_unused()  # a first command that failed, or stored nothing, leaves no library

    return wrapper


def with_existing_library(func: Callable[..., Any]) -> Callable[..., Any]:
    """For commands that only read a library: a mistyped --library is an error, not a new library."""
    return with_library(func, create=False)


def with_served_library(func: Callable[..., Any]) -> Callable[..., Any]:
    """An existing library, or the `blipsearch serve` that runs for it."""
    return with_library(func, create=False, served=True)


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


def _display(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
            click.echo(f"{hit.rank:3d}  {hit.score:7.3f}  {_percent(hit.itm)}  {_display(hit.path)}")
            if hit.caption is not None:
                click.echo(f"{'':22}{hit.caption}")
            if hit.answer is not None:
                click.echo(f"{'':22}answer: {hit.answer}")


def _nonempty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("it is empty: say what to look for.")
    return value


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Narrow the images before ranking: -k N gives the N best of those that match. The command gets
    them as one ``filters`` argument (its ``--tag`` as well); a bad value is a usage error."""

    @functools.wraps(func)
    def wrapper(*args: Any, folders: tuple[bytes, ...], after: str | None, before: str | None, camera: str | None,
                min_size: str | None, formats: tuple[str, ...], min_probability: float, **kwargs: Any) -> Any:
        try:
            filters = Filters.make(folders=list(folders), after=after, before=before, tag=kwargs.get("tag"),
                                   min_probability=min_probability, camera=camera, min_size=min_size,
                                   formats=[f for value in formats for f in value.split(",")])
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


class Commands(click.Group):
    """The command group; an argument holding a NUL character or a lone surrogate that stands for no
    byte (neither of which a shell can pass, nor a file name hold) is a usage error before any
    command parses it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            try:
                arg.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise click.UsageError(f"The argument {arg[:40]!r} holds a lone surrogate, which no command "
                                       "line can pass.", ctx) from None
            if "\0" in arg:
                raise click.UsageError("An argument holds a NUL character, which no command line can pass.", ctx)
        return super().parse_args(ctx, args)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="blipsearch")
def main() -> None:
    """Search your photos by text and by image with BLIP.

    \b
    Index a folder once (re-running only picks up what changed):
      blipsearch index ~/Pictures
    Then search it:
      blipsearch search "a dog running on the beach"
      blipsearch similar ~/Pictures/beach.jpg
    Offline demo with the bundled model, in a library of its own:
      blipsearch demo-photos demo
      blipsearch index demo --model builtin:shapes --library demo-library
      blipsearch serve --library demo-library
    """


def _progress(total: int, desc: str):  # type: ignore[no-untyped-def]
    """A progress bar on a terminal, nothing when output goes to a file or a pipe."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), file=sys.stderr)


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


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=bytes))
@click.option("--batch-size", type=PositiveInt(), default=None,
              help="Images per model call. Default: 2 on a CPU (fastest there), 16 on a GPU.")
@click.option("--workers", type=PositiveInt(), default=None,
              help="Threads reading and decoding images. Default: CPU cores, at most 4, with the model on a "
                   "CPU; all cores with the model on a GPU.")
@click.option("--reindex", is_flag=True,
              help="Re-embed every image of the library with --model (after a model change).")
@click.option("--allow-empty", is_flag=True,
              help="Let a folder that now holds no images remove its indexed ones (without it that is an "
                   "error: an unmounted disk leaves an empty mount point).")
@click.option("--captions", is_flag=True,
              help="Also caption every image (with --caption-model; each image and prompt only once, ever).")
@caption_options
@click.option("--tags", "--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also store each image's top labels from FILE (one per line; see `blipsearch tag`), "
                   "for `search --tag`.")
@click.option("--template", type=TEXT, default="a photo of a {}", show_default=True,
              help="With --tags: how a label is said.")
@click.option("--tags-k", type=PositiveInt(), default=5, show_default=True, help="With --tags: labels kept per image.")
@click.option("--retry-failed", is_flag=True,
              help="Read again the files that failed to decode although they did not change since (after "
                   "installing a decoder, say); without it they wait until they change.")
@click.option("--thumbnails/--no-thumbnails", default=True, show_default=True,
              help="Make a small thumbnail of each new image while it is decoded anyway (for `blipsearch "
                   "serve`; about 10-20 KB each). Without, they are made when first shown.")
@click.option("--recall-target", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="R",
              help="Past 200,000 images the vector index is approximate: tune it so that it finds at least "
                   "R of the exact top 10 (measured on the library's own vectors; default 0.95). Kept by the "
                   "library; a new target retunes the index now.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where images are read, decoded and embedded: here, or on a Ray cluster's workers "
                   "(pip install 'blipsearch[ray]'; the photos on a filesystem every node mounts at the same "
                   "path). This process plans and commits either way.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="With --engine ray: the cluster to join (as for ray.init, e.g. auto or ray://host:10001). "
                   "Default: a cluster this process is already part of, else a new one on this machine.")
@click.option("--num-gpus", type=Amount(0), default=0.0, show_default=True,
              help="With --engine ray: GPUs per embedding actor (0: actors on CPUs, one core each). "
                   "--workers sets the number of actors (default: one per CPU, or per GPU).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of counts.")
@with_library
def index(lib: Library, paths: tuple[bytes, ...], batch_size: int | None, workers: int | None, reindex: bool,
          allow_empty: bool, captions: bool, prompt: str, beams: int, max_length: int, min_length: int,
          length_rule: str, labels_file: Path | None, template: str, tags_k: int, retry_failed: bool,
          thumbnails: bool, recall_target: float | None, engine: str, ray_address: str | None, num_gpus: float,
          as_json: bool) -> None:
    """Index the images in PATHS (folders, walked recursively, or files).

    Folders are searched for {formats} files, by their extensions; a file named
    in PATHS is taken whatever its name, and stays indexed until it is deleted.
    New and changed images are embedded; unchanged ones are skipped; moved or
    renamed ones keep their vectors; deleted ones are removed. Files outside
    PATHS are left alone. Broken files are recorded (see `blipsearch failures`)
    and never stop the run; they are read again once they change. Ctrl-C keeps
    every finished batch: run the same command again to resume.

    \b
    Examples:
      blipsearch index ~/Pictures /mnt/photos
      blipsearch index --captions ~/Pictures
      blipsearch index --model Salesforce/blip-itm-large-coco --reindex ~/Pictures
    """
    from .texts import read_text_file

    settings = _caption_settings(prompt, beams, max_length, min_length, length_rule)
    if labels_file is not None and "{}" not in template:
        raise click.UsageError("--template needs {} where the label goes.")
    if captions:
        lib.captioner.check(settings)  # load (or fail) before a long run, never halfway through
    recorded = lib.db.library().model or ""
    if lib.requested_model is None and recorded.startswith("builtin:"):
        click.echo(f"Note: this library's model is {recorded}, a toy model for the demo pictures, which finds "
                   "little in real photos. Give your photos a library of their own (--library DIR), or re-embed "
                   "this one with `blipsearch index --reindex --model Salesforce/blip-itm-base-coco PATH`.",
                   err=True)
    if recall_target is not None and lib.set_recall_target(recall_target):
        click.echo(f"Vector index retuned to recall@10 >= {recall_target}.", err=True)
    ray = None
    if engine == "ray":
        from .index.distributed import RaySettings

        ray = RaySettings(address=ray_address, actors=workers, num_gpus=num_gpus,
                          batch_size=batch_size or (16 if num_gpus else 2))
        workers = None
    elif ray_address is not None or num_gpus:
        raise click.UsageError("--ray-address and --num-gpus go with --engine ray.")
    report = lib.index(list(paths), batch_size=batch_size, workers=workers, reindex=reindex,
                       allow_empty=allow_empty, thumbnails=thumbnails, retry_failed=retry_failed, progress=_progress,
                       ray=ray)
    for path, reason in report.errors[:10]:
        click.echo(f"skipped {_display(os.fsdecode(path))}: {reason}", err=True)
    if len(report.errors) > 10:
        click.echo(f"... and {len(report.errors) - 10} more (see `blipsearch failures`)", err=True)
    if report.failed_before:
        click.echo(f"{report.failed_before} files that failed before are unchanged and were not read again "
                   "(`blipsearch failures` lists them; --retry-failed reads them anyway).", err=True)
    counts: dict[str, int] = report.counts()
    if captions:
        counts["captioned"] = lib.caption_library(list(paths), settings, batch_size=batch_size or 8,
                                                  progress=_progress)
    if labels_file is not None:
        labels = [e.text for e in read_text_file(labels_file, "lines")]
        counts["tagged"] = lib.tag_library(labels, list(paths), template=template, k=tags_k, progress=_progress)
    if as_json:
        _json_line(counts)
    else:
        click.echo(", ".join(f"{v} {k}" for k, v in counts.items()))


index.help = (index.help or "").replace("{formats}", FORMAT_NAMES)  # one list of formats, here and in the walk


@main.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=bytes))
@click.option("--settle", type=Amount(0, strict=True), default=2.0, show_default=True,
              help="Seconds without a new change before the changed folders are indexed (a copy of many "
                   "photos becomes one run).")
@click.option("--batch-size", type=PositiveInt(), default=None, help="Images per model call (as for `index`).")
@click.option("--workers", type=PositiveInt(), default=None, help="Threads decoding images (as for `index`).")
@click.option("--thumbnails/--no-thumbnails", default=True, show_default=True,
              help="Make thumbnails of new images while they are decoded anyway.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line of counts per run.")
@with_library
def watch(lib: Library, folders: tuple[bytes, ...], settle: float, batch_size: int | None, workers: int | None,
          thumbnails: bool, as_json: bool) -> None:
    """Index FOLDERS, then keep them indexed as photos are added, changed, moved or deleted.

    It runs until Ctrl-C. Each burst of changes is followed, once it has settled,
    by an index run over the folders it touched, with the rules of `blipsearch
    index`: unchanged files are skipped, moved ones keep their vectors, deleted
    ones are removed, broken ones are recorded (`blipsearch failures`). A search,
    or a running `blipsearch serve`, sees each run's photos when it ends.

    \b
    Examples:
      blipsearch watch ~/Pictures
      blipsearch watch ~/Pictures /mnt/photos --settle 10 --json
    """
    import time as clock

    def report(changed: list[bytes], result: Any) -> None:
        counts = result.counts()
        if as_json:
            _json_line({"folders": [os.fsdecode(f) for f in changed], **counts})
        else:
            shown = ", ".join(_display(os.fsdecode(f)) for f in changed[:3]) + (" ..." if len(changed) > 3 else "")
            click.echo(f"{clock.strftime('%H:%M:%S')}  {shown}: " + ", ".join(f"{v} {k}" for k, v in counts.items()
                                                                            if v or k == "added"))
        for path, reason in result.errors[:10]:
            click.echo(f"skipped {_display(os.fsdecode(path))}: {reason}", err=True)

    click.echo("Watching (Ctrl-C to stop) ...", err=True)
    lib.watch(list(folders), settle=settle, on_update=report, batch_size=batch_size, workers=workers,
              thumbnails=thumbnails, progress=_progress)


@main.command()
@click.argument("text", type=TEXT, callback=_nonempty)
@_output_flags
@click.option("--rerank-depth", type=PositiveInt(0), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="Rerank this many of the best ITC candidates with the ITM head "
                   "(each costs one vision-encoder pass plus one cross-attention pass).")
@click.option("--no-rerank", is_flag=True,
              help="Rank by ITC cosine only: no image is read or matched again, and no model is loaded (TEXT is "
                   "embedded by a numpy copy of the text encoder).")
@click.option("--hybrid", is_flag=True,
              help="Also match the words of TEXT against captions, file and folder names "
                   "(full text), fused with the vector ranking before reranking.")
@click.option("--and", "also", multiple=True, type=TEXT, metavar="TEXT",
              help="Also look for TEXT (repeatable; `2*TEXT` weighs it twice). See 'Composite queries' below.")
@click.option("--not", "without", multiple=True, type=TEXT, metavar="TEXT",
              help="Look away from TEXT: its vector is subtracted and its ITM match lowers the score.")
@click.option("--like", "like", multiple=True, type=TEXT, metavar="IMAGE",
              help="Also look like IMAGE (a file, or an indexed image's id; ITC only; repeatable).")
@click.option("--unlike", "unlike", multiple=True, type=TEXT, metavar="IMAGE", help="Look unlike IMAGE (ITC only).")
@click.option("--tag", type=TEXT, metavar="LABEL", help="Only images tagged LABEL (see `index --tags`).")
@click.option("--caption", "with_caption", is_flag=True, help="Add a generated caption to each hit (cached).")
@click.option("--ask", "question", type=TEXT, metavar="QUESTION", help="Ask each hit a question; adds `answer`.")
@click.option("--answer", "expected", type=TEXT, metavar="VALUE",
              help="With --ask: keep only the hits whose answer is VALUE (e.g. --ask 'is there a dog?' --answer yes).")
@click.option("--examine", type=PositiveInt(), default=None,
              help="With --answer: how many top hits to ask. Default: max(k, --rerank-depth).")
@_choices_option
@_filter_options
@with_served_library
def search(lib: Library, text: str, k: int, as_json: bool, paths_only: str | None, rerank_depth: int,
           no_rerank: bool, hybrid: bool, tag: str | None, with_caption: bool, question: str | None, expected: str | None,
           examine: int | None, choices_file: Path | None, shortlist: int, filters: Filters,
           also: tuple[str, ...], without: tuple[str, ...], like: tuple[str, ...], unlike: tuple[str, ...]) -> None:
    """Find the images that best match TEXT.

    Candidates come from the vector index by cosine similarity (ITC); the best
    --rerank-depth are rescored by BLIP's image-text matching head, and ranked
    by ITM logit + cosine as in the BLIP paper. Output: rank; score (for
    reranked hits ITM logit + cosine, higher is better and often below 0; for
    the others the cosine); match (ITM's probability that the photo matches
    TEXT, a dash when not reranked); path.

    \b
    Examples:
      blipsearch search "a red circle left of a blue square" -k 5
      blipsearch search "sunset over the sea" --paths0 | xargs -0 ls -l
      blipsearch search "a dog in the park" --caption
      blipsearch search "birthday cake" --hybrid
      blipsearch search "a street at night" --ask "is it raining?" --answer yes
      blipsearch search "a kitchen" --ask "what room is it?" --answer kitchen --choices rooms.txt
      blipsearch search "the beach" --folder ~/Pictures/Trips --after 2024-06 --before 2024-09
      blipsearch search "a beach" --and "2*sunset" --not "people"
      blipsearch search "at night" --like ~/Pictures/street.jpg

    \b
    Composite queries: ITC ranks by the normalized weighted sum of the vectors
    of TEXT (weight 1) and of each --and/--like term, minus each --not/--unlike
    term; ITM reranking adds the weighted ITM logits of the texts (--not ones
    subtracted) over the sum of the positive weights. `match` stays TEXT's.
    """
    if expected is not None and question is None:
        raise click.UsageError("--answer needs --ask QUESTION.")
    if choices_file is not None and question is None:
        raise click.UsageError("--choices needs --ask QUESTION.")
    answers = AnswerSettings(choices=_read_choices(choices_file), shortlist=shortlist)
    if expected is not None and answers.choices and not any(same_answer(c, expected) for c in answers.choices):
        raise click.UsageError(f"--answer {expected!r} is not one of the {len(answers.choices)} choices in "
                               f"{choices_file}.")
    depth = 0 if no_rerank else rerank_depth
    wanted = (examine or max(k, depth)) if expected is not None else k
    try:
        terms = ([text_term(t) for t in also] + [text_term(t, -1) for t in without]
                 + [image_term(i) for i in like] + [image_term(i, -1) for i in unlike])
    except BlipsearchError as exc:
        raise click.UsageError(str(exc)) from None
    hits = lib.search(text, wanted, rerank_depth=depth, rerank_hits=depth > 0, hybrid=hybrid, filters=filters,
                      terms=terms)
    settings = CaptionSettings() if with_caption else None
    if expected is not None:
        hits = lib.describe(hits, question=question, answers=answers)
        examined = len(hits)
        kept = lib.keep_answer(hits, expected)
        hits = kept[:k]
        shown = f" (showing {len(hits)})" if len(hits) < len(kept) else ""
        click.echo(f"Asked {question!r} of the top {examined} hits: {len(kept)} answered {expected!r}{shown}.",
                   err=True)
        if settings is not None:
            hits = lib.describe(hits, caption=settings)
    elif settings is not None or question is not None:
        hits = lib.describe(hits, caption=settings, question=question, answers=answers)
    if not hits and tag is not None:
        click.echo(f"No indexed image is tagged {tag!r} (tags come from `blipsearch index --tags FILE`).", err=True)
    _print_hits(hits, as_json, paths_only)
    if filters and not as_json and not paths_only:
        click.echo(f"{lib.count(filters):,} indexed photos match the filters.", err=True)
    _warn_unsearchable(lib)


def _warn_unsearchable(lib: Library) -> None:
    missing, images = lib.unsearchable()
    if missing:
        click.echo(f"Note: {missing} of {images} indexed images have no vector from this model yet "
                   "and can't be found (an interrupted `index --reindex`?): run that index command again "
                   "to finish.", err=True)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@caption_options
@click.option("--json", "as_json", is_flag=True, help='One {"path", "caption"} object per line.')
@functools.partial(with_library, served=True)
def caption(lib: Library, images: tuple[bytes, ...], prompt: str, beams: int, max_length: int, min_length: int,
            length_rule: str, as_json: bool) -> None:
    """Caption IMAGES (any image files, indexed or not).

    Captions are cached in the library by image content, model, prompt and decoding settings.

    \b
    Examples:
      blipsearch caption holiday/*.jpg
      blipsearch caption photo.jpg --caption-model Salesforce/blip-image-captioning-large --json
    """
    settings = _caption_settings(prompt, beams, max_length, min_length, length_rule)
    results = lib.caption(list(images), settings, progress=_progress)
    _print_described(results, "caption", as_json)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@click.argument("question", type=TEXT)
@click.option("--beams", type=PositiveInt(1, MAX_BEAMS), default=3, show_default=True, help="Beam-search width.")
@click.option("--max-length", type=PositiveInt(), default=10, show_default=True,
              help="Maximum answer length in tokens.")
@_length_rule_option
@_choices_option
@click.option("--json", "as_json", is_flag=True,
              help='One {"path", "question", "answer"} object per line; with --choices also "choices": '
                   'each choice\'s "score" (the ranking\'s), "log_likelihood" and "first_token" probability.')
@functools.partial(with_library, served=True)
def ask(lib: Library, images: tuple[bytes, ...], question: str, beams: int, max_length: int, length_rule: str,
        choices_file: Path | None, shortlist: int, as_json: bool) -> None:
    """Ask QUESTION about each of IMAGES (visual question answering).

    The answer is generated by beam search, or, with --choices, is the best of
    a list: the choices of likeliest first word-piece (--shortlist of them) are
    scored by the decoder in full, and the highest score wins. The score is
    the paper's: minus the answer's summed token cross-entropy with label
    smoothing 0.1, [SEP] included (higher is better).

    \b
    Examples:
      blipsearch ask photo.jpg "how many people are there?"
      blipsearch ask a.jpg b.jpg "is it raining?" --json
      printf 'indoors\\noutdoors\\n' > where.txt
      blipsearch ask *.jpg "where was this taken?" --choices where.txt
    """
    settings = AnswerSettings(num_beams=beams, max_length=max_length, length_rule=length_rule,
                              choices=_read_choices(choices_file), shortlist=shortlist)
    results = lib.ask(list(images), question, settings)
    _print_described(results, "answer", as_json, question)


def _print_described(results: list[Any], field: str, as_json: bool, question: str | None = None) -> None:
    failed = 0
    for result in results:
        if result.text is None:
            failed += 1
            click.echo(f"{_display(result.path)}: {result.error}", err=True)
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
            click.echo(f"{_display(result.path)}: {result.text}")
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} images could not be read.")


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@_output_flags
@click.option("--tag", type=TEXT, metavar="LABEL", help="Only images tagged LABEL (see `index --tags`).")
@_filter_options
@with_served_library
def similar(lib: Library, image: bytes, k: int, as_json: bool, paths_only: str | None, tag: str | None,
            filters: Filters) -> None:
    """Find the images that look most like IMAGE (any image file, indexed or not).

    \b
    Examples:
      blipsearch similar ~/Pictures/beach/IMG_0042.jpg -k 5
      blipsearch similar download.png --paths0 | xargs -0 ls -l
      blipsearch similar cat.jpg --folder ~/Pictures/2023"""
    _print_hits(lib.similar(image, k, filters=filters), as_json, paths_only)
    _warn_unsearchable(lib)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:6.1f} MB"


@main.command()
@click.option("--threshold", type=Amount(0, strict=True), default=0.95, show_default=True,
              help="Least ITC cosine between two photos for them to count as copies (1.0: only identical "
                   "vectors; lower finds edits and crops, and sooner photos of the same scene).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group per line.")
@click.option("--paths", "paths_only", flag_value="\n",
              help="Print only the copies after each group's best, one path per line (what you might move away).")
@click.option("-0", "--paths0", "paths_only", flag_value="\0", help="The same, each path ended by a NUL byte.")
@click.option("--tag", type=TEXT, metavar="LABEL", help="Only images tagged LABEL (see `index --tags`).")
@_filter_options
@with_existing_library
def duplicates(lib: Library, threshold: float, as_json: bool, paths_only: str | None, tag: str | None,
               filters: Filters) -> None:
    """Find photos that are copies of each other: the same shot resized, re-encoded, lightly cropped
    or byte for byte.

    Every pair of indexed photos whose ITC vectors reach --threshold joins a
    group; the best copy (most pixels, then largest file) comes first, byte-identical
    files are marked `same`. Nothing is changed or deleted. Output: per group, the
    best copy, then each other copy with its cosine to the best.

    \b
    Examples:
      blipsearch duplicates
      blipsearch duplicates --folder ~/Pictures/2024 --threshold 0.97
      blipsearch duplicates --paths0 | xargs -0 mv -t ~/possible-duplicates/
    """
    if threshold > 1:
        raise click.BadParameter("it is a cosine: at most 1.", param_hint="--threshold")
    groups = lib.duplicates(threshold, filters=filters)
    for group in groups:
        if paths_only:
            for copy in group.copies[1:]:
                _echo_path(copy.path, paths_only)
        elif as_json:
            _json_line(group.to_dict())
        else:
            click.echo(f"group {group.rank}: {len(group.copies)} photos")
            for n, copy in enumerate(group.copies):
                mark = "best" if n == 0 else "same" if copy.exact else f"{copy.similarity:.3f}"
                dims = f"{copy.width}x{copy.height}" if copy.width and copy.height else "?"
                click.echo(f"  {mark:>6}  {dims:>11}  {_megabytes(copy.size)}  {_display(copy.path)}")
    if not paths_only and not as_json:
        photos = sum(len(g.copies) for g in groups)
        click.echo(f"{len(groups)} groups, {photos} photos, at cosine >= {threshold:g}" if groups else
                   f"No two photos reach cosine {threshold:g}.", err=True)


@main.group()
def texts() -> None:
    """A collection of texts to match images against (see `blipsearch lookup`).

    \b
    Examples:
      blipsearch texts add descriptions.csv     # columns: id, text, any metadata
      blipsearch texts add captions.jsonl       # {"id": ..., "text": ..., ...} per line
      blipsearch texts add labels.txt           # one text per line
      blipsearch texts list
      blipsearch texts remove 12 sku-0042
    """


@texts.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "lines", "jsonl", "csv"]), default="auto",
              show_default=True, help="auto: by extension (.jsonl/.ndjson, .csv/.tsv, else one text per line).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of counts.")
@with_library
def texts_add(lib: Library, file: Path, fmt: str, as_json: bool) -> None:
    """Add the texts in FILE; texts already there are skipped, new ones embedded.

    \b
    Examples:
      blipsearch texts add products.csv      # columns: id,text[,more metadata...]
      blipsearch texts add captions.jsonl    # {"id": ..., "text": ..., ...} per line
      blipsearch texts add labels.txt        # one text per line"""
    from .texts import read_text_file

    added, present = lib.add_texts(read_text_file(file, fmt))
    if as_json:
        _json_line({"added": added, "already_present": present})
    else:
        click.echo(f"{added} added, {present} already present")


@texts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text per line.")
@with_existing_library
def texts_list(lib: Library, as_json: bool) -> None:
    """List the texts of the collection: id, the id from its file, text.

    \b
    Example:
      blipsearch texts list --json"""
    rows = lib.texts()
    if not rows:
        click.echo("The collection has no texts yet (see `blipsearch texts add --help`).", err=True)
    for row in rows:
        if as_json:
            _json_line({"id": row.id, "external_id": row.external_id, "text": row.text, "meta": row.meta})
        else:
            click.echo(f"{row.id:6d}  {row.external_id or '-':12}  {row.text}")


@texts.command("remove")
@click.argument("ids", nargs=-1, required=True, type=TEXT)
@with_existing_library
def texts_remove(lib: Library, ids: tuple[str, ...]) -> None:
    """Remove texts by id (as `texts list` shows) or by the id they had in their file.

    \b
    Example:
      blipsearch texts remove 12 sku-1"""
    removed = lib.remove_texts(list(ids))
    click.echo(f"{removed} removed")
    if removed == 0:
        raise click.ClickException("No text has these ids (see `blipsearch texts list`).")


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@click.option("-k", "--top-k", "k", type=PositiveInt(), default=10, show_default=True, help="Number of results.")
@click.option("--rerank-depth", type=PositiveInt(0), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="Rerank this many of the best ITC texts with the ITM head (the image is encoded once).")
@click.option("--no-rerank", is_flag=True, help="Rank by ITC cosine only.")
@click.option("--source", type=click.Choice(["texts", "captions"]), default="texts", show_default=True,
              help="Match against the text collection, or the library's generated captions.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text per line.")
@with_served_library
def lookup(lib: Library, image: bytes, k: int, rerank_depth: int, no_rerank: bool, source: str,
           as_json: bool) -> None:
    """Find the texts that best describe IMAGE.

    \b
    Examples:
      blipsearch texts add product-descriptions.csv
      blipsearch lookup photo.jpg -k 3
      blipsearch lookup photo.jpg --source captions --json
    """
    hits = lib.lookup(image, k, rerank_depth=rerank_depth, rerank_hits=not no_rerank, source=source)
    if hits and not as_json:
        click.echo(HEADER + "text")
    for hit in hits:
        if as_json:
            _json_line(hit.to_dict())
        else:
            click.echo(f"{hit.rank:3d}  {hit.score:7.3f}  {_percent(hit.itm)}  {hit.text}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@click.option("--labels", "labels_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of labels, one per line.")
@click.option("--template", type=TEXT, default="a photo of a {}", show_default=True,
              help="How a label is said; {} is the label.")
@click.option("-k", "--top-k", "k", type=PositiveInt(), default=5, show_default=True, help="Labels per image.")
@click.option("--rerank-depth", type=PositiveInt(0), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="Rescore this many of the best labels by ITC with the ITM head.")
@click.option("--json", "as_json", is_flag=True, help='One {"path", "tags": [...]} object per image per line.')
@with_library
def tag(lib: Library, images: tuple[bytes, ...], labels_file: Path, template: str, k: int, rerank_depth: int,
        as_json: bool) -> None:
    """Rank your own labels for each of IMAGES (zero-shot tagging).

    Each label is written into --template, matched by ITC cosine, and the best
    --rerank-depth are rescored with ITM; `itm` is the match probability.

    \b
    Examples:
      blipsearch tag holiday/*.jpg --labels labels.txt
      blipsearch tag photo.jpg --labels animals.txt --template "a photo of a {}, a type of animal" --json
    """
    from .texts import read_text_file

    labels = [e.text for e in read_text_file(labels_file, "lines")]
    failed = 0
    for result in lib.tag(list(images), labels, template=template, k=k, rerank_depth=rerank_depth):
        if result.tags is None:
            failed += 1
            click.echo(f"{_display(result.path)}: {result.error}", err=True)
        elif as_json:
            _json_line({"path": result.path, "tags": [t.to_dict() for t in result.tags]})
        else:
            click.echo(_display(result.path))
            click.echo(f"  {'#':>2}  {'score':>7}  {'match':>6}  label")
            for t in result.tags:
                click.echo(f"  {t.rank:2d}  {t.score:7.3f}  {_percent(t.itm)}  {t.label}")
    if failed:
        raise click.ClickException(f"{failed} of {len(images)} images could not be read.")


@main.command("demo-photos")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=PositiveInt(), default=200, show_default=True, help="Number of pictures.")
@click.option("--seed", type=PositiveInt(0), default=1, show_default=True, help="Same seed, same pictures.")
def demo_photos(folder: Path, count: int, seed: int) -> None:
    """Write a folder of synthetic "shapes world" pictures (and their captions) to try blipsearch
    offline with the built-in model.

    \b
    Example:
      blipsearch demo-photos demo
      blipsearch index demo --model builtin:shapes --library demo-library
      blipsearch search "a red circle left of a blue square" --library demo-library -k 5
      blipsearch eval demo demo/captions.jsonl --model builtin:shapes
    """
    from .shapes.world import generate, write_folder

    with _errors():
        try:
            if folder.is_dir() and any(folder.iterdir()):
                raise click.ClickException(f"{folder} is not empty: give a new or empty folder, so that its "
                                           "pictures and captions.jsonl stay one set.")
            captions = write_folder(folder, generate("test", count, seed))
        except OSError as exc:
            raise click.ClickException(f"Can't write to {folder}: {exc.strerror}") from None
    click.echo(f"{count} pictures in {_display(str(folder / 'images'))}, captions in {_display(str(captions))}")


@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--head", type=click.Choice(["auto", "retrieval", "caption", "vqa"]), default="auto", show_default=True,
              help="Which model to make: auto reads it from the weights; a pre-trained checkpoint, which holds "
                   "several, needs one named.")
@click.option("--tokenizer", type=TEXT, default="google-bert/bert-base-uncased", show_default=True,
              help="The tokenizer BLIP was trained with (a folder or hub id); [DEC] and [ENC] are added.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A config.json to use instead of the one read from the weights' shapes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object of what was written.")
def convert(source: Path, out: Path, head: str, tokenizer: str, config_file: Path | None, as_json: bool) -> None:
    """Write an original BLIP checkpoint (SOURCE.pth) as a Hugging Face model folder OUT.

    Reads the Salesforce BLIP repository's checkpoints (model_base_retrieval_coco.pth,
    model_base_caption_capfilt_large.pth, model_base_vqa_capfilt_large.pth, ...) and
    OpenMMLab mmpretrain's (blip-base_3rdparty_coco-retrieval_*.pth, ...), with
    torch.load(weights_only=True). Every weight is mapped or the conversion fails;
    only training state (momentum encoders, queues) is left out. Passing a .pth
    as --model, --caption-model or --vqa-model converts it once by itself.

    \b
    Examples:
      blipsearch convert model_base_retrieval_coco.pth blip-coco
      blipsearch index ~/Pictures --model blip-coco
      blipsearch convert model_base.pth blip-captioner --head caption --tokenizer ./bert-base-uncased
    """
    from .models.convert import convert as convert_checkpoint

    with _errors():
        done = convert_checkpoint(source, out, head=None if head == "auto" else head,  # type: ignore[arg-type]
                                  tokenizer=tokenizer, config=config_file)
    if as_json:
        _json_line(done.to_dict())
        return
    aside = f"; set aside as other heads' parts: {', '.join(done.set_aside)}" if done.set_aside else ""
    click.echo(f"{done.layout} BLIP {done.head} model: {done.weights} weights written to {_display(str(out))}, "
               f"{done.dropped} training-only tensors left out{aside}.")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@with_existing_library
def status(lib: Library, as_json: bool) -> None:
    """Show the library: image and vector counts, failures, model, location.

    `stale` counts indexed images that have no vector from the library's model
    yet (a --reindex cut short): run that index command again to finish.

    \b
    Examples:
      blipsearch status
      blipsearch status --library ~/photo-index --json"""
    info = lib.status()
    if as_json:
        _json_line(info)
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<18} {value if value is not None else '-'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@with_existing_library
def upgrade(lib: Library, as_json: bool) -> None:
    """Bring a library written by an older blipsearch to this one's schema.

    Every command does this when it opens such a library; this one does only
    that, for a library the other commands can't upgrade (one opened read-only, or
    by a user who can't write to it). A SQLite file is copied to
    library.db.schema-N.bak first.

    \b
    Examples:
      blipsearch upgrade --library ~/photo-index
      blipsearch upgrade --db postgresql+psycopg://me@dbhost/photos
    """
    from .store.revisions import current
    from .store.schema import SCHEMA_VERSION

    with lib.db.engine.connect() as conn:
        revision = current(conn)
    info = {"schema": SCHEMA_VERSION, "revision": revision, "database": lib.db.display_url}
    if as_json:
        _json_line(info)
    else:
        click.echo(f"{lib.db.display_url} is at schema {SCHEMA_VERSION} (revision {revision}).")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per failure per line.")
@with_existing_library
def failures(lib: Library, as_json: bool) -> None:
    """List the files that could not be indexed, with the reason.

    Each one is tried again by the next index run over its folder.

    \b
    Examples:
      blipsearch failures
      blipsearch failures --json > failures.jsonl"""
    found = lib.failures()
    if not found:
        click.echo("No file failed to index.", err=True)
    for failure in found:
        if as_json:
            _json_line({"path": failure.path, "reason": failure.reason})
        else:
            click.echo(f"{_display(failure.path)}: {failure.reason}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback (127.0.0.1, ::1, localhost) exposes the "
                   "library to the network and needs --token (one is made up and printed if not given).")
@click.option("--port", type=PositiveInt(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--token", envvar="BLIPSEARCH_TOKEN", metavar="TOKEN",
              help="Every request must carry it (the page asks once, at the printed address). "
                   "Env: BLIPSEARCH_TOKEN.")
@click.option("--allow-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another host name the server may be reached by (a reverse proxy's, say); repeatable. "
                   "Requests naming any other host are refused.")
@click.option("--rerank-depth", type=PositiveInt(0), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="Default number of ITC candidates rescored by ITM for each text search.")
@click.option("--max-upload-mb", type=Amount(0, strict=True), default=25.0, show_default=True,
              help="Largest image accepted for searching by image.")
@click.option("--max-upload-megapixels", type=Amount(0, strict=True), default=50.0, show_default=True,
              help="Most pixels an uploaded image may have (decompression bombs are refused).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser once serving.")
@with_existing_library
def serve(lib: Library, host: str, port: int, token: str | None, allowed_hosts: tuple[str, ...],
          rerank_depth: int, max_upload_mb: float, max_upload_megapixels: float, open_browser: bool) -> None:
    """Serve the library as a web page and an HTTP API (OpenAPI at /docs).

    The page searches by text, by example and by a photo dropped onto it,
    shows the hits as thumbnails, and each photo with its caption, a box to
    ask it questions and the photos like it. New photos that `blipsearch index`
    adds meanwhile show up without a restart. Ctrl-C stops it, after the
    requests under way.

    \b
    Examples:
      blipsearch serve                                  # http://127.0.0.1:8000/
      blipsearch serve --library demo-library --open
      blipsearch serve --host 0.0.0.0 --port 8080       # reachable from the network, with a token
      curl 'http://127.0.0.1:8000/api/search?q=a+dog+on+the+beach&k=5'
    """
    from .web import ServeSettings
    from .web.server import address, prepare
    from .web.server import serve as run

    settings, made_up = prepare(ServeSettings(
        host=host, port=port, token=token or None, allowed_hosts=allowed_hosts, rerank_depth=rerank_depth,
        max_upload_bytes=int(max_upload_mb * 2**20), max_upload_pixels=int(max_upload_megapixels * 1e6)))

    def announce(bound: int) -> None:
        url = address(settings, bound)
        info = lib.status()
        click.echo(f"Serving {info['images']:,} photos from {info['library']} at {url}", err=True)
        if made_up:
            click.echo("Reachable from other machines: every request needs the token in that address "
                       "(or give your own with --token).", err=True)
        click.echo("Press Ctrl-C to stop.", err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    run(lib, settings, announce)
    click.echo("Stopped.", err=True)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@click.argument("text", type=TEXT, callback=_nonempty)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Where to write the picture (PNG): the image with the heat map over it.")
@click.option("--size", type=PositiveInt(16, 4096), default=768, show_default=True,
              help="Longest side of the picture written, in pixels.")
@click.option("--json", "as_json", is_flag=True,
              help="Also print the map itself: one JSON object with the grid of weights (summing to 1).")
@with_library
def explain(lib: Library, image: bytes, text: str, out: Path, size: int, as_json: bool) -> None:
    """Show where in IMAGE the image-text matching head finds TEXT (Grad-CAM on its cross-attention).

    \b
    Example:
      blipsearch explain beach.jpg "a dog running on the beach" --out heat.png
    """
    result = lib.explain(image, text)
    picture = result.overlay(size)
    try:
        picture.save(out, "PNG")
    except OSError as exc:
        raise click.ClickException(f"Can't write {out}: {exc.strerror or exc}") from None
    if as_json:
        _json_line({"path": os.fsdecode(image), "text": text, "out": str(out), "itm": result.itm,
                    "heat": [[round(float(v), 6) for v in row] for row in result.heat]})
    else:
        click.echo(f"{_display(str(out))}: where the match for {text!r} lies "
                   f"(match probability {result.itm * 100:.1f}%)")


@main.command("eval")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("captions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split to use from a Karpathy-split JSON.")
@click.option("--rerank-depth", type=PositiveInt(1), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="ITC candidates rescored by ITM per query (the BLIP paper: 256 on COCO, 128 on Flickr30k).")
@click.option("--batch-size", type=PositiveInt(), default=None,
              help="Images per model call. Default: 2 on a CPU, 16 on a GPU.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@library_options
@click.pass_context
def eval_command(ctx: click.Context, images_dir: Path, captions: Path, split: str, rerank_depth: int,
                 batch_size: int | None, as_json: bool, library: str | None, db_url: str | None, model: str | None,
                 device: str, quantize: str | None, token_cache_gb: float, itm_token: str, caption_model: str | None,
                 vqa_model: str | None, max_megapixels: float | None) -> None:
    """Measure retrieval quality: Recall@1/5/10, text->image and image->text, ITC and reranked.

    CAPTIONS is JSON lines {"image": path relative to IMAGES_DIR, "captions": [...]},
    BLIP's annotation list, or a Karpathy-split COCO / Flickr30k JSON (with --split).
    The images are indexed into a temporary library unless --library is given on
    the command line.

    \b
    Examples:
      blipsearch eval shapes-test/ shapes-test/captions.jsonl --model builtin:shapes
      blipsearch eval coco/images dataset_coco.json --split test --rerank-depth 256 \\
          --model Salesforce/blip-itm-base-coco --device cuda
    """
    import tempfile

    from .evaluation import evaluate, format_table

    explicit = ctx.get_parameter_source("library") == click.core.ParameterSource.COMMANDLINE
    with _errors(), tempfile.TemporaryDirectory(prefix="blipsearch-eval-") as tmp:
        lib = _open(library if explicit else tmp, db_url if explicit else None, model, device, itm_token,
                    max_megapixels, caption_model, vqa_model, quantize)
        try:
            result = evaluate(lib, images_dir, captions, split=split, rerank_depth=rerank_depth,
                              batch_size=batch_size, progress=_progress)
        finally:
            lib.close()
    if as_json:
        _json_line(result)
    else:
        click.echo(format_table(result))


if __name__ == "__main__":  # pragma: no cover
    main()
