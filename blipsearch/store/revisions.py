"""Schema revisions with Alembic: the scripts in ``alembic/versions/``, run by blipsearch itself on the
connection that opens a library (no alembic.ini; ``env.py`` takes that connection).

Revision 0001 is schema 5, the baseline. Libraries of schemas 1 to 4, from before revisions, reach it
by the numbered steps of :mod:`.migrations` and are then stamped with it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

SCRIPTS = Path(__file__).parent / "alembic"
BASELINE = "0001"
# The newest revision, written here so that opening an up-to-date library never imports Alembic (half a
# second at every command's start); a test checks it against the scripts.
HEAD = "0004"


def _config(conn: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = conn
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision as Alembic reads it from the scripts (see :data:`HEAD`)."""
    return str(_scripts().get_current_head())


def known(revision: str) -> bool:
    from alembic.util.exc import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def current(conn: Connection) -> str | None:
    """The database's revision (None before revisions), read without Alembic."""
    from sqlalchemy import inspect, text

    if "alembic_version" not in set(inspect(conn).get_table_names()):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def stamp(conn: Connection, revision: str) -> None:
    """Record ``revision`` as the database's, in Alembic's own table (made as Alembic makes it), without
    importing Alembic."""
    from sqlalchemy import text

    if current(conn) is None:
        conn.execute(text("CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT NULL, "
                          "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"))
    conn.execute(text("DELETE FROM alembic_version"))
    conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": revision})


def upgrade(conn: Connection) -> None:
    """Every revision after the database's, in order (each sets the library row's schema_version)."""
    from alembic import command

    command.upgrade(_config(conn), "head")
