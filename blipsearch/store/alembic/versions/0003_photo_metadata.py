"""Schema 7: photo metadata people share with their photo managers. Images get the capture time's
offset from UTC, its instant and its source, the XMP title, description, keywords, rating and label,
GPS coordinates and the place they lie in, the sidecar read, metadata warnings, and the version of
blipsearch's metadata reading that filled them; the ``keywords`` table holds the folded terms the
keyword filter matches (made by ``create_all``, which runs first).

Existing rows get ``metadata_version`` NULL: the next ``blipsearch index`` re-reads their metadata
(dates, XMP, places) from their files without embedding them again.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
schema_version = 7

COLUMNS = (
    ("taken_offset", sa.Integer()), ("taken_utc", sa.DateTime()), ("taken_source", sa.String(40)),
    ("title", sa.Text()), ("description", sa.Text()), ("keywords", sa.JSON()), ("rating", sa.Integer()),
    ("label", sa.Text()), ("latitude", sa.Float()), ("longitude", sa.Float()), ("place_city", sa.Text()),
    ("place_region", sa.Text()), ("place_country", sa.Text()), ("place_country_code", sa.String(8)),
    ("sidecar", sa.Text()), ("metadata_warnings", sa.JSON()), ("metadata_version", sa.Integer()),
)


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("images")}
    for name, kind in COLUMNS:
        if name not in have:
            op.add_column("images", sa.Column(name, kind, nullable=True))
    op.execute(sa.text("UPDATE library SET schema_version = 7"))


def downgrade() -> None:
    raise NotImplementedError("blipsearch does not downgrade a library")
