"""The server's side of the terminal's warm engine (see :mod:`blipsearch.engine`): a private
Unix socket beside the TCP address of ``serve``, or alone in a background engine
(:mod:`.daemon`), answering the command line's Library calls."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..engine import (
    CALLS,
    ask,
    code_version,
    decode,
    encode,
    light_types,
    private_folder,
    socket_path,
)
from ..errors import BlipsearchError
from ..library import Library
from .security import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 1 << 20  # paths and settings: small
# Requests still running when a stop is asked for get this long to finish.
GRACE_S = 10
TAKE_OVER_S = 15  # how long `serve` waits for a background engine of its library to stop


def _types() -> dict[str, type]:
    """The command line's argument types, and the result types it sees as Remote objects."""
    from ..describe.batch import Described
    from ..results import Hit
    from ..texts import TextHit

    return {**light_types(), **{t.__name__: t for t in (Hit, TextHit, Described)}}


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


class TerminalApp:
    """ASGI: ``POST /call`` with ``{"call", "settings", "args", "kwargs"}`` runs that call of the
    library in a worker thread; ``settings`` must be the server's own (else 409). ``hello`` and
    ``info`` answer what it is (:meth:`info`); ``stop`` stops a background engine (``kind``
    ``"engine"``, with its ``stop``), whose ``stale()`` says why it must stop, if it must."""

    def __init__(self, lib: Library, kind: str = "serve", stale: Callable[[], str | None] | None = None,
                 stop: Callable[[str], None] | None = None) -> None:
        self.lib, self.kind, self.stale, self.stop = lib, kind, stale, stop
        self.types = _types()
        self.version = code_version()  # (the code it imported: files edited later are other code)
        self.started = time.time()
        self._busy, self._last, self._activity = 0, time.monotonic(), threading.Lock()

    def idle_s(self) -> float:
        """Seconds since the last call ended (0 while one runs); ``hello`` and ``info`` don't count."""
        with self._activity:
            return 0.0 if self._busy else time.monotonic() - self._last

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": os.getpid(), "version": self.version, "library": str(self.lib.location),
                "memory": resident_bytes(), "idle_s": round(self.idle_s(), 1), "started": self.started}

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
            if not isinstance(name, str):
                raise TypeError(name)
            settings = request["settings"] if name not in ("info", "stop") else None
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "Not a call."}
        if name == "info":
            return 200, {"result": self.info()}
        if name == "stop":
            if self.stop is None:
                return 400, {"error": "A `blipsearch serve` stops where it runs (Ctrl-C)."}
            self.stop("asked to")
            return 200, {"result": self.info()}
        reason = self.stale() if self.stale is not None and name == "hello" else None
        if reason is not None:
            if self.stop is not None:
                self.stop(reason)
            return 409, {"error": f"This engine stops: {reason}.", "reason": "stale", "info": self.info()}
        if settings != self.lib.settings:
            return 409, {"error": "This server was started with other library options.", "reason": "settings",
                         "info": self.info()}
        if name == "hello":
            return 200, {"result": self.info()}
        if name not in CALLS:
            return 400, {"error": f"Unknown call {name!r}."}
        with self._activity:
            self._busy += 1
        try:
            return self._run(name, request)
        finally:
            with self._activity:
                self._busy -= 1
                self._last = time.monotonic()

    def _run(self, name: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            args = decode(request.get("args", []), self.types)
            kwargs = decode(request.get("kwargs", {"$dict": {}}), self.types)
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


def run(app: ASGIApp, sockets: list[socket.socket], lifespan: str, ready: Callable[[Any], None]) -> None:
    """Serve ``app`` on the listening ``sockets`` until Ctrl-C, SIGTERM or the uvicorn server's
    ``should_exit``, then finish the requests under way; ``ready(server)`` is called just before."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan,
                            timeout_graceful_shutdown=GRACE_S, server_header=False)
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again for the handler it
    # found: Ctrl-C arrives as KeyboardInterrupt, and SIGTERM must too, not as the default sudden exit.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stopped) if main else None
    ready(server)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass  # already stopped, gracefully
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _stopped(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
def terminal_socket(location: Path, take_over: bool = False) -> Iterator[socket.socket | None]:
    """The listening socket of the library at ``location`` for the command line (removed after),
    or ``None`` where it can't be made safely or another server already answers there.
    ``take_over``: a background engine answering there is stopped first (``serve`` does it)."""
    path = socket_path(location)
    if take_over and path is not None:
        _stop_engine(path)
    sock = _listen(path) if path is not None else None
    made = _identity(path) if sock is not None and path is not None else None
    try:
        yield sock
    finally:
        if sock is not None and path is not None:
            if made is not None and _identity(path) == made:  # not one a later server put there
                path.unlink(missing_ok=True)
            sock.close()


def _stop_engine(path: Path) -> None:
    """Stop the background engine answering at ``path``, if one does, and wait until it is gone."""
    answer = ask(path, {"call": "info"})
    if answer is None or not isinstance(answer.get("result"), dict) or answer["result"].get("kind") != "engine":
        return
    ask(path, {"call": "stop"})
    deadline = time.monotonic() + TAKE_OVER_S
    while os.path.lexists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


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
