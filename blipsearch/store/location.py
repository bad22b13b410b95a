"""Where a library lives: the folder of its database (or of the files derived from a database
URL) and vector index. No database driver is imported unless a URL must be read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LIBRARY_ENV = "BLIPSEARCH_LIBRARY"
DB_FILE = "library.db"


def url_key(db_url: str) -> str:
    """A folder name for a database URL (its password left out, so changing it moves nothing)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        shown = make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError:
        shown = db_url  # refused with a clear message when the database opens
    return hashlib.sha256(shown.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def data_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("blipsearch", appauthor=False)


def default_location() -> Path:
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return Path(env).expanduser()
    return data_dir() / "library"


def library_location(location: str | os.PathLike[str] | None, db_url: str | None) -> Path:
    """The absolute folder of the library opened with these arguments of :class:`~blipsearch.Library`."""
    if location is not None:
        return Path(location).expanduser().absolute()
    if db_url is not None and not os.environ.get(LIBRARY_ENV):
        # Its own folder for the files derived from that database: never the default library's.
        return data_dir() / "databases" / url_key(db_url)
    return default_location().absolute()
