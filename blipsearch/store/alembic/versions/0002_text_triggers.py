"""Schema 6: the full-text index kept up in every commit instead of rebuilt whole by the first search
after a change. Triggers on ``images`` and ``captions`` queue the images to rewrite in ``text_pending``;
on PostgreSQL the text index gets a stored ``tsvector`` column with a GIN index. The old text index
and its state table go; every image is queued, and the opening transaction writes them all.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from blipsearch.store import fulltext

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
schema_version = 6


def upgrade() -> None:
    conn = op.get_bind()
    op.execute(sa.text("DROP TABLE IF EXISTS text_index_state"))
    # (text_pending itself is made by create_all, which runs first: it is in the current metadata)
    fulltext.install(conn, rebuild=True)
    op.execute(sa.text("UPDATE library SET schema_version = 6"))


def downgrade() -> None:
    raise NotImplementedError("blipsearch does not downgrade a library")
