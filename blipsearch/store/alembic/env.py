"""Alembic's environment for a library's database: blipsearch runs the revisions itself, on the
connection (and inside the transaction) that opens the library (see blipsearch/store/database.py)."""

from alembic import context

from blipsearch.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  version_table="alembic_version")
with context.begin_transaction():
    context.run_migrations()
