"""``serve``: the library as a web page and an HTTP API."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..options import DEFAULT_RERANK_DEPTH
from .options import Amount, PositiveInt, with_existing_library

if TYPE_CHECKING:
    from ..library import Library


@click.command()
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
      blipsearch serve --library demo/library --open
      blipsearch serve --host 0.0.0.0 --port 8080       # reachable from the network, with a token
      curl 'http://127.0.0.1:8000/api/search?q=a+dog+on+the+beach&k=5'
    """
    from ..web import ServeSettings
    from ..web.server import address, prepare
    from ..web.server import serve as run

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
