"""Numbered schema upgrades from before Alembic revisions (schemas 1 to 5), applied when a library
written by an older blipsearch is opened; later changes are revisions (see :mod:`.revisions`).

Each step takes the database from version ``n - 1`` to ``n`` and runs in the
same transaction as the version bump, under the library row's write lock, so
two processes opening an old library at once upgrade it once.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, text


def _image_generation(conn: Connection) -> None:
    # Rows from before the column have NULL: older than any generation a reader has synced to.
    conn.execute(text("ALTER TABLE images ADD COLUMN generation BIGINT"))
    conn.execute(text("CREATE INDEX ix_images_generation ON images (generation)"))


def _caption_length_rule(conn: Connection) -> None:
    # Captions cached before the paper's length rule became the default were beam-searched with
    # transformers' rule: their settings keys say so now, and the paper rule's captions are made anew.
    # A key too long to take the suffix in its 200 characters is a cached caption dropped, remade on demand.
    conn.execute(text("DELETE FROM captions WHERE length(prompt) > 155"))
    conn.execute(text("UPDATE captions SET prompt = prompt || ',rule=transformers' "
                      "WHERE prompt LIKE '%|beams=%,min=%,max=%'"))
    conn.execute(text("UPDATE captions SET prompt = prompt || '|beams=3,min=5,max=20,rule=transformers' "
                      "WHERE prompt NOT LIKE '%|beams=%,min=%,max=%'"))


def _recall_target(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE library ADD COLUMN recall_target FLOAT"))


def _family(conn: Connection) -> None:
    # Every library before BLIP-2 holds BLIP vectors, one per image (set for those that have a model).
    conn.execute(text("ALTER TABLE library ADD COLUMN family VARCHAR(16)"))
    conn.execute(text("ALTER TABLE library ADD COLUMN queries INTEGER"))
    conn.execute(text("UPDATE library SET family = 'blip', queries = 1 WHERE model_fingerprint IS NOT NULL"))


# The schema the numbered steps end at, and Alembic's first revision (0001) is.
LEGACY_SCHEMA = 5

STEPS: dict[int, Callable[[Connection], None]] = {
    2: _image_generation,
    3: _caption_length_rule,
    4: _recall_target,
    5: _family,
}


def upgrade(conn: Connection, current: int, target: int) -> None:
    """Apply every step above ``current`` up to ``target``, in order."""
    for version in range(current + 1, target + 1):
        STEPS[version](conn)
