"""A background engine's process (started by :mod:`blipsearch.background`): one library, its
models loaded, answering the command line on the library's private Unix socket with the same
app as ``blipsearch serve`` (:class:`~.terminal.TerminalApp`), and nothing else: no web page,
no TCP port.

It stops, finishing the call under way, after its idle time without a call, when its library
is deleted or records another model (it checks every few seconds, and when a command says
hello), when told to (``blipsearch engine stop``, a command of other code, a ``blipsearch
serve`` of the library starting), or on SIGTERM or SIGINT. It logs to stderr, which its
starter points at a file beside the socket.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import BlipsearchError
from ..library import Library
from ..store.location import DB_FILE
from .terminal import TerminalApp, run, terminal_socket

log = logging.getLogger("blipsearch.engine")
WARM_RERANK_DEPTH = 2  # (at base size, each candidate not in the token cache costs a vision pass: ~1 s)


class Watch:
    """What the engine's library was when it started: its database (the SQLite file itself, and the
    library row's creation time) and the model it records."""

    def __init__(self, lib: Library) -> None:
        self.lib = lib
        self.db_file = lib.location / DB_FILE if lib.settings.get("db_url") is None else None
        self.start = self._now()

    def _now(self) -> tuple[Any, ...]:
        file = None
        if self.db_file is not None:  # (a deleted SQLite file still reads, through the connection kept open)
            info = os.stat(self.db_file)
            file = (info.st_dev, info.st_ino)
        row = self.lib.db.library()
        return file, row.created_at, row.model, row.model_fingerprint

    def stale(self) -> str | None:
        """Why the engine must stop (its library was deleted or records another model), or ``None``."""
        try:
            now = self._now()
        except FileNotFoundError:
            return "its library was deleted"
        except Exception as exc:  # noqa: BLE001 (a database that went away, say: stop, whatever it was)
            return f"its library can't be read ({type(exc).__name__})"
        if now[:2] != self.start[:2]:
            return "its library was deleted (another one is there now)"
        if now[2:] != self.start[2:]:
            return "its library's model changed"
        return None


def warm(lib: Library, models: list[str]) -> None:
    """Load the ``models`` the starting command used (see :meth:`~blipsearch.Library.loaded_models`)."""
    for kind in models:
        try:
            if kind == "retrieval":
                try:
                    lib.warm()  # the model, and the vector index
                except BlipsearchError:
                    _ = lib.model  # an empty library: the model alone
                    continue
                # One small reranked search, so that the first command's does not pay for what a first
                # search does once in a process (statements compiled, image readers and kernels set up):
                # on the demo, its second search took 0.36-0.56 s and its tenth 0.20-0.27 s without it.
                lib.search("a photo", 1, rerank_depth=WARM_RERANK_DEPTH)
            elif kind == "caption":
                _ = lib.captioner
            elif kind == "vqa":
                _ = lib.answerer
        except BlipsearchError as exc:
            log.warning("can't load the %s model: %s", kind, exc)


def watchdog(app: TerminalApp, watch: Watch, server: Any, idle: float, stop: Callable[[str], None]) -> None:
    """``stop`` once ``app`` has had no call for ``idle`` seconds or ``watch`` says so."""
    interval = min(5.0, max(0.1, idle / 10))
    while not server.should_exit:
        time.sleep(interval)
        reason = f"no call for {idle:g} s" if app.idle_s() >= idle else watch.stale()
        if reason is not None:
            stop(reason)


def serve_engine(lib: Library, models: list[str], idle: float, lock: int) -> int:
    """Answer on the library's socket until stopped; ``lock`` is let go as soon as a stop is decided,
    together with the socket's name, so that the next command can start the next engine at once."""
    watch = Watch(lib)
    warm(lib, models)
    # What is loaded now stays: out of the collector's sight, a full collection takes milliseconds,
    # not the 0.2 s it takes over the ~430,000 objects of torch, transformers and a model (measured on
    # the demo), which the second or third command would otherwise wait for.
    gc.collect()
    gc.freeze()
    with terminal_socket(lib.location) as sock:
        if sock is None:
            log.info("not started: something else answers on the library's socket")
            return 1
        name = sock.getsockname()
        made = os.lstat(name)
        servers: list[Any] = []
        once = threading.Lock()

        def stop(reason: str) -> None:
            if not once.acquire(blocking=False):
                return
            log.info("stopping: %s", reason)
            with contextlib.suppress(OSError):  # new commands find no engine here now (calls under way finish)
                now = os.lstat(name)
                if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
                    os.unlink(name)
            os.close(lock)
            for server in servers:
                server.should_exit = True

        app = TerminalApp(lib, "engine", watch.stale, stop)

        def ready(server: Any) -> None:
            servers.append(server)
            threading.Thread(target=watchdog, args=(app, watch, server, idle, stop), daemon=True).start()
            log.info("engine %d for %s ready (%s; stops after %g s without a call)", os.getpid(), lib.location,
                     ", ".join(models) or "no model", idle)

        run(app, [sock], "off", ready)
    log.info("stopped")
    return 0


def main(raw: str) -> int:
    """The engine: ``raw`` is its JSON spec (``location``, ``settings``, ``warm``, ``idle``, and
    ``lock``, the descriptor of the lock it holds as long as it lives)."""
    spec = json.loads(raw)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.umask(0o077)
    lock = int(spec["lock"])
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)  # whose lock it is, for whoever wonders
    try:
        lib = Library(spec["location"], create=False, **spec["settings"])
    except BlipsearchError as exc:
        log.warning("not started: %s", exc)
        return 1
    try:
        return serve_engine(lib, list(spec["warm"]), float(spec["idle"]), lock)
    finally:
        lib.close()
