"""The terminal's warm engine: a running ``blipsearch serve`` answers the command line.

A search from a fresh process pays for importing torch and transformers and for
loading the model, seconds before the first vector is compared. While ``blipsearch
serve`` runs for a library it already has all of that in memory, so it also listens
on a Unix socket of its own, and ``search``, ``similar``, ``lookup``, ``caption``,
``ask``, ``explain``, ``tag`` and ``texts add`` hand their :class:`~blipsearch.Library`
calls to it there: the same calls, on the same library, printed by the same code, in a
process that imports neither (:class:`Engine` stands in for the library).

Only the user who started the server can reach it: the socket lies in the user's
private runtime folder (mode 0700, e.g. ``$XDG_RUNTIME_DIR/blipsearch``), is itself
mode 0600, and both are checked to belong to the user before a command connects. It
is never reachable over the network: the server's TCP address does not answer these
calls. A command uses the server only when both were given the same library options
(model, device, ...) and run the same code (:func:`code_version`); otherwise, when none
runs, or with ``BLIPSEARCH_IN_PROCESS=1``, it works in-process as before, without a word.

Where no ``serve`` runs, a command that loaded a model starts a background engine for the
next ones (:mod:`blipsearch.background`; the process is :mod:`blipsearch.web.daemon`): the
same socket and the same calls, without the web page.

This module imports nothing heavy: the command line loads it at start.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
import socket
import stat
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from . import errors
from .errors import BlipsearchError

IN_PROCESS_ENV = "BLIPSEARCH_IN_PROCESS"
TRUE = frozenset({"1", "true", "yes", "on"})
# The Library calls the command line makes that a server may answer.
CALLS = frozenset({"search", "similar", "lookup", "caption", "ask", "describe", "keep_answer", "unsearchable",
                   "count", "explain", "tag", "add_texts"})
CONNECT_TIMEOUT_S = 2.0


def in_process() -> bool:
    """``BLIPSEARCH_IN_PROCESS=1``: every command works on its own, with no server or engine."""
    return os.environ.get(IN_PROCESS_ENV, "").strip().lower() in TRUE


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """This code, as the command line and a server compare it: the package's version, the Python
    that runs it, and the size and time of each of its modules (an edited file is other code)."""
    from . import __version__

    package = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(os.fsencode(sys.executable))
    for root, folders, files in os.walk(package):
        folders[:] = sorted(f for f in folders if f not in ("__pycache__", "builtin", "static", "templates"))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            info = os.stat(path)
            digest.update(os.fsencode(f"{os.path.relpath(path, package)}:{info.st_size}:{info.st_mtime_ns}\n"))
    return f"{__version__}+{digest.hexdigest()[:12]}"


def runtime_dir() -> Path | None:
    """The user's private folder for the sockets, or ``None`` where there are no Unix sockets."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):
        return None
    import warnings

    import platformdirs

    with warnings.catch_warnings():  # an unset XDG_RUNTIME_DIR has a private fallback: nothing to say
        warnings.simplefilter("ignore")
        return platformdirs.user_runtime_path("blipsearch")


def socket_path(location: Path) -> Path | None:
    """Where the server of the library at ``location`` listens (short enough for any system)."""
    folder = runtime_dir()
    if folder is None:
        return None
    key = hashlib.sha256(os.fsencode(location)).hexdigest()[:24]
    return folder / f"{key}.sock"


