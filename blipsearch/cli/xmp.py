"""Sidecars for photo managers: ``xmp``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..filters import DEFAULT_MIN_PROBABILITY
from .options import (
    Amount,
    _caption_settings,
    _json_line,
    _progress,
    caption_options,
    shown_path,
    with_existing_library,
)

if TYPE_CHECKING:
    from ..library import Library

PAST = {"created": "create", "updated": "update", "deleted": "delete"}


@click.command("xmp")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=bytes))
@click.option("--captions/--no-captions", default=True, show_default=True,
              help="Write the stored captions to dc:description (never over a description written by anything else).")
@click.option("--tags/--no-tags", default=True, show_default=True,
              help="Write the stored tags to dc:subject and, as blipsearch|TAG, to lr:hierarchicalSubject.")
@click.option("--name", type=click.Choice(["photo.ext.xmp", "photo.xmp"]), default=None,
              help="Sidecar naming: IMG_1.jpg.xmp (darktable, digiKam, immich) or IMG_1.xmp (Lightroom). "
                   "Default: the sidecar a photo has, else IMG_1.jpg.xmp.")
@click.option("--dry-run", is_flag=True, help="Write nothing: list the sidecars that would change.")
@click.option("--remove", is_flag=True, help="Take out what blipsearch wrote (nothing else) instead.")
@click.option("--min-probability", type=Amount(0), default=DEFAULT_MIN_PROBABILITY, show_default=True,
              help="A stored label is written as a tag when ITM's match probability for it is at least this.")
@caption_options
@click.option("--json", "as_json", is_flag=True,
              help='One {"image", "sidecar", "action"[, "reason"]} object per sidecar that changes or is skipped.')
@with_existing_library
def xmp(lib: Library, paths: tuple[bytes, ...], captions: bool, tags: bool, name: str | None, dry_run: bool,
        remove: bool, min_probability: float, prompt: str, beams: int, max_length: int, min_length: int,
        length_rule: str, as_json: bool) -> None:
    """Write the library's captions and tags into the XMP sidecars of its photos (those at or below
    PATHS; all of them without), for digiKam, darktable, Lightroom or immich to read.

    Photos are never written. What other tools wrote in a sidecar is kept byte for byte; running
    the command again changes nothing until the library's captions or tags change; --remove takes
    out exactly what blipsearch added. The captions written are those made with the caption
    options given (the same as `index --captions` and `caption` take).

    \b
    Examples:
      blipsearch xmp --dry-run
      blipsearch xmp ~/Pictures/2024 --no-captions
      blipsearch xmp --name photo.xmp        # Lightroom's naming
      blipsearch xmp --remove"""
    if not captions and not tags:
        raise click.UsageError("--no-captions and --no-tags together leave nothing to write.")
    settings = _caption_settings(prompt, beams, max_length, min_length, length_rule)
    report = lib.write_sidecars(list(paths) or None, captions=captions, tags=tags, name=name, dry_run=dry_run,
                                remove=remove, caption_settings=settings, min_probability=min_probability,
                                progress=_progress)
    for change in report.changes:
        if as_json:
            _json_line(change.to_dict())
        elif change.action == "skipped":
            click.echo(f"{shown_path(change.image)}: {change.reason}", err=True)
        elif dry_run:
            click.echo(f"would {PAST[change.action]} {shown_path(change.sidecar)}")
    if not as_json:
        counts = report.counts
        done = ", ".join(f"{counts[a]} {a}" for a in ("created", "updated", "deleted", "unchanged", "skipped"))
        click.echo(f"Sidecars{' (dry run, nothing written)' if dry_run else ''}: {done}.")
