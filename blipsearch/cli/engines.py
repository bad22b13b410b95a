"""``engine status`` and ``engine stop``: the background engines that answer the command line
(see :mod:`blipsearch.background`)."""

from __future__ import annotations

import click

from .options import _json_line, shown_path


@click.group()
def engine() -> None:
    """The background engines that make the next command quick.

    A command that has to load a model (a reranked search, similar of a file
    not indexed, lookup, caption, ask, explain, tag, texts add) starts a
    background engine for its library when none runs: a process that keeps the
    library and its models loaded and answers the next commands of the same
    library and options on a Unix socket only you can reach (no network port).
    It stops after 10 minutes without a command (BLIPSEARCH_ENGINE_IDLE=SECONDS),
    when its library is deleted or its model changes, or with `blipsearch engine
    stop`. BLIPSEARCH_ENGINE=off starts none; BLIPSEARCH_IN_PROCESS=1 makes every
    command work on its own.
    """


def _idle(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@engine.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per engine per line.")
def status(as_json: bool) -> None:
    """List the running engines (and `blipsearch serve`s, which answer too): process id, resident
    memory, time since the last command, library.

    \b
    Examples:
      blipsearch engine status
      blipsearch engine status --json"""
    from ..background import running

    found = running()
    if as_json:
        for info in found:
            _json_line({key: info.get(key) for key in ("library", "pid", "memory", "idle_s", "kind", "version")})
        return
    if not found:
        click.echo("No engine is running.", err=True)
        return
    click.echo(f"{'pid':>8}  {'memory':>8}  {'idle':>7}  {'kind':<6}  library")
    for info in found:
        memory = f"{int(info.get('memory') or 0) / 2**20:,.0f} MB"
        click.echo(f"{info.get('pid', '?'):>8}  {memory:>8}  {_idle(float(info.get('idle_s') or 0)):>7}  "
                   f"{info.get('kind', '?'):<6}  {shown_path(str(info.get('library')))}")


@engine.command()
@click.option("--library", type=click.Path(file_okay=False), help="Only the engine of this library.")
def stop(library: str | None) -> None:
    """Stop the running engines (of one library with --library); a `blipsearch serve` keeps running.

    \b
    Examples:
      blipsearch engine stop
      blipsearch engine stop --library demo/library"""
    from ..background import stop as stop_engines
    from ..store.location import library_location

    stopped = stop_engines(library_location(library, None) if library is not None else None)
    for info in stopped:
        click.echo(f"Stopped the engine of {shown_path(str(info.get('library')))} (process {info.get('pid')}).")
    if not stopped:
        click.echo("No engine was running.", err=True)
