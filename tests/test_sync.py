"""A long-lived library (a server) follows other processes' writes, and old libraries are upgraded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image
from sqlalchemy import create_engine, inspect, text

from blipsearch import Library
from blipsearch.store.schema import SCHEMA_VERSION

QUERY = "a dog on the beach"


def _order(lib: Library) -> list[tuple[str, float]]:
    return [(h.path, round(h.itc, 5)) for h in lib.search(QUERY, k=100, rerank_hits=False)]


def test_a_reader_catches_up_without_rebuilding(library_dir: Path, tiny_model: Path, photos: Path,
                                                 db_url: str | None) -> None:
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as writer:
        writer.index([photos / "holiday"])
    reader = Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu")
    try:
        assert len(_order(reader)) == 6
        vectors_file = library_dir / "vectors.faiss"
        counts: list[int] = []
        late_counts: list[int] = []

        class SearchDuringRun:
            """Searches in the reader after each committed batch of the writer's run."""

            def __init__(self, total: int, desc: str) -> None:
                pass

            def update(self, n: int = 1) -> None:
                # The writer saves the vector file only when its run ends; until then the file is
                # stale, and a reader that rebuilt from the database would rewrite it.
                before = vectors_file.stat().st_mtime_ns
                counts.append(len(_order(reader)))
                # A reader started now loads the writer's older file and catches up in memory too.
                with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as late:
                    late_counts.append(len(_order(late)))
                assert vectors_file.stat().st_mtime_ns == before, "a reader rebuilt instead of catching up"

            def close(self) -> None:
                pass

        with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as writer:
            writer.index([photos], batch_size=2, progress=SearchDuringRun)  # six more
            assert counts == late_counts == [8, 10, 12]
            (photos / "holiday" / "img00.png").unlink()  # one gone
            draw_image(99).save(photos / "holiday" / "img01.png")  # one changed: same id, new vector
            writer.index([photos], progress=SearchDuringRun)
        seen = _order(reader)
        with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as fresh:
            assert seen == _order(fresh)
        assert len(seen) == 11 and str(photos / "holiday" / "img00.png") not in [p for p, _ in seen]
        changed = lib_vector(reader, photos / "holiday" / "img01.png")
        held = reader.vectors.loaded(reader.model.fingerprint)
        assert held is not None
        ids = held.ids()
        assert len(ids) == 11 and len(set(ids.tolist())) == 11
        query = reader.model.embed_texts([QUERY])[0]
        assert dict(seen)[str(photos / "holiday" / "img01.png")] == pytest.approx(float(changed @ query), abs=1e-5)
    finally:
        reader.close()


def lib_vector(lib: Library, path: Path) -> np.ndarray:
    row = lib.db.image_by_path(os.fsencode(path))
    assert row is not None and row.vector is not None
    return np.frombuffer(row.vector, np.float32)


