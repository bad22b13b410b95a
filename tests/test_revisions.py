"""Schema revisions (Alembic): libraries of the previous schema upgraded on open (a SQLite file backed
up first), on SQLite and PostgreSQL; a later revision run by Alembic itself; a read-only library told
which command upgrades it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from test_sync import as_schema

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.errors import SchemaError
from blipsearch.store import revisions
from blipsearch.store.schema import SCHEMA_VERSION


def _url(library_dir: Path, db_url: str | None) -> str:
    return db_url or f"sqlite:///{library_dir / 'library.db'}"


def _state(url: str) -> tuple[int, str | None, set[str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(text("SELECT schema_version FROM library")).scalar()
        revision = revisions.current(conn)
        columns = {c["name"] for c in inspect(conn).get_columns("library")}
    engine.dispose()
    return int(version), revision, columns


def test_the_head_written_down_is_alembics() -> None:
    assert revisions.HEAD == revisions.head()
    assert revisions.known(revisions.BASELINE) and not revisions.known("ffff")


def test_a_new_library_starts_at_the_head(library_dir: Path, tiny_model: Path, db_url: str | None) -> None:
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu"):
        pass
    assert _state(_url(library_dir, db_url))[:2] == (SCHEMA_VERSION, revisions.HEAD)


@pytest.mark.parametrize("previous", [4, 5])
def test_a_library_of_an_earlier_schema_is_upgraded(library_dir: Path, tiny_model: Path, photos: Path,
                                                    db_url: str | None, previous: int) -> None:
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos])
        before = [(h.path, round(h.score, 5)) for h in lib.search("a red circle", k=12, rerank_hits=False)]
    url = _url(library_dir, db_url)
    engine = create_engine(url)
    with engine.begin() as conn:
        as_schema(conn, previous)  # as the previous release wrote it
    engine.dispose()
    assert _state(url)[:2] == (previous, None if previous < 5 else "0001")
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as lib:
        assert [(h.path, round(h.score, 5)) for h in lib.search("a red circle", k=12, rerank_hits=False)] == before
        assert lib.status()["family"] == "blip"
        # The old text index is replaced by one of every image, written as the library opened.
        assert lib.search("stale", k=3, rerank_hits=False, hybrid=True)[0].keyword is None
        assert lib.search("holiday", k=3, rerank_hits=False, hybrid=True)[0].path.startswith(str(photos / "holiday"))
        with lib.db.reader() as session:
            assert session.scalar(text("SELECT count(*) FROM text_pending")) == 0
            assert session.scalar(text("SELECT count(*) FROM text_index")) == 12
    version, revision, columns = _state(url)
    assert (version, revision) == (SCHEMA_VERSION, revisions.HEAD) and {"family", "queries"} <= columns
    if db_url is None:  # the file as it was, kept beside it
        backup = library_dir / f"library.db.schema-{previous}.bak"
        with sqlite3.connect(backup) as conn:
            assert conn.execute("SELECT schema_version FROM library").fetchone() == (previous,)
            assert conn.execute("SELECT count(*) FROM images").fetchone() == (12,)


def test_a_later_revision_is_run_by_alembic(library_dir: Path, tiny_model: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, db_url: str | None) -> None:
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu"):
        pass
    scripts = tmp_path / "alembic"
    shutil.copytree(revisions.SCRIPTS, scripts)
    later, version = f"{int(revisions.HEAD) + 1:04d}", SCHEMA_VERSION + 1
    (scripts / "versions" / f"{later}_test.py").write_text(
        f'import sqlalchemy as sa\nfrom alembic import op\n\nrevision = "{later}"\n'
        f'down_revision = "{revisions.HEAD}"\nbranch_labels = None\ndepends_on = None\n'
        f'schema_version = {version}\n\n\n'
        'def upgrade() -> None:\n    op.add_column("library", sa.Column("note", sa.Text(), nullable=True))\n'
        f'    op.execute(sa.text("UPDATE library SET schema_version = {version}"))\n')
    import blipsearch.store.database as database

    monkeypatch.setattr(revisions, "SCRIPTS", scripts)
    monkeypatch.setattr(revisions, "HEAD", later)
    monkeypatch.setattr(database, "SCHEMA_VERSION", version)
    revisions._scripts.cache_clear()
    try:
        with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu"):
            pass
        state = _state(_url(library_dir, db_url))
        assert state[:2] == (version, later) and "note" in state[2]
    finally:
        revisions._scripts.cache_clear()
    # Back with this blipsearch's scripts: a library of a revision it does not know is refused.
    monkeypatch.undo()
    with pytest.raises(SchemaError, match="newer blipsearch"):
        Library(library_dir, db_url=db_url)


def test_a_read_only_library_is_told_which_command_upgrades_it(library_dir: Path, tiny_model: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu"):
        pass
    database = library_dir / "library.db"
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        as_schema(conn, 4)
    engine.dispose()
    read_only = f"sqlite:///file:{database}?mode=ro&uri=true"
    with pytest.raises(SchemaError, match=r"schema 4 .* can't be upgraded here .* `blipsearch upgrade`"):
        Library(library_dir, db_url=read_only)
    assert _state(f"sqlite:///{database}")[:2] == (4, None)  # untouched
    result = CliRunner().invoke(main, ["upgrade", "--library", str(library_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert f'"schema": {SCHEMA_VERSION}' in result.output
    assert _state(f"sqlite:///{database}")[:2] == (SCHEMA_VERSION, revisions.HEAD)
