"""What goes with a deleted image: its rows in ``keywords``, removed by a trigger on ``images`` (on
SQLite and PostgreSQL), so that every way of deleting an image (the indexer's forgetting of gone
files, a user's SQL) leaves no keyword behind to match a reused id. On another database
:func:`forget_keywords` does it; the code that deletes images calls it there.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, text
from sqlalchemy.orm import Session

from .schema import KeywordRow

_SQLITE = ("CREATE TRIGGER IF NOT EXISTS keywords_image_gone AFTER DELETE ON images "
           "BEGIN DELETE FROM keywords WHERE image_id = OLD.id; END")
_POSTGRES = (
    """CREATE OR REPLACE FUNCTION blipsearch_keywords_gone() RETURNS trigger AS $$
    BEGIN
      DELETE FROM keywords WHERE image_id = OLD.id;
      RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    ("CREATE OR REPLACE TRIGGER keywords_image_gone AFTER DELETE ON images "
     "FOR EACH ROW EXECUTE FUNCTION blipsearch_keywords_gone()"),
)


def install(conn: Connection) -> bool:
    """Create the trigger (idempotent); returns whether this database has it."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.execute(text(_SQLITE))
    elif dialect == "postgresql":
        for statement in _POSTGRES:
            conn.execute(text(statement))
    else:
        return False
    return True


def forget_keywords(session: Session, image_ids: list[int]) -> None:
    """Delete these images' keyword rows (what the trigger does, for a database without it)."""
    for start in range(0, len(image_ids), 500):
        session.execute(delete(KeywordRow).where(KeywordRow.image_id.in_(image_ids[start : start + 500])))
