"""The server's side of the terminal's warm engine (see :mod:`blipsearch.engine`): a private
Unix socket beside the TCP address, answering the command line's Library calls."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..engine import CALLS, decode, encode, light_types, private_folder, socket_path
from ..errors import BlipsearchError
from ..library import Library
from .security import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 1 << 20  # paths and settings: small


def _types() -> dict[str, type]:
    """The command line's argument types, and the result types it sees as Remote objects."""
    from ..describe.batch import Described
    from ..results import Hit
    from ..texts import TextHit

    return {**light_types(), **{t.__name__: t for t in (Hit, TextHit, Described)}}


class TerminalApp:
    """ASGI: ``POST /call`` with ``{"call", "settings", "args", "kwargs"}`` runs that call of the
    library in a worker thread; ``settings`` must be the server's own (else 409)."""

    def __init__(self, lib: Library) -> None:
        self.lib = lib
        self.types = _types()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/call":
            await _json(send, 404, {"error": "Unknown call."})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_REQUEST_BYTES:
                await _json(send, 413, {"error": "Request too large."})
                return
            if not message.get("more_body"):
                break
        status, answer = await asyncio.to_thread(self.answer, body)
        await _json(send, status, answer)

    def answer(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body)
            name = request["call"]
            settings = request["settings"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "Not a call."}
        if settings != self.lib.settings:
            return 409, {"error": "This server was started with other library options."}
        if name == "hello":
            return 200, {"result": None}
        if name not in CALLS:
            return 400, {"error": f"Unknown call {name!r}."}
        try:
            args = decode(request.get("args", []), self.types)
            kwargs = decode(request.get("kwargs", {}), self.types)
            result = getattr(self.lib, name)(*args, **kwargs)
            return 200, {"result": encode(result)}
        except BlipsearchError as exc:
            return 200, {"error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:
            database = sys.modules.get("sqlalchemy.exc")
            if database is not None and isinstance(exc, database.SQLAlchemyError):
                return 200, {"error": f"Database error: {getattr(exc, 'orig', None) or exc}"}
            log.exception("terminal call %s failed", name)
            return 500, {"error": f"The server failed on this command ({type(exc).__name__}: {exc})."}


async def _json(send: Send, status: int, answer: dict[str, Any]) -> None:
    body = json.dumps(answer, ensure_ascii=True).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BySocket:
    """ASGI: requests that came in on the terminal socket go to its app, all others to the web app.
    uvicorn names a Unix socket's path as the request's ``server``; a TCP request names its
    address and port, so it can never reach the terminal's calls."""

    def __init__(self, web: ASGIApp, terminal: ASGIApp, path: Path) -> None:
        self.web, self.terminal, self.server = web, terminal, (str(path), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server is not None and tuple(server) == self.server:
            await self.terminal(scope, receive, send)
        else:
            await self.web(scope, receive, send)


@contextmanager
def terminal_socket(location: Path) -> Iterator[socket.socket | None]:
    """The listening socket of the library at ``location`` for the command line (removed after),
    or ``None`` where it can't be made safely or another server already answers there."""
    path = socket_path(location)
    sock = _listen(path) if path is not None else None
    made = _identity(path) if sock is not None and path is not None else None
    try:
        yield sock
    finally:
        if sock is not None and path is not None:
            if made is not None and _identity(path) == made:  # not one a later server put there
                path.unlink(missing_ok=True)
            sock.close()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _listen(path: Path) -> socket.socket | None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("no terminal socket: can't make %s: %s", path.parent, exc)
        return None
    if not private_folder(path.parent):
        log.warning("no terminal socket: %s is not private to this user", path.parent)
        return None
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
            return None  # another server of this library answers the command line already
        except OSError:
            os.unlink(path)  # left by a server that was killed
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # created 0600: never a moment when others may connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        log.warning("no terminal socket at %s: %s", path, exc)
        return None
    finally:
        os.umask(previous)
    sock.listen(64)
    sock.set_inheritable(True)
    return sock
