"""The text collection (``texts add``, ``texts list``, ``texts remove``) and labels (``tag``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..options import DEFAULT_RERANK_DEPTH
from .options import (
    TEXT,
    PositiveInt,
    _json_line,
    _percent,
    shown_path,
    with_existing_library,
    with_library,
)

if TYPE_CHECKING:
    from ..library import Library


@click.group()
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
@functools.partial(with_library, served=True)
def texts_add(lib: Library, file: Path, fmt: str, as_json: bool) -> None:
    """Add the texts in FILE; texts already there are skipped, new ones embedded.

    \b
    Examples:
      blipsearch texts add products.csv      # columns: id,text[,more metadata...]
      blipsearch texts add captions.jsonl    # {"id": ..., "text": ..., ...} per line
      blipsearch texts add labels.txt        # one text per line"""
    from ..texts import read_text_file

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


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@click.option("--labels", "labels_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of labels, one per line.")
@click.option("--template", type=TEXT, default="a photo of a {}", show_default=True,
              help="How a label is said; {} is the label.")
@click.option("-k", "--top-k", "k", type=PositiveInt(), default=5, show_default=True, help="Labels per image.")
@click.option("--rerank-depth", type=PositiveInt(0), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="Rescore this many of the best labels by ITC with the ITM head.")
@click.option("--json", "as_json", is_flag=True, help='One {"path", "tags": [...]} object per image per line.')
@functools.partial(with_library, served=True)
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
    from ..texts import read_text_file

    labels = [e.text for e in read_text_file(labels_file, "lines")]
    failed = 0
    for result in lib.tag(list(images), labels, template=template, k=k, rerank_depth=rerank_depth):
        if result.tags is None:
            failed += 1
            click.echo(f"{shown_path(result.path)}: {result.error}", err=True)
        elif as_json:
            _json_line({"path": result.path, "tags": [t.to_dict() for t in result.tags]})
        else:
            click.echo(shown_path(result.path))
            click.echo(f"  {'#':>2}  {'score':>7}  {'match':>6}  label")
            for t in result.tags:
                click.echo(f"  {t.rank:2d}  {t.score:7.3f}  {_percent(t.itm)}  {t.label}")
    if failed:
        raise click.ClickException(f"{failed} of {len(images)} images could not be read.")
