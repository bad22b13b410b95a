"""Schema 5, the first revision: the tables as blipsearch 0.1 writes them (library with family and
queries, images, failures, captions, texts, tags, the full-text state).

Libraries of schemas 1 to 4, from before revisions, are brought to schema 5 by the numbered steps of
blipsearch/store/migrations.py and then stamped with this revision; a new library is created at the
head. Every later schema change is a revision after this one.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
schema_version = 5


def upgrade() -> None:
    pass  # the baseline: nothing to change


def downgrade() -> None:
    raise NotImplementedError("blipsearch does not downgrade a library")