def as_schema(conn, version: int) -> None:  # type: ignore[no-untyped-def]
    """The library's database as blipsearch wrote it at schema ``version``: before Alembic revisions
    below 5, at revision 0001 for 5."""
    if version < 6:  # the full-text index rebuilt whole by the first search after a change
        if conn.dialect.name == "sqlite":
            for (name,) in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).all():
                conn.execute(text(f"DROP TRIGGER {name}"))
        else:
            conn.execute(text("DROP TRIGGER text_pending_image ON images"))
            conn.execute(text("DROP TRIGGER text_pending_caption ON captions"))
        conn.execute(text("DROP TABLE text_pending"))
        conn.execute(text("DROP TABLE text_index"))
        # As a search left it: a text index of that time, out of date (a word no image has).
        if conn.dialect.name == "sqlite":
            conn.execute(text("CREATE VIRTUAL TABLE text_index USING fts5(caption, name, folders)"))
            conn.execute(text("INSERT INTO text_index (rowid, caption, name, folders) VALUES (1, 'stale', '', '')"))
        else:
            conn.execute(text("CREATE TABLE text_index (id BIGINT PRIMARY KEY, body TEXT)"))
            conn.execute(text("INSERT INTO text_index (id, body) VALUES (1, 'stale')"))
        conn.execute(text("CREATE TABLE text_index_state (id INTEGER PRIMARY KEY, marker TEXT)"))
        conn.execute(text("INSERT INTO text_index_state (id, marker) VALUES (1, 'old')"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    if version < 5:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        conn.execute(text("ALTER TABLE library DROP COLUMN family"))
        conn.execute(text("ALTER TABLE library DROP COLUMN queries"))
    if version < 4:
        conn.execute(text("ALTER TABLE library DROP COLUMN recall_target"))
    if version < 2:
        conn.execute(text("DROP INDEX ix_images_generation"))
        conn.execute(text("ALTER TABLE images DROP COLUMN generation"))
    conn.execute(text("UPDATE library SET schema_version = :v"), {"v": version})


def test_a_library_of_schema_1_is_upgraded_in_place(library_dir: Path, tiny_model: Path, photos: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos / "holiday"])
        before = _order(lib)
    # Make it a library as blipsearch wrote it before images had a generation.
    engine = create_engine(f"sqlite:///{library_dir / 'library.db'}")
    with engine.begin() as conn:
        as_schema(conn, 1)
    engine.dispose()
    (library_dir / "vectors.faiss").unlink()
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        assert _order(lib) == before
        with lib.db.engine.connect() as conn:
            assert "generation" in {c["name"] for c in inspect(conn).get_columns("images")}
            assert conn.execute(text("SELECT schema_version FROM library")).scalar() == SCHEMA_VERSION
            assert conn.execute(text("SELECT count(*) FROM images WHERE generation IS NULL")).scalar() == 6
            assert conn.execute(text("SELECT family, queries FROM library")).one() == ("blip", 1)
        lib.index([photos])
        assert len(_order(lib)) == 12


def test_a_newer_schema_is_refused(library_dir: Path, tiny_model: Path, photos: Path) -> None:
    from blipsearch.errors import SchemaError

    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos / "garden"])
    engine = create_engine(f"sqlite:///{library_dir / 'library.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE library SET schema_version = :v"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(SchemaError, match="newer blipsearch"):
        Library(library_dir)
    shutil.rmtree(library_dir)


def test_captions_cached_before_the_length_rule_keep_transformers_keys(library_dir: Path, tiny_model: Path,
                                                                      photos: Path) -> None:
    from blipsearch.describe import CaptionSettings

    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos / "garden"])
    engine = create_engine(f"sqlite:///{library_dir / 'library.db'}")
    old_keys = ["a picture of ", "a picture of |beams=5,min=5,max=20", "x" * 180]
    with engine.begin() as conn:
        for n, key in enumerate(old_keys):
            conn.execute(text("INSERT INTO captions (content_hash, model, prompt, caption, model_spec, created_at) "
                              "VALUES (:h, 'm', :k, :c, 's', '2026-01-01 00:00:00')"),
                         {"h": f"{n:064x}", "k": key, "c": f"caption {n}"})
        as_schema(conn, 2)
    engine.dispose()
    with Library(library_dir) as lib:
        with lib.db.engine.connect() as conn:
            keys = dict(conn.execute(text("SELECT caption, prompt FROM captions")).all())
    assert keys == {
        "caption 0": CaptionSettings(length_rule="transformers").cache_key,
        "caption 1": CaptionSettings(num_beams=5, length_rule="transformers").cache_key,
    }
    assert CaptionSettings().cache_key == "a picture of "  # the paper rule's, made anew


def test_a_database_user_who_may_only_read_searches_the_library(library_dir: Path, tiny_model: Path,
                                                                 tiny_captioner: Path, photos: Path,
                                                                 postgres_url: str) -> None:
    draw_image(200).save(photos / "garden" / "birthday_cake.png")
    with Library(library_dir, db_url=postgres_url, model=str(tiny_model), caption_model=str(tiny_captioner),
                 device="cpu") as writer:
        writer.index([photos])
        writer.caption_library()
        expected = _order(writer)
    role = "reader_" + postgres_url.rsplit("/", 1)[1]
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    engine.dispose()
    reader_url = postgres_url.replace("postgres@", f"{role}@", 1)
    # (its own library folder, where its vector file goes: the database is all it shares)
    with Library(library_dir.parent / "reader", db_url=reader_url, model=str(tiny_model), device="cpu") as reader:
        assert _order(reader) == expected
        hits = reader.search("birthday", k=3, rerank_hits=False, hybrid=True)
        assert hits[0].path.endswith("birthday_cake.png") and hits[0].keyword > 0
    with pytest.raises(Exception, match="permission denied"):  # the user really can't write
        engine = create_engine(reader_url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM images"))
        finally:
            engine.dispose()
