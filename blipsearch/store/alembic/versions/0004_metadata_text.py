"""Schema 8: the XMP title, description and keywords join the full-text index (the trigger that queues
an image's text row fires when they change too), and an image's ``keywords`` rows go with it (a
trigger on deleting an image). Nothing is rewritten: no row of schema 7 holds metadata yet.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from blipsearch.store import cascade, fulltext

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
schema_version = 8


def upgrade() -> None:
    conn = op.get_bind()
    if "text_index" in set(sa.inspect(conn).get_table_names()):
        fulltext.install(conn)
    cascade.install(conn)
    op.execute(sa.text("UPDATE library SET schema_version = 8"))


def downgrade() -> None:
    raise NotImplementedError("blipsearch does not downgrade a library")
