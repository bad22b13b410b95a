"""Small helpers over the operating system: usable and idle cores, atomic file writes, batching across
threads."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from . import failpoints
from .errors import InputPathError

Item = TypeVar("Item")
Result = TypeVar("Result")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


THREADS_ENV = "BLIPSEARCH_THREADS"
# Multiply-adds of one linear layer from which an operation is long (milliseconds) next to the
# wait for a thread the scheduler kept off its core: BLIP-base's vision encoder, batch of 2, is 680M.
LONG_OPERATION = 50_000_000
_ceiling: int | None = None


def others_running() -> float:
    """How many of this process's cores other processes are using right now: the threads running or
    ready to run on the machine that are not this process's (Linux's ``/proc/loadavg``), scaled to
    the share of the machine's cores this process may use. 0 where the system does not say."""
    try:
        with open("/proc/loadavg", "rb") as fh:
            running = int(fh.read().split()[3].split(b"/")[0])
        tasks = os.listdir("/proc/self/task")
    except (OSError, ValueError, IndexError):
        return 0.0
    mine = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as fh:
                line = fh.read()
        except OSError:
            continue  # a thread that just ended
        end = line.rfind(b")")  # the state follows the name, which may hold anything
        mine += line[end + 2 : end + 3] == b"R"
    others = max(0, running - max(mine, 1))
    return others * available_cores() / (os.cpu_count() or available_cores())


def compute_threads(long_operations: bool = False) -> int:
    """Threads for the next forward pass on the CPU: the cores idle now, at least one.

    OpenMP's threads wait for each other at the end of every operation, so one thread that
    another process keeps off its core holds up the others until the scheduler lets it run
    again. For passes made of many short operations (a text's embedding, ITM reranking)
    that wait dominates: beside one busy process on two cores, torch's default of a thread
    per core made a base-size rerank of 16 cached candidates 3.1x slower than alone, against
    1.9x with the idle cores (benchmarks/contention.py). The vision encoder's operations
    are long enough that the wait costs little, and a thread per core gets it the larger
    share of a crowded machine: ``long_operations`` passes (see ``LONG_OPERATION``) take every core.
    ``BLIPSEARCH_THREADS=N`` fixes the number; ``OMP_NUM_THREADS`` (or a
    ``torch.set_num_threads`` before the first pass) caps it.
    """
    global _ceiling
    fixed = os.environ.get(THREADS_ENV, "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        return int(fixed)
    if _ceiling is None:
        import torch

        _ceiling = max(1, min(available_cores(), torch.get_num_threads()))
    if long_operations:
        return _ceiling
    return max(1, min(_ceiling, round(_ceiling - others_running())))


def use_compute_threads(long_operations: bool = False) -> int:
    """Set torch's threads for a pass about to run in this thread (OpenMP's setting is per thread)."""
    import torch

    threads = compute_threads(long_operations)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# Who writes a temporary file, in its name (host and process id, taken at each write: a forked
# process is another writer): a later run removes those of writers no longer running.
_HOST = socket.gethostname().replace(".", "-")


def available_memory() -> int | None:
    """Bytes of RAM this process could still take without swapping (Linux's MemAvailable; elsewhere
    the free pages), or None where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def _writer() -> str:
    return f"{_HOST}-{os.getpid()}"


def is_leftover(tmp: Path, min_age_s: float) -> bool:
    """Whether ``tmp`` (an :func:`atomic_write` temporary) was left by a write cut short: its
    writer, on this machine, is no longer running, or it is older than ``min_age_s``."""
    try:
        if time.time() - tmp.stat().st_mtime > min_age_s:
            return True
    except OSError:
        return False
    host, _, pid = tmp.name.split(".")[-3].rpartition("-") if tmp.name.count(".") >= 4 else ("", "", "")
    if host != _HOST or not pid.isdigit():
        return False  # another machine's (a shared folder), or of an older naming: by age only
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # running, as another user
    return False


# The process's umask, read once (setting it is the only way to read it, so not at every write).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, point: str, fsync: bool = False) -> None:
    """Write ``path`` through a temporary file in its folder renamed over it: readers see the
    old file or the new one, never a part. ``fsync`` flushes the data to disk before the rename.
    ``point`` names the file's failpoints (``<point>.write``, ``.fsync``, ``.rename``; see
    :mod:`blipsearch.failpoints`)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer()}.", suffix=".tmp", dir=path.parent)
    try:
        # The mode a plain open() would give (mkstemp's is 0600): other users who may read the
        # library's folder read its derived files too.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            failpoints.check(f"{point}.write", path)
            if fsync:
                fh.flush()
                failpoints.check(f"{point}.fsync", path)
                os.fsync(fh.fileno())
        failpoints.check(f"{point}.rename", path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Coalescer(Generic[Item, Result]):
    """Work handed in by many threads at once, done in batches.

    Each caller queues its item and waits for ``lock`` (the resource the work needs, a
    model say); whoever gets it next does every item queued by then in one call of
    ``batch`` (items -> their results, in order), and the others find theirs done. Nothing
    waits for a batch to fill: a lone caller is served at once, callers that arrive while
    the resource is busy are served together when it is free.
    """

    def __init__(self, lock: AbstractContextManager[Any], batch: Callable[[list[Item]], list[Result]]) -> None:
        self.lock = lock
        self.batch = batch
        self._queued: list[_Slot[Item, Result]] = []
        self._guard = threading.Lock()

    @property
    def queued(self) -> int:
        return len(self._queued)

    def __call__(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._guard:
            self._queued.append(slot)
        with self.lock:
            if not slot.done:
                with self._guard:
                    taken, self._queued = self._queued, []
                try:
                    results = self.batch([s.item for s in taken])
                except BaseException as exc:
                    for other in taken:
                        other.error, other.done = exc, True
                    raise
                for other, result in zip(taken, results):
                    other.result, other.done = result, True
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False


def shown_path(path: str) -> str:
    """A path as a person reads it: each byte of its name that is not UTF-8 (kept by ``os.fsdecode`` as
    a lone surrogate, which UTF-8 output can't hold) written ``\\xe9``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def root_path(path: str | os.PathLike[str] | bytes) -> bytes:
    """A folder or file given by a user as an absolute byte path; it must exist (a missing root
    must delete nothing)."""
    raw = os.fsencode(os.path.expanduser(os.fsdecode(path)) if not isinstance(path, bytes) else path)
    absolute = os.path.abspath(raw)
    if not os.path.exists(absolute):
        raise InputPathError(f"{os.fsdecode(absolute)} does not exist (is the disk mounted?).")
    return absolute
