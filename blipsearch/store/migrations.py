"""Numbered schema upgrades, applied when a library written by an older blipsearch is opened.

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


STEPS: dict[int, Callable[[Connection], None]] = {
    2: _image_generation,
}


def upgrade(conn: Connection, current: int, target: int) -> None:
    """Apply every step above ``current`` up to ``target``, in order."""
    for version in range(current + 1, target + 1):
        STEPS[version](conn)
