"""A watched library: folders kept indexed as photos are added, changed, moved and deleted.

File-system events (watchdog: inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW
on Windows) only say *where* to look. Once no event has come for ``settle`` seconds,
the folders they touched are indexed again by the library's index run, with the same
incremental rules and failure handling as ``blipsearch index``: unchanged files are
skipped, moved ones keep their vectors (a move's source and destination folders are
indexed in one run), deleted ones are removed, broken ones are recorded. A folder
that vanished is looked at through its nearest existing parent within the watched
roots; a watched root that vanished (an unmounted disk) is left alone and said so.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .indexer import IndexReport

IndexRun = Callable[..., "IndexReport"]
"""Indexes a list of folders, with the keyword options of :meth:`blipsearch.library.Library.index`."""

DEFAULT_SETTLE_S = 2.0


def affected_folders(paths: set[bytes], roots: list[bytes]) -> list[bytes]:
    """The folders to index again for events at ``paths``: each path's folder (or itself, if it is
    one), climbed to the nearest existing folder, kept within ``roots``, none below another."""
    found: set[bytes] = set()
    for path in paths:
        root = next((r for r in roots if path == r or path.startswith(r.rstrip(b"/") + b"/")), None)
        if root is None:
            continue
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        while folder != root and not os.path.isdir(folder) and folder.startswith(root):
            folder = os.path.dirname(folder)
        if os.path.isdir(folder):
            found.add(folder)
    ordered = sorted(found, key=len)
    kept: list[bytes] = []
    for folder in ordered:
        if not any(folder == k or folder.startswith(k.rstrip(b"/") + b"/") for k in kept):
            kept.append(folder)
    return kept


class _Collector:
    """Watchdog handler: remembers where events happened, and when the last one came."""

    def __init__(self, ignored: bytes) -> None:
        self.ignored = ignored.rstrip(b"/") + b"/"  # the library's own folder: its writes are no news
        self.lock = threading.Lock()
        self.paths: set[bytes] = set()
        self.last = 0.0

    def dispatch(self, event: Any) -> None:  # watchdog's handler protocol
        if event.event_type in ("opened", "closed_no_write"):
            return  # reading a file changes nothing
        with self.lock:
            for attribute in ("src_path", "dest_path"):
                path = getattr(event, attribute, None)
                if path and not os.fsencode(path).startswith(self.ignored):
                    self.paths.add(os.fsencode(path))
            self.last = time.monotonic()

    def take(self, settle: float) -> set[bytes]:
        with self.lock:
            if not self.paths or time.monotonic() - self.last < settle:
                return set()
            taken, self.paths = self.paths, set()
            return taken


def watch(index: IndexRun, library_folder: os.PathLike[str] | str, roots: list[bytes], *,
          settle: float = DEFAULT_SETTLE_S,
          on_update: Callable[[list[bytes], IndexReport], None] = lambda folders, report: None,
          stop: threading.Event | None = None, **index_options: Any) -> None:
    """Index ``roots`` now with ``index``, then again wherever files change, until ``stop`` is set (or
    Ctrl-C). Changes inside ``library_folder`` (the library's own files) are not photos."""
    from watchdog.observers import Observer

    stop = stop or threading.Event()
    collector = _Collector(os.fsencode(library_folder))
    observer = Observer()
    for root in roots:
        observer.schedule(collector, os.fsdecode(root), recursive=True)  # type: ignore[arg-type]
    observer.start()  # before the first run: nothing that changes meanwhile is missed
    try:
        on_update(roots, index(list(roots), **index_options))
        while not stop.wait(min(0.2, settle / 4)):
            paths = collector.take(settle)
            if not paths:
                continue
            folders = affected_folders(paths, roots)
            if folders:
                on_update(folders, index(list(folders), allow_empty=True, **index_options))
    finally:
        observer.stop()
        observer.join(10)
