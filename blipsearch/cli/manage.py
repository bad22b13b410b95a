"""The library and its models: ``status``, ``upgrade``, ``image``, ``failures``, ``convert``, ``demo-photos``
and ``eval``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..options import DEFAULT_RERANK_DEPTH
from . import options
from .options import (
    TEXT,
    PositiveInt,
    _errors,
    _json_line,
    _progress,
    library_options,
    shown_path,
    with_existing_library,
)

if TYPE_CHECKING:
    from ..library import Library


@click.command()
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


@click.command()
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
    from ..store.revisions import current
    from ..store.schema import SCHEMA_VERSION

    with lib.db.engine.connect() as conn:
        revision = current(conn)
    info = {"schema": SCHEMA_VERSION, "revision": revision, "database": lib.db.display_url}
    if as_json:
        _json_line(info)
    else:
        click.echo(f"{lib.db.display_url} is at schema {SCHEMA_VERSION} (revision {revision}).")


@click.command()
@click.argument("image_id", metavar="ID", type=PositiveInt(1, 2**63 - 1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object (EXIF and tags included).")
@with_existing_library
def image(lib: Library, image_id: int, as_json: bool) -> None:
    """Show what the library knows of the indexed image ID (search results give
    ids): its file, when it was taken and from what, its title, description,
    keywords, rating and colour label, and where it was taken.

    \b
    Examples:
      blipsearch image 1042
      blipsearch image 1042 --json"""
    info = lib.image(image_id).to_dict()
    if as_json:
        _json_line(info)
        return
    for key, value in image_lines(info):
        click.echo(f"{key + ':':<13} {value}")


def image_lines(info: dict) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    """(name, text) of each thing known of an image, from its ``to_dict()``; the unknown left out."""
    rating = info.get("rating")
    stars = None if rating is None else "rejected" if rating < 0 else f"{'*' * rating}{'-' * (5 - rating)} ({rating})"
    place = info.get("place") or {}
    latitude, longitude = info.get("latitude"), info.get("longitude")
    camera_size = f"{info['width']} x {info['height']}" if info.get("width") else None
    rows = [
        ("id", info["id"]), ("path", shown_path(info["path"])), ("date", info["taken"]), ("title", info.get("title")),
        ("description", info.get("description")), ("keywords", ", ".join(info.get("keywords") or []) or None),
        ("rating", stars), ("label", info.get("label")), ("place", place.get("name")),
        ("position", None if latitude is None or longitude is None else f"{latitude:.6f}, {longitude:.6f}"),
        ("camera", info.get("camera")), ("pixels", camera_size), ("bytes", f"{info['size']:,}"),
        ("tags", ", ".join(t["label"] for t in info.get("tags") or [] if t.get("kept")) or None),
    ]
    return [(key, str(value)) for key, value in rows if value is not None]


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per failure per line: "path", "reason", "retried" ("once changed" or "every run").')
@with_existing_library
def failures(lib: Library, as_json: bool) -> None:
    """List the files that could not be indexed, with the reason.

    A file that could not be decoded is read again by an index run over its
    folder once it changed (until then it would only fail again), or by
    `blipsearch index --retry-failed` (after installing a decoder, say); one
    that could not be read at all (permissions, I/O errors), or was refused for
    a setting (--max-megapixels), is tried again by every index run.

    \b
    Examples:
      blipsearch failures
      blipsearch failures --json > failures.jsonl"""
    found = lib.failures()
    if not found:
        click.echo("No file failed to index.", err=True)
    for failure in found:
        if as_json:
            _json_line({"path": failure.path, "reason": failure.reason, "retried": failure.retried})
        else:
            click.echo(f"{shown_path(failure.path)}: {failure.reason}")


@click.command()
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
    from ..models.convert import convert as convert_checkpoint

    with _errors():
        done = convert_checkpoint(source, out, head=None if head == "auto" else head,  # type: ignore[arg-type]
                                  tokenizer=tokenizer, config=config_file)
    if as_json:
        _json_line(done.to_dict())
        return
    aside = f"; set aside as other heads' parts: {', '.join(done.set_aside)}" if done.set_aside else ""
    click.echo(f"{done.layout} BLIP {done.head} model: {done.weights} weights written to {shown_path(str(out))}, "
               f"{done.dropped} training-only tensors left out{aside}.")


@click.command("demo-photos")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=PositiveInt(), default=200, show_default=True, help="Number of pictures.")
@click.option("--seed", type=PositiveInt(0), default=1, show_default=True, help="Same seed, same pictures.")
def demo_photos(folder: Path, count: int, seed: int) -> None:
    """Write a folder of synthetic "shapes world" pictures (and their captions) to try blipsearch
    offline with the built-in model.

    \b
    Example:
      blipsearch demo-photos demo/photos
      blipsearch index demo/photos --model builtin:shapes --library demo/library --captions
      blipsearch search "a red circle left of a blue square" --library demo/library -k 5
      blipsearch eval demo/photos demo/photos/captions.jsonl --model builtin:shapes
    """
    from ..shapes.world import generate, write_folder

    with _errors():
        try:
            if folder.is_dir() and any(folder.iterdir()):
                raise click.ClickException(f"{folder} is not empty: give a new or empty folder, so that its "
                                           "pictures and captions.jsonl stay one set.")
            captions = write_folder(folder, generate("test", count, seed))
        except OSError as exc:
            raise click.ClickException(f"Can't write to {folder}: {exc.strerror}") from None
    click.echo(f"{count} pictures in {shown_path(str(folder / 'images'))}, captions in {shown_path(str(captions))}")


@click.command("eval")
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

    from ..evaluation import evaluate, format_table

    explicit = ctx.get_parameter_source("library") == click.core.ParameterSource.COMMANDLINE
    with _errors(), tempfile.TemporaryDirectory(prefix="blipsearch-eval-") as tmp:
        lib = options._open(library if explicit else tmp, db_url if explicit else None, model, device, itm_token,
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
