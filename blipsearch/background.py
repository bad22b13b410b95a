"""Background engines: a command that had to load a model starts one for the next commands.

Where no engine or ``blipsearch serve`` answered it, a command that loaded a model (a reranked
search, ``similar`` of a file not indexed, ``lookup``, ``caption``, ``ask``, ``explain``, ``tag``,
``texts add``) starts, once it is done, a detached process (:mod:`blipsearch.web.daemon`) that
opens the same library with the same options, loads the same models and then answers the
command line on the library's private Unix socket, as ``serve`` does (:mod:`blipsearch.engine`),
with no TCP port. It stops after ``BLIPSEARCH_ENGINE_IDLE`` seconds without a call (10
minutes), when its library is deleted or records another model, when a command of other code
finds it, or on ``blipsearch engine stop``. ``BLIPSEARCH_ENGINE=off`` (or
``BLIPSEARCH_IN_PROCESS=1``) starts none.

Two commands that finish together start one engine: the starter takes an exclusive ``flock``
on the library's lock file in the runtime folder and hands it to the engine, which holds it
for as long as it lives. Its output goes to a log file beside the socket.

This module imports nothing heavy (the command line loads it after a command).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # (no flock, and no Unix sockets either: no engines)
    fcntl = None  # type: ignore[assignment]

from .engine import ask, in_process, private_folder, runtime_dir, socket_path

ENGINE_ENV = "BLIPSEARCH_ENGINE"
IDLE_ENV = "BLIPSEARCH_ENGINE_IDLE"
DEFAULT_IDLE_S = 600.0
FALSE = frozenset({"0", "off", "false", "no"})
STOP_WAIT_S = 15.0  # how long `engine stop` waits for an engine to be gone
MAX_LOG_BYTES = 1 << 20
REPLACE_WAIT_S = 3.0  # how long a command waits for the engine it replaces to let go of the lock

# The engine process: the blipsearch of this command (the folder it was imported from), whatever
# the engine's working folder and sys.path would find; its spec comes on stdin, not in its
# arguments, which every user may read (a --db URL may hold a password).
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from blipsearch.web.daemon import main; "
        "sys.exit(main(sys.stdin.read()))")


def enabled() -> bool:
    """Whether a command may start an engine: not with ``BLIPSEARCH_ENGINE=off`` (or 0, false, no)
    nor with ``BLIPSEARCH_IN_PROCESS=1``."""
    return os.environ.get(ENGINE_ENV, "").strip().lower() not in FALSE and not in_process()


def idle_limit() -> float:
    """``BLIPSEARCH_ENGINE_IDLE`` in seconds (a positive number), else 10 minutes."""
    try:
        seconds = float(os.environ.get(IDLE_ENV, ""))
    except ValueError:
        return DEFAULT_IDLE_S
    return seconds if 0 < seconds < 1e9 else DEFAULT_IDLE_S


def _files(location: Path) -> tuple[Path, Path, Path] | None:
    """(socket, lock file, log file) of the library at ``location``, in a runtime folder made and
    checked to be this user's alone; ``None`` where there is none."""
    path = socket_path(location)
    if path is None:
        return None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    if not private_folder(path.parent):
        return None
    return path, path.with_suffix(".lock"), path.with_suffix(".log")


def _lock(fd: int, wait: float) -> bool:
    assert fcntl is not None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def start(location: Path, settings: dict[str, Any], warm: list[str], replacing: bool = False) -> int | None:
    """Start an engine for the library at ``location`` opened with ``settings`` that loads the
    models ``warm`` names (see :meth:`~blipsearch.Library.loaded_models`), unless engines are
    off, one is starting or running already, or something answers on its socket; its process id,
    else ``None``. ``replacing``: the engine there was told to stop; wait a moment for it."""
    if not enabled() or fcntl is None:
        return None
    files = _files(location)
    if files is None:
        return None
    path, lock_path, log_path = files
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        lock = os.open(lock_path, flags, 0o600)
    except OSError:
        return None
    try:
        if not _lock(lock, REPLACE_WAIT_S if replacing else 0.0):
            return None  # another command starts one, or one runs (it holds the lock)
        if ask(path, {"call": "info"}) is not None:
            return None  # a `blipsearch serve` answers there
        import subprocess

        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
        if os.fstat(log).st_size > MAX_LOG_BYTES:  # (each engine adds a few lines, the last ones kept)
            os.ftruncate(log, 0)
        spec = json.dumps({"location": str(location), "settings": settings, "warm": warm, "idle": idle_limit(),
                           "lock": lock})
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            process = subprocess.Popen([sys.executable, "-c", BOOT, package], stdin=subprocess.PIPE, stdout=log,
                                       stderr=log, cwd="/", start_new_session=True, pass_fds=(lock,))
        finally:
            os.close(log)
        assert process.stdin is not None
        with process.stdin:  # (a few hundred bytes: the pipe holds them until the engine reads)
            process.stdin.write(spec.encode())
        return process.pid
    except OSError:
        return None
    finally:
        os.close(lock)  # (the engine has its own copy of it, and so the lock)


def running() -> list[dict[str, Any]]:
    """What answers on this user's sockets: each engine's and server's ``info`` (``kind``, ``pid``,
    ``library``, ``memory`` in bytes, ``idle_s``, ``version``, ``started``), by library."""
    folder = runtime_dir()
    if folder is None or not private_folder(folder):
        return []
    found = []
    for path in sorted(folder.glob("*.sock")):
        answer = ask(path, {"call": "info"})
        if answer is not None and isinstance(answer.get("result"), dict):
            found.append({**answer["result"], "socket": str(path)})
    return sorted(found, key=lambda info: str(info.get("library")))


def stop(location: Path | None = None) -> list[dict[str, Any]]:
    """Stop the engines (of the library at ``location`` only, if given), waiting until they are
    gone; those stopped. A ``blipsearch serve`` is left running."""
    chosen = str(socket_path(location)) if location is not None else None
    stopped = []
    for info in running():
        mine = info.get("kind") == "engine" and (chosen is None or info["socket"] == chosen)
        if mine and ask(Path(info["socket"]), {"call": "stop"}) is not None:
            stopped.append(info)
    deadline = time.monotonic() + STOP_WAIT_S
    while any(os.path.lexists(info["socket"]) for info in stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    return stopped


def announce(started: bool) -> str | None:
    """What the command that started an engine says about it (on a terminal only)."""
    if not started:
        return None
    limit = idle_limit()
    idle = f"{limit / 60:g} minutes" if limit >= 60 else f"{limit:g} seconds"
    return (f"Started a background engine for this library, so that the next commands answer at once "
            f"(it stops after {idle} unused; `blipsearch engine stop` stops it now, "
            f"{ENGINE_ENV}=off starts none).")


__all__ = ["DEFAULT_IDLE_S", "ENGINE_ENV", "IDLE_ENV", "announce", "enabled", "idle_limit", "running",
           "start", "stop"]
