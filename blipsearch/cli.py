"""The ``blipsearch`` command line. It parses, calls :class:`blipsearch.Library`, prints."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .errors import BlipsearchError
from .library import LIBRARY_ENV, Hit, Library
from .model import DEFAULT_MODEL

EXIT_INTERRUPTED = 130


class PositiveInt(click.ParamType):
    name = "N"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number.", param, ctx)
        if number < self.minimum:
            self.fail(f"{number} is too small: it must be at least {self.minimum}.", param, ctx)
        return number


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
            "--itm-token",
            type=click.Choice(["enc", "cls"]),
            default="enc",
            show_default=True,
            help="First token of the text for image-text matching: BLIP's [ENC] or plain [CLS].",
        ),
        click.option(
            "--max-megapixels",
            type=float,
            default=None,
            help="Refuse images larger than this (decompression-bomb guard). Default: Pillow's, about 89.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _open(library: str | None, db_url: str | None, model: str | None, device: str, itm_token: str,
          max_megapixels: float | None) -> Library:
    if max_megapixels is not None:
        from PIL import Image

        if max_megapixels <= 0:
            raise click.UsageError("--max-megapixels must be positive.")
        Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1_000_000)
    return Library(library, db_url=db_url, model=model, device=device, itm_token=itm_token)  # type: ignore[arg-type]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can cause into one sentence and a non-zero exit, never a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except BlipsearchError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"Database error: {getattr(exc, 'orig', None) or exc}") from None
    except KeyboardInterrupt:
        click.echo("\nInterrupted: everything finished so far is saved; run the same command again to resume.",
                   err=True)
        sys.exit(EXIT_INTERRUPTED)


def with_library(func: Callable[..., Any]) -> Callable[..., Any]:
    @library_options
    @functools.wraps(func)
    def wrapper(library, db_url, model, device, itm_token, max_megapixels, **kwargs):  # type: ignore[no-untyped-def]
        with _errors():
            lib = _open(library, db_url, model, device, itm_token, max_megapixels)
            try:
                return func(lib, **kwargs)
            finally:
                lib.close()

    return wrapper


def _echo_path(path: str) -> None:
    """Write a path exactly as the file system has it, even when it is not valid UTF-8."""
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        click.echo(path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    else:
        out.write(os.fsencode(path) + b"\n")
        out.flush()


def _display(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _json_line(obj: dict[str, Any]) -> None:
    # Paths that are not UTF-8 keep their raw bytes as \udcXX escapes, which
    # json.loads in Python turns back into the same os.fsencode-able string.
    click.echo(json.dumps(obj, ensure_ascii=True))


def _print_hits(hits: list[Hit], as_json: bool, paths_only: bool) -> None:
    for hit in hits:
        if paths_only:
            _echo_path(hit.path)
        elif as_json:
            _json_line(hit.to_dict())
        else:
            match = f"{hit.itm * 100:5.1f}%" if hit.itm is not None else "     -"
            click.echo(f"{hit.rank:3d}  {hit.score:7.3f}  {match}  {_display(hit.path)}")


def _output_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--paths", "paths_only", is_flag=True, help="Print only paths, one per line (for piping).")(func)
    func = click.option("--json", "as_json", is_flag=True, help="One JSON object per hit per line.")(func)
    return click.option("-k", "--top-k", "k", type=PositiveInt(), default=10, show_default=True,
                        help="Number of results.")(func)


def _check_output_flags(as_json: bool, paths_only: bool) -> None:
    if as_json and paths_only:
        raise click.UsageError("--json and --paths can't be used together.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="blipsearch")
def main() -> None:
    """Search your photos by text and by image with BLIP.

    \b
    Index a folder once (re-running only picks up what changed):
      blipsearch index ~/Pictures
    Then search it:
      blipsearch search "a dog running on the beach"
      blipsearch similar ~/Pictures/beach.jpg
    Offline demo with the bundled model:
      blipsearch index --model builtin:shapes DEMO_FOLDER
    """


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=bytes))
@click.option("--batch-size", type=PositiveInt(), default=16, show_default=True,
              help="Images per model call. Larger is faster on GPUs, uses more memory.")
@click.option("--workers", type=PositiveInt(), default=None,
              help="Threads reading and decoding images. Default: CPU count, at most 4.")
@click.option("--reindex", is_flag=True,
              help="Re-embed every image of the library with --model (after a model change).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of counts.")
@with_library
def index(lib: Library, paths: tuple[bytes, ...], batch_size: int, workers: int | None, reindex: bool,
          as_json: bool) -> None:
    """Index the images in PATHS (folders, walked recursively, or files).

    New and changed images are embedded; unchanged ones are skipped; moved or
    renamed ones keep their vectors; deleted ones are removed. Files outside
    PATHS are left alone. Broken files are recorded (see `blipsearch failures`)
    and never stop the run. Ctrl-C keeps every finished batch: run the same
    command again to resume.

    \b
    Examples:
      blipsearch index ~/Pictures /mnt/photos
      blipsearch index --model Salesforce/blip-itm-large-coco --reindex ~/Pictures
    """
    from tqdm import tqdm

    def progress(total: int, desc: str):  # type: ignore[no-untyped-def]
        return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), file=sys.stderr)

    report = lib.index(list(paths), batch_size=batch_size, workers=workers, reindex=reindex, progress=progress)
    for path, reason in report.errors[:10]:
        click.echo(f"skipped {_display(os.fsdecode(path))}: {reason}", err=True)
    if len(report.errors) > 10:
        click.echo(f"... and {len(report.errors) - 10} more (see `blipsearch failures`)", err=True)
    counts = report.counts()
    if as_json:
        _json_line(counts)
    else:
        click.echo(", ".join(f"{v} {k}" for k, v in counts.items()))


@main.command()
@click.argument("text")
@_output_flags
@click.option("--rerank-depth", type=PositiveInt(0), default=32, show_default=True,
              help="Rerank this many of the best ITC candidates with the ITM head "
                   "(each costs one vision-encoder pass plus one cross-attention pass).")
@click.option("--no-rerank", is_flag=True, help="Rank by ITC cosine only (fast).")
@with_library
def search(lib: Library, text: str, k: int, as_json: bool, paths_only: bool, rerank_depth: int,
           no_rerank: bool) -> None:
    """Find the images that best match TEXT.

    Candidates come from the vector index by cosine similarity (ITC); the best
    --rerank-depth are rescored by BLIP's image-text matching head, and ranked
    by ITM logit + cosine as in the BLIP paper. Output: rank, score, match
    probability, path.

    \b
    Examples:
      blipsearch search "a red circle left of a blue square" -k 5
      blipsearch search "sunset over the sea" --paths | xargs open
    """
    _check_output_flags(as_json, paths_only)
    hits = lib.search(text, k, rerank_depth=rerank_depth, rerank_hits=not no_rerank)
    _print_hits(hits, as_json, paths_only)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@_output_flags
@with_library
def similar(lib: Library, image: bytes, k: int, as_json: bool, paths_only: bool) -> None:
    """Find the images that look most like IMAGE (any image file, indexed or not)."""
    _check_output_flags(as_json, paths_only)
    _print_hits(lib.similar(image, k), as_json, paths_only)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@with_library
def status(lib: Library, as_json: bool) -> None:
    """Show the library: image and vector counts, failures, model, location."""
    info = lib.status()
    if as_json:
        _json_line(info)
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<18} {value if value is not None else '-'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per failure per line.")
@with_library
def failures(lib: Library, as_json: bool) -> None:
    """List the files that could not be indexed, with the reason."""
    for failure in lib.failures():
        if as_json:
            _json_line({"path": failure.path, "reason": failure.reason})
        else:
            click.echo(f"{_display(failure.path)}: {failure.reason}")


@main.command("eval")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("captions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split to use from a Karpathy-split JSON.")
@click.option("--rerank-depth", type=PositiveInt(1), default=16, show_default=True,
              help="ITC candidates rescored by ITM per query (the BLIP paper: 256 on COCO, 128 on Flickr30k).")
@click.option("--batch-size", type=PositiveInt(), default=16, show_default=True, help="Images per model call.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@library_options
@click.pass_context
def eval_command(ctx: click.Context, images_dir: Path, captions: Path, split: str, rerank_depth: int,
                 batch_size: int, as_json: bool, library: str | None, db_url: str | None, model: str | None,
                 device: str, itm_token: str, max_megapixels: float | None) -> None:
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

    from tqdm import tqdm

    from .evaluation import evaluate, format_table

    def progress(total: int, desc: str):  # type: ignore[no-untyped-def]
        return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), file=sys.stderr)

    explicit = ctx.get_parameter_source("library") == click.core.ParameterSource.COMMANDLINE
    with _errors(), tempfile.TemporaryDirectory(prefix="blipsearch-eval-") as tmp:
        lib = _open(library if explicit else tmp, db_url if explicit else None, model, device, itm_token,
                    max_megapixels)
        try:
            result = evaluate(lib, images_dir, captions, split=split, rerank_depth=rerank_depth,
                              batch_size=batch_size, progress=progress)
        finally:
            lib.close()
    if as_json:
        _json_line(result)
    else:
        click.echo(format_table(result))


if __name__ == "__main__":  # pragma: no cover
    main()