def _private(path: Path, kind: int) -> bool:
    """``path`` is of ``kind`` (a stat type), belongs to this user, and nobody else may use it."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_IFMT(info.st_mode) == kind and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def private_folder(path: Path) -> bool:
    return _private(path, stat.S_IFDIR)


def private_socket(path: Path) -> bool:
    return private_folder(path.parent) and _private(path, stat.S_IFSOCK)


# -- the wire: JSON with tagged bytes, tuples, times and the result types --------------------------------
def encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, Remote):
        return {"$type": value.kind, "fields": encode(value.fields)}
    if isinstance(value, dict):
        return {"$dict": {str(k): encode(v) for k, v in value.items()}}
    numpy = sys.modules.get("numpy")  # (only a process that made an array can have one to send)
    if numpy is not None and isinstance(value, numpy.generic):
        return value.item()
    if numpy is not None and isinstance(value, numpy.ndarray):
        array = numpy.ascontiguousarray(value)
        return {"$array": {"dtype": array.dtype.str, "shape": list(array.shape),
                           "data": base64.b64encode(array.tobytes()).decode("ascii")}}
    pillow = sys.modules.get("PIL.Image")
    if pillow is not None and isinstance(value, pillow.Image):
        picture = value if value.mode in ("1", "L", "RGB", "RGBA") else value.convert("RGBA")
        return {"$image": {"mode": picture.mode, "size": list(picture.size),
                           "data": base64.b64encode(picture.tobytes()).decode("ascii")}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        out = {"$type": type(value).__name__, "fields": encode(fields)}
        if hasattr(value, "to_dict"):
            out["dict"] = encode(value.to_dict())
        return out
    raise TypeError(f"can't send a {type(value).__name__}")


def decode(value: Any, types: dict[str, type]) -> Any:
    """The value :func:`encode` sent; objects of ``types`` rebuilt as such, others as :class:`Remote`."""
    if isinstance(value, list):
        return [decode(v, types) for v in value]
    if not isinstance(value, dict):
        return value
    if "$bytes" in value:
        return base64.b64decode(value["$bytes"])
    if "$tuple" in value:
        return tuple(decode(v, types) for v in value["$tuple"])
    if "$datetime" in value:
        return datetime.fromisoformat(value["$datetime"])
    if "$dict" in value:
        return {k: decode(v, types) for k, v in value["$dict"].items()}
    if "$array" in value:
        import numpy

        spec = value["$array"]
        return numpy.frombuffer(base64.b64decode(spec["data"]), numpy.dtype(spec["dtype"])).reshape(spec["shape"])
    if "$image" in value:
        from PIL import Image

        spec = value["$image"]
        return Image.frombytes(spec["mode"], tuple(spec["size"]), base64.b64decode(spec["data"]))
    if "$type" in value:
        fields = decode(value["fields"], types)
        kind = types.get(value["$type"])
        if kind is not None:
            return kind(**fields)
        return Remote(value["$type"], fields, decode(value.get("dict"), types))
    raise ValueError("not a value this protocol sends")


class Remote:
    """A result object of the server's (a search hit, a caption, ...) as the command line sees
    it: its fields as attributes, and its ``to_dict()`` exactly as the server made it."""

    def __init__(self, kind: str, fields: dict[str, Any], as_dict: dict[str, Any] | None = None) -> None:
        self.kind, self.fields, self._dict = kind, fields, as_dict

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return dict(self._dict if self._dict is not None else self.fields)

    def __repr__(self) -> str:
        return f"Remote({self.kind}, {self.fields!r})"


def light_types() -> dict[str, type]:
    """The argument types the command line builds itself (all importable without numpy)."""
    from .filters import Filters
    from .options import AnswerSettings, CaptionSettings
    from .search.query import Term
    from .text import TextEntry

    return {t.__name__: t for t in (Filters, CaptionSettings, AnswerSettings, Term, TextEntry)}


# -- the command line's side ---------------------------------------------------------------------------
class EngineGone(BlipsearchError):
    """The server stopped (or broke the connection) in the middle of an answer."""


class _Connection:
    """One kept-alive HTTP/1.1 connection over the server's Unix socket. The server is ours and
    always answers with a Content-Length, so this is all the HTTP needed (``http.client`` alone
    would add a third to the command's start-up)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""

    def exchange(self, body: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(CONNECT_TIMEOUT_S)
                sock.connect(str(self.path))
                sock.settimeout(None)  # an answer may take minutes (captions of many photos)
            except BaseException:
                sock.close()
                raise
            self.sock = sock
        head = (f"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("ascii")
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int({k.strip().lower(): v.strip() for k, v in fields.items()}["content-length"])
        while len(self.buffer) < length:
            self._receive()
        answer, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, answer

    def _receive(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Engine:
    """Stands in for a :class:`~blipsearch.Library` in the commands the server answers: each call
    goes to the server's library, the answer comes back as plain values and :class:`Remote` results."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings
        self._connection = _Connection(path)
        self._types = light_types()

    @classmethod
    def find(cls, location: Path, settings: dict[str, Any]) -> Engine | None:
        """The server of the library at ``location``, if one runs, is this user's, runs this code
        and was started with the same ``settings``; else ``None``."""
        return cls.locate(location, settings)[0]

    @classmethod
    def locate(cls, location: Path, settings: dict[str, Any]) -> tuple[Engine | None, str]:
        """:meth:`find`, and what answers there: ``"found"``; ``"none"`` (nothing); ``"other"`` (a
        server of other options or other code); ``"going"``: a background engine that stops now,
        because its library was deleted or its model changed (it says so) or because it runs other
        code (it is told to), so that a new one can take its place."""
        if in_process():
            return None, "none"
        path = socket_path(location)
        if path is None or not private_socket(path):
            return None, "none"
        engine = cls(path, settings)
        try:
            status, answer = engine._exchange({"call": "hello", "settings": settings})
            info = answer.get("result" if status == 200 else "info")
            info = info if isinstance(info, dict) else {}  # (a server of before there were versions)
            if status == 200 and info.get("version") == code_version():
                return engine, "found"
            if status == 409 and answer.get("reason") == "stale":
                state = "going"
            elif info.get("kind") == "engine" and info.get("version") != code_version():
                engine._exchange({"call": "stop"})
                state = "going"
            else:
                state = "other"  # another model, device, ...: in-process then
        except (OSError, ValueError, KeyError, IndexError):
            state = "none"  # a socket left by a server that was killed, or not a server at all
        engine.close()
        return None, state

    def _exchange(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body = self._connection.exchange(json.dumps(request, ensure_ascii=True).encode())
        answer = json.loads(body or b"{}")
        return status, answer if isinstance(answer, dict) else {}

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs, self._types)

    def _call(self, name: str, args: Any, kwargs: dict[str, Any], types: dict[str, type]) -> Any:
        request = {"call": name, "settings": self.settings, "args": encode(list(args)), "kwargs": encode(kwargs)}
        try:
            status, answer = self._exchange(request)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise EngineGone(f"The `blipsearch serve` answering for this library stopped during the command "
                             f"({exc.__class__.__name__}): run it again.") from None
        if "error" in answer:
            kind = getattr(errors, str(answer.get("kind")), BlipsearchError)
            if not (isinstance(kind, type) and issubclass(kind, BlipsearchError)) or kind is errors.ImageError:
                kind = BlipsearchError
            raise kind(str(answer["error"]))
        if status != 200 or "result" not in answer:
            raise EngineGone(f"The `blipsearch serve` answering for this library failed (HTTP {status}).")
        return decode(answer["result"], types)

    def close(self) -> None:
        self._connection.close()

    # -- the Library calls of the commands, paths made absolute here (the server has its own cwd) -----
    def search(self, text: str, k: int = 10, **kwargs: Any) -> Any:
        return self.call("search", text, k, **kwargs)

    def similar(self, image: Any, k: int = 10, **kwargs: Any) -> Any:
        return self.call("similar", _absolute(image), k, **kwargs)

    def lookup(self, image: Any, k: int = 10, **kwargs: Any) -> Any:
        return self.call("lookup", _absolute(image), k, **kwargs)

    def caption(self, images: list[Any], *args: Any, progress: Any = None, **kwargs: Any) -> Any:
        return self.call("caption", [_absolute(i) for i in images], *args, **kwargs)

    def ask(self, images: list[Any], *args: Any, **kwargs: Any) -> Any:
        return self.call("ask", [_absolute(i) for i in images], *args, **kwargs)

    def describe(self, hits: list[Any], **kwargs: Any) -> Any:
        return self.call("describe", hits, **kwargs)

    def keep_answer(self, hits: list[Any], expected: str) -> Any:
        return self.call("keep_answer", hits, expected)

    def explain(self, image: Any, text: str, **kwargs: Any) -> Any:
        from .results import Explanation  # (numpy and Pillow, to draw the picture here)

        return self._call("explain", [_absolute(image), text], kwargs, {**self._types, "Explanation": Explanation})

    def tag(self, images: list[Any], labels: list[str], **kwargs: Any) -> Any:
        return self.call("tag", [_absolute(i) for i in images], labels, **kwargs)

    def add_texts(self, entries: list[Any]) -> tuple[int, int]:
        return tuple(self.call("add_texts", entries))  # type: ignore[return-value]

    def count(self, filters: Any = None) -> int:
        return int(self.call("count", *([filters] if filters is not None else [])))

    def unsearchable(self) -> tuple[int, int]:
        return tuple(self.call("unsearchable"))  # type: ignore[return-value]

    def discard_if_unused(self) -> bool:
        return False  # the server's library is in use


def ask(path: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """One call to the server at ``path`` that needs no library options (``info``, ``stop``): its
    answer, or ``None`` when nothing answers there."""
    if not private_socket(path):
        return None
    connection = _Connection(path)
    try:
        status, body = connection.exchange(json.dumps(request).encode())
        answer = json.loads(body or b"{}")
    except (OSError, ValueError, KeyError, IndexError):
        return None
    finally:
        connection.close()
    return answer if status == 200 and isinstance(answer, dict) else None


def _absolute(path: Any) -> Any:
    if isinstance(path, (str, bytes, os.PathLike)):
        return os.path.abspath(os.fsencode(path))
    return path
