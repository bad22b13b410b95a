"""Failpoints: the named places where blipsearch writes a library, made to fail on demand.

Every write that matters passes one: each stage of an atomic file write
(``<file>.write``, ``<file>.fsync``, ``<file>.rename``, where ``<file>`` is
``vectors``, ``token-cache``, ``thumbnail`` or ``model-cache``) and each
database commit (``db.commit`` just before it, ``db.committed`` just after).
They do nothing unless ``BLIPSEARCH_FAILPOINTS`` names them, which the
reliability campaigns (``benchmarks/reliability/``) and tests do:

    BLIPSEARCH_FAILPOINTS="db.commit=ENOSPC@3"   the 3rd commit fails: no space left
    BLIPSEARCH_FAILPOINTS="vectors.rename=EIO"   the first vector-file rename fails
    BLIPSEARCH_FAILPOINTS="thumbnail.fsync=kill@5,db.commit=EROFS"

An action is an ``errno`` name (the point raises that :class:`OSError`) or
``kill`` (the process sends itself SIGKILL, a crash at exactly that moment);
``@N`` makes the Nth pass of that point fail (default: the first), once.
``BLIPSEARCH_FAILPOINTS_LOG=FILE`` appends the name of every point passed, one
per line, which is how a campaign lists the points a run goes through.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

ENV = "BLIPSEARCH_FAILPOINTS"
LOG_ENV = "BLIPSEARCH_FAILPOINTS_LOG"


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    points: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = (action or "EIO").partition("@")
        if action != "kill" and not isinstance(getattr(errno, action, None), int):
            raise ValueError(f"{ENV}: {action!r} is neither an errno name (ENOSPC, EIO, ...) nor 'kill'")
        points[name.strip()] = (action, int(nth) if nth else 1)
    return points


_points: dict[str, tuple[str, int]] = {}
_log: str | None = None
_passes: dict[str, int] = {}
_guard = threading.Lock()


def configure(spec: str = "", log: str | None = None) -> None:
    """Arm the points ``spec`` names (the environment's syntax), log passes to ``log``, and count
    passes from zero: what the environment does at start-up, for a test in this process."""
    global _points, _log
    with _guard:
        _points, _log = _parse(spec), log or None
        _passes.clear()


configure(os.environ.get(ENV, ""), os.environ.get(LOG_ENV))


def check(name: str, filename: str | os.PathLike[str] | None = None) -> None:
    """Pass the point ``name``: fail here if the environment says so (see the module's docstring)."""
    if not _points and _log is None:
        return
    with _guard:
        count = _passes[name] = _passes.get(name, 0) + 1
        if _log is not None:
            with open(_log, "a", encoding="utf-8") as fh:
                fh.write(name + "\n")
    planned = _points.get(name)
    if planned is None or planned[1] != count:
        return
    action = planned[0]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = getattr(errno, action)
    raise OSError(code, os.strerror(code), None if filename is None else os.fspath(filename))
