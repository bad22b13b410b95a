"""What C decoders say: libtiff writes its warnings and errors to the process's standard error
(file descriptor 2), past Python, hundreds of lines for a folder of odd TIFFs. Around such a
decode, descriptor 2 points at a file of its own, and what was written there is the file's.

Descriptor 2 is the whole process's, so these decodes run one at a time (the others go on in
parallel); Python's own ``sys.stderr`` may meanwhile write elsewhere (the command line gives it
a descriptor of its own while it indexes, see :func:`own_stderr`).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_FD2 = threading.Lock()
# Formats decoded by a C library that writes to standard error: TIFF (libtiff), by its magic numbers.
CHATTY_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
MAX_KEPT = 2000  # characters of what a decoder said, kept with the file's failure
SAID = " (the decoder said: "  # how a failure's reason goes on with it


def without_said(reason: str) -> str:
    """A failure's reason without what the decoder said (for one line on a terminal)."""
    head, found, _ = reason.partition(SAID)
    return head + " (the decoder's messages: see `blipsearch failures`)" if found else reason


def chatty(data: bytes) -> bool:
    return data[:4] in CHATTY_MAGIC


def kept_apart(work: Callable[[], T]) -> tuple[T | None, BaseException | None, str]:
    """Run ``work`` with descriptor 2 pointed at a file: (its result or None, the exception it raised
    or None, what was written to descriptor 2 meanwhile, stripped)."""
    with _FD2:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        with tempfile.TemporaryFile() as sink:
            saved = os.dup(2)
            try:
                os.dup2(sink.fileno(), 2)
                try:
                    result, error = work(), None
                except Exception as exc:  # noqa: BLE001 - handed back with what was said
                    result, error = None, exc
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            said = sink.read(4 * MAX_KEPT).decode("utf-8", "replace").strip()
    return result, error, said


def shortened(said: str) -> str:
    """What a decoder said, on one line (its lines joined by "; "), at most :data:`MAX_KEPT` characters."""
    text = "; ".join(line.strip() for line in said.splitlines() if line.strip())
    return text if len(text) <= MAX_KEPT else text[: MAX_KEPT - 3] + "..."


@contextmanager
def own_stderr() -> Iterator[None]:
    """While the block runs, Python's ``sys.stderr`` (progress bars, messages) writes to a copy of
    descriptor 2, so that a decode that points descriptor 2 elsewhere never takes its lines."""
    try:
        sys.stderr.flush()
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        yield  # not a real file (a test's capture): nothing to keep apart
        return
    previous = sys.stderr
    stream = open(fd, "w",  # noqa: SIM115 - closed after the block, by the finally below encoding=previous.encoding or "utf-8", errors=previous.errors or "backslashreplace",
                  buffering=1)
    sys.stderr = stream
    try:
        yield
    finally:
        sys.stderr = previous
        stream.close()
