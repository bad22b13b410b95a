"""Keeping a library up to date: ``index`` and ``watch``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..images.formats import FORMAT_NAMES
from .options import (
    TEXT,
    Amount,
    PositiveInt,
    _caption_settings,
    _json_line,
    _progress,
    caption_options,
    shown_path,
    with_library,
)

if TYPE_CHECKING:
    from ..library import Library


@click.command()
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
@click.option("--verbose", "-v", is_flag=True,
              help="Also list the skipped files (in the folders, not of an image format by their names), with why.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of counts.")
@with_library
def index(lib: Library, paths: tuple[bytes, ...], batch_size: int | None, workers: int | None, reindex: bool,
          allow_empty: bool, captions: bool, prompt: str, beams: int, max_length: int, min_length: int,
          length_rule: str, labels_file: Path | None, template: str, tags_k: int, retry_failed: bool,
          thumbnails: bool, recall_target: float | None, engine: str, ray_address: str | None, num_gpus: float,
          verbose: bool, as_json: bool) -> None:
    """Index the images in PATHS (folders, walked recursively, or files).

    Folders are searched for {formats} files, by their extensions; a file named
    in PATHS is taken whatever its name, and stays indexed until it is deleted.
    New and changed images are embedded; unchanged ones are not read; moved or
    renamed ones keep their vectors; deleted ones are removed. Files outside
    PATHS are left alone. The counts at the end: "failed" are the files that
    could not be indexed (each named on its own line, and recorded: see
    `blipsearch failures`); they never stop the run, and one that could not be
    decoded is read again once it changes, or with --retry-failed (one that
    could not be read at all, every run). "skipped" are the files in the
    folders that were not looked at, their names not being of an image format
    (--verbose lists them; XMP sidecars are not among them). Each photo's
    metadata is read with it: the capture time and its offset, the XMP of its
    sidecar (IMG_1.jpg.xmp, else IMG_1.xmp) and of the file, the place of its
    GPS position. "refreshed" (shown when there are any) are unchanged photos
    whose metadata was read again, without embedding them: their sidecar
    changed, or an older blipsearch read them. Ctrl-C keeps every finished
    batch: run the same command again to resume.

    \b
    Examples:
      blipsearch index ~/Pictures /mnt/photos
      blipsearch index --captions ~/Pictures
      blipsearch index --model Salesforce/blip-itm-large-coco --reindex ~/Pictures
    """
    from ..images.messages import own_stderr
    from ..texts import read_text_file

    settings = _caption_settings(prompt, beams, max_length, min_length, length_rule)
    if labels_file is not None and "{}" not in template:
        raise click.UsageError("--template needs {} where the label goes.")
    if captions:
        # A missing caption model fails before a long run; its weights load only for an image to caption.
        lib.caption_fingerprint()
    if recall_target is not None and lib.set_recall_target(recall_target):
        click.echo(f"Vector index retuned to recall@10 >= {recall_target}.", err=True)
    ray = None
    if engine == "ray":
        from ..index.distributed import RaySettings

        ray = RaySettings(address=ray_address, actors=workers, num_gpus=num_gpus,
                          batch_size=batch_size or (16 if num_gpus else 2))
        workers = None
    elif ray_address is not None or num_gpus:
        raise click.UsageError("--ray-address and --num-gpus go with --engine ray.")
    with own_stderr():  # decoders' messages to descriptor 2 go with their files, the progress bar stays
        report = lib.index(list(paths), batch_size=batch_size, workers=workers, reindex=reindex,
                           allow_empty=allow_empty, thumbnails=thumbnails, retry_failed=retry_failed,
                           progress=_progress, ray=ray)
    _echo_failed(report.errors)
    if report.failed_before:
        click.echo(f"{report.failed_before} of the failed files failed before and are unchanged: not read again "
                   "(`blipsearch failures` lists them; --retry-failed reads them anyway).", err=True)
    if verbose:
        for path in report.skipped_paths:
            click.echo(f"skipped {shown_path(os.fsdecode(path))}: {_skipped_why(path)}", err=True)
    recorded = lib.db.library().model or ""
    if lib.requested_model is None and recorded.startswith("builtin:") and report.added:
        # (said when photos join a demo library, not on each run over the same ones)
        click.echo(f"Note: this library's model is {recorded}, a toy model for the demo pictures, which finds "
                   "little in real photos. Give your photos a library of their own (--library DIR), or re-embed "
                   "this one with `blipsearch index --reindex --model Salesforce/blip-itm-base-coco PATH`.",
                   err=True)
    counts: dict[str, int] = report.counts()
    if report.refreshed:  # unchanged files whose metadata was read again
        counts["refreshed"] = report.refreshed
    if captions:
        counts["captioned"] = lib.caption_library(list(paths), settings, batch_size=batch_size or 8,
                                                  progress=_progress)
    if labels_file is not None:
        labels = [e.text for e in read_text_file(labels_file, "lines")]
        counts["tagged"] = lib.tag_library(labels, list(paths), template=template, k=tags_k, progress=_progress)
    if as_json:
        _json_line(counts)
    else:
        said = ", ".join(f"{v} {k}" for k, v in counts.items())
        if counts["skipped"] and not verbose:
            said += " (skipped: not of an image format by their names; --verbose lists them)"
        click.echo(said)


def _echo_failed(errors: list[tuple[bytes, str]], shown: int = 10) -> None:
    """One line per file that failed, the first ``shown`` of them."""
    from ..images.messages import without_said

    for path, reason in errors[:shown]:
        click.echo(f"failed {shown_path(os.fsdecode(path))}: {without_said(reason)}", err=True)
    if len(errors) > shown:
        click.echo(f"... and {len(errors) - shown} more failed (see `blipsearch failures`)", err=True)


def _skipped_why(path: bytes) -> str:
    extension = os.path.splitext(os.path.basename(path))[1]
    what = f"{os.fsdecode(extension)!r} is not" if extension else "a name without an extension is not that of"
    return f"{what} an image format's extension (a file named in PATHS is read whatever its name)"


index.help = (index.help or "").replace("{formats}", FORMAT_NAMES)  # one list of formats, here and in the walk


@click.command()
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
    index`: unchanged files are not read, moved ones keep their vectors, deleted
    ones are removed, broken ones are recorded (`blipsearch failures`). A search,
    or a running `blipsearch serve`, sees each run's photos when it ends.

    \b
    Examples:
      blipsearch watch ~/Pictures
      blipsearch watch ~/Pictures /mnt/photos --settle 10 --json
    """
    import time as clock

    from ..images.messages import own_stderr

    def report(changed: list[bytes], result: Any) -> None:
        counts = result.counts()
        if as_json:
            _json_line({"folders": [os.fsdecode(f) for f in changed], **counts})
        else:
            shown = ", ".join(shown_path(os.fsdecode(f)) for f in changed[:3]) + (" ..." if len(changed) > 3 else "")
            click.echo(f"{clock.strftime('%H:%M:%S')}  {shown}: " + ", ".join(f"{v} {k}" for k, v in counts.items()
                                                                            if v or k == "added"))
        _echo_failed(result.errors)

    click.echo("Watching (Ctrl-C to stop) ...", err=True)
    with own_stderr():  # decoders' messages to descriptor 2 go with their files
        lib.watch(list(folders), settle=settle, on_update=report, batch_size=batch_size, workers=workers,
                  thumbnails=thumbnails, progress=_progress)
