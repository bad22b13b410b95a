"""Walking photo folders.

Paths are handled as bytes end to end so that file names which are not valid
UTF-8 are found, stored and returned exactly. Symbolic links to folders are
followed, but each real folder is entered once, so link loops end.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from ..images.formats import IMAGE_EXTENSIONS

_EXTENSIONS = frozenset(os.fsencode(e) for e in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class FileEntry:
    path: bytes
    size: int
    mtime_ns: int


@dataclass
class WalkResult:
    files: list[FileEntry] = field(default_factory=list)
    # Folders and files that could not be read: (path, reason).
    errors: list[tuple[bytes, str]] = field(default_factory=list)
    # Folders whose contents are unknown this run; nothing below them may be deleted.
    unreadable_dirs: list[bytes] = field(default_factory=list)
    # Files left out for their names (not an image extension), never read.
    skipped: list[bytes] = field(default_factory=list)
    # XMP sidecars seen (``IMG_1.jpg.xmp``, ``IMG_1.xmp``): {path: (size, mtime_ns)}; not skipped files.
    sidecars: dict[bytes, tuple[int, int]] = field(default_factory=dict)


def is_image_name(name: bytes) -> bool:
    return os.path.splitext(name)[1].lower() in _EXTENSIONS


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def walk(roots: Iterable[bytes], indexed: Container[bytes] = frozenset()) -> WalkResult:
    """Every image file below ``roots`` (absolute byte paths of folders or files).

    A file named as a root is taken whatever its extension; so is one found in a folder
    that is already ``indexed`` (named once before), so that walking its folder again
    does not take it for gone.
    """
    result = WalkResult()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[bytes] = set()

    def add_file(path: bytes, st: os.stat_result) -> None:
        if path not in seen_files:
            seen_files.add(path)
            result.files.append(FileEntry(path, st.st_size, st.st_mtime_ns))

    for root in roots:
        try:
            st = os.stat(root)
        except OSError as exc:
            result.errors.append((root, _reason(exc)))
            result.unreadable_dirs.append(root)
            continue
        if stat.S_ISREG(st.st_mode):
            add_file(root, st)
            continue
        stack = [(root, st)]
        while stack:
            folder, folder_st = stack.pop()
            key = (folder_st.st_dev, folder_st.st_ino)
            if key in seen_dirs:
                continue
            seen_dirs.add(key)
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError as exc:
                result.errors.append((folder, f"can't list the folder: {_reason(exc)}"))
                result.unreadable_dirs.append(folder)
                continue
            subdirs = []
            for entry in entries:
                try:
                    # Follows symlinks: a link to a folder or an image counts as one.
                    entry_st = entry.stat()
                except OSError as exc:
                    if is_image_name(entry.name):
                        result.errors.append((entry.path, f"can't read the file: {_reason(exc)}"))
                    continue
                if stat.S_ISDIR(entry_st.st_mode):
                    subdirs.append((entry.path, entry_st))
                elif stat.S_ISREG(entry_st.st_mode):
                    if is_image_name(entry.name) or entry.path in indexed:
                        add_file(entry.path, entry_st)
                    elif entry.name.lower().endswith(b".xmp"):
                        result.sidecars[os.fsencode(entry.path)] = (entry_st.st_size, entry_st.st_mtime_ns)
                    else:
                        result.skipped.append(entry.path)
            # Sorted, reversed onto the stack: folders are visited in name order.
            stack.extend(sorted(subdirs, reverse=True))
    result.files.sort(key=lambda f: f.path)
    return result
