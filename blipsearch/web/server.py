"""Running the web app: bind, say where, serve until Ctrl-C or SIGTERM, then finish the requests
under way and close the library."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import BlipsearchError
from ..library import Library
from .app import ServeSettings, create_app
from .security import is_loopback, is_wildcard
from .terminal import BySocket, TerminalApp, run, terminal_socket


class ServeError(BlipsearchError):
    """The server can't start (its address is taken or can't be bound)."""


def prepare(settings: ServeSettings) -> tuple[ServeSettings, bool]:
    """Settings with a token made up when the server is reachable from other machines and none was
    given; and whether it was made up (then it must be shown to the user)."""
    if settings.token is None and not is_loopback(settings.host):
        return replace(settings, token=secrets.token_urlsafe(18)), True
    return settings, False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear sentence."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off only on sockets that say they
    # are TCP, and a response written in parts (headers, then body) otherwise waits ~40 ms for the
    # client's delayed ACK on every request of a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]") or "0.0.0.0", port))
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise ServeError(f"Port {port} on {host} is already in use (another `blipsearch serve`?): "
                             f"stop that one, or pick another with --port.") from None
        raise ServeError(f"Can't listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(settings: ServeSettings, port: int) -> str:
    """The address to open: this machine's name when bound to every interface, with the token."""
    host = socket.gethostname() if is_wildcard(settings.host) else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"?token={settings.token}" if settings.token else "")


def serve(lib: Library, settings: ServeSettings, announce: Callable[[int], None]) -> None:
    """Serve ``lib`` until stopped; ``announce(port)`` is called once the socket listens."""
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    app: Any = create_app(lib, settings)
    # A background engine of this library (blipsearch.background) gives the terminal's socket up to us.
    with terminal_socket(lib.location, take_over=True) as terminal:
        sockets = [sock]
        if terminal is not None:  # the command line's warm engine (blipsearch.engine)
            app = BySocket(app, TerminalApp(lib), Path(terminal.getsockname()))
            sockets.append(terminal)
        try:
            run(app, sockets, "on", lambda server: announce(port))
        finally:
            sock.close()
