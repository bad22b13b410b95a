"""Hybrid search: full text over captions, file and folder names, fused with vectors."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import draw_image
from sqlalchemy import text

from blipsearch import Library
from blipsearch.store import fulltext
from blipsearch.store.fulltext import TextIndex, query_words, reciprocal_rank_fusion


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, tiny_captioner: Path, photos: Path, db_url: str | None) -> Library:
    draw_image(200).save(photos / "garden" / "birthday_cake.png")
    (photos / "Venice 2019").mkdir()
    draw_image(201).save(photos / "Venice 2019" / "IMG_0001.png")
    with Library(library_dir, db_url=db_url, model=str(tiny_model), caption_model=str(tiny_captioner),
                 device="cpu") as library:
        library.index([photos])
        yield library


def test_rrf_arithmetic() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 4]], k=60)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[1] == pytest.approx(1 / 61) and fused[4] == pytest.approx(1 / 62)
    assert max(fused, key=fused.get) == 3


def test_query_words_drop_stopwords() -> None:
    assert query_words("A picture of the Birthday cake, cake!") == ["birthday", "cake"]


def test_file_and_folder_names_are_found(lib: Library, photos: Path) -> None:
    hits = lib.search("birthday", k=1, rerank_hits=False, hybrid=True)
    assert hits[0].path == str(photos / "garden" / "birthday_cake.png") and hits[0].keyword > 0
    assert lib.search("venice", k=1, rerank_hits=False, hybrid=True)[0].path.endswith("IMG_0001.png")
    # Reranked hybrid results carry all three parts.
    top = lib.search("birthday cake", k=3, rerank_depth=3, hybrid=True)
    assert top[0].itm is not None and any(h.keyword for h in top)
    assert all(h.keyword is None for h in lib.search("birthday", k=3, rerank_hits=False))
    # ITM does not read file names: reranking must not bury the one picture named by the query.
    for word, name in (("birthday", "birthday_cake.png"), ("venice", "IMG_0001.png")):
        assert lib.search(word, k=1, rerank_depth=14, hybrid=True)[0].path.endswith(name)


def test_captions_are_searchable_and_the_index_follows_changes(lib: Library, photos: Path) -> None:
    lib.caption_library()
    captions = {d.path: d.text for d in lib.caption(sorted(photos.rglob("*.png")))}
    counts = Counter(w for text in captions.values() for w in set(query_words(text)))
    path, word = next((p, w) for p, t in captions.items() for w in query_words(t)
                      if counts[w] == 1 and len(w) > 3 and w not in p.lower())
    hits = lib.search(word, k=1, rerank_hits=False, hybrid=True)
    assert hits[0].path == path and hits[0].keyword > 0
    # A renamed file is found by its new name once the library is re-indexed.
    shutil.move(photos / "garden" / "birthday_cake.png", photos / "garden" / "wedding.png")
    lib.index([photos])
    assert lib.search("wedding", k=1, rerank_hits=False, hybrid=True)[0].path.endswith("wedding.png")
    assert all(not h.path.endswith("birthday_cake.png")
               for h in lib.search("birthday", k=3, rerank_hits=False, hybrid=True))
    assert TextIndex(lib.db).search("birthday", 5) == []


def _text_rows(lib: Library) -> list[tuple]:
    key = "rowid, caption, name, folders" if lib.db.engine.dialect.name == "sqlite" else "id, body"
    with lib.db.reader() as session:
        assert session.scalar(text("SELECT count(*) FROM text_pending")) == 0  # nothing left for later
        return [tuple(row) for row in session.execute(text(f"SELECT {key} FROM text_index ORDER BY 1"))]


def test_the_text_index_kept_up_at_each_commit_equals_one_built_whole(lib: Library, photos: Path) -> None:
    lib.caption_library()
    shutil.move(photos / "garden" / "birthday_cake.png", photos / "holiday" / "wedding cake.png")  # moved
    (photos / "garden" / "img07.png").unlink()  # gone
    draw_image(300).save(photos / "garden" / "img08.png")  # new content
    draw_image(301).save(photos / "garden" / "picnic.png")  # new file
    lib.index([photos])
    lib.caption_library()  # captions of the new contents
    kept = _text_rows(lib)
    ids = {row[0] for row in kept}
    with lib.db.reader() as session:
        assert ids == set(session.scalars(text("SELECT id FROM images")))
    assert any("wedding" in " ".join(map(str, row)) for row in kept)
    assert not any("img07" in " ".join(map(str, row)) for row in kept)
    with lib.db.transaction() as session:  # the whole rebuild a schema upgrade does
        assert fulltext.install(session.connection(), rebuild=True)
    assert _text_rows(lib) == kept


def test_a_read_only_library_is_searched_with_its_text_index(library_dir: Path, tiny_model: Path,
                                                            tiny_captioner: Path, photos: Path) -> None:
    draw_image(200).save(photos / "garden" / "birthday_cake.png")
    with Library(library_dir, model=str(tiny_model), caption_model=str(tiny_captioner), device="cpu") as writer:
        writer.index([photos])
        writer.caption_library()  # the last change: no search since
    database = library_dir / "library.db"
    with Library(library_dir, db_url=f"sqlite:///file:{database}?mode=ro&uri=true") as reader:
        hits = reader.search("birthday", k=3, rerank_hits=False, hybrid=True)
    assert hits[0].path.endswith("birthday_cake.png") and hits[0].keyword > 0
